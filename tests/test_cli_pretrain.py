"""``pcrlv2-hub pretrain | export | push`` through the real command line entry point.

The demo chain (no --data: the shipped samples -> train -> export -> load -> features) is
the README's first command; here its network and step count are shrunk by flags, which
is itself what the flags promise: any value of the demo can be overridden.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pcrlv2_hub
from pcrlv2_hub.cli import main
from pcrlv2_hub.pretrain.checkpoint import LAST
from pcrlv2_hub.pretrain.config import SAMPLE_DATA
from pcrlv2_hub.pretrain.trainer import RUN_CONFIG

SHORT = ["--epochs", "1", "--steps-per-epoch", "2", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("volume_cache"))


def test_demo_chain_3d(tmp_path, cache, capsys):
    output = tmp_path / "demo"
    argv = ["pretrain", "--output", str(output), "--cache-dir", cache, "--widths", "4,8,8,16",
            "--batch-size", "2"]  # fmt: skip
    assert main([*argv, *SHORT]) == 0
    printed = capsys.readouterr().out
    assert "No --data" in printed and "chest_ct.nii.gz" in printed
    assert "Data: 2 of 2 files used." in printed
    shapes = [line for line in printed.splitlines() if line.strip().startswith("stride")]
    assert shapes == [
        "  stride  1: (1, 4, 64, 64, 32) (4 channels)",
        "  stride  2: (1, 8, 32, 32, 16) (8 channels)",
        "  stride  4: (1, 8, 16, 16, 8) (8 channels)",
        "  stride  8: (1, 16, 8, 8, 4) (16 channels)",
    ]
    # The chain ends with the zoo model bundled in the package, loaded by name.
    assert "pcrlv2_hub.load('unet3d_openct_small'): the pretrained zoo model" in printed
    run = json.loads((output / RUN_CONFIG).read_text())
    assert run["views"]["global_size"] == [32, 32, 16]  # the demo's small views
    assert run["widths"] == [4, 8, 8, 16]  # ... and the flag over the demo's widths
    model = pcrlv2_hub.load(weights=output / "export" / "model.safetensors")
    assert model.widths == (4, 8, 8, 16)


def test_demo_chain_2d_moves_aside_from_an_earlier_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "pcrlv2_pretrain" / LAST  # the default folder of an earlier demo
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier run")
    output = tmp_path / "pcrlv2_pretrain_2"
    argv = ["pretrain", "--dim", "2", "--widths", "8,8,8,8,8",
            "--view", "global_size=32", "--view", "local_size=32", "--batch-size", "2"]  # fmt: skip
    assert main([*argv, *SHORT]) == 0
    printed = capsys.readouterr().out
    assert "written to pcrlv2_pretrain_2." in printed
    assert earlier.read_bytes() == b"an earlier run"
    assert "Data: 24 of 24 files used." in printed
    assert "  stride 32: (1, 512, 2, 2) (512 channels)" in printed
    model = pcrlv2_hub.load(weights=output / "export" / "model.safetensors")
    assert model.decoder_widths == (8, 8, 8, 8, 8)


def test_config_file_flags_and_resume(tmp_path, cache, capsys):
    settings = tmp_path / "run.json"
    output = tmp_path / "run"
    settings.write_text(
        json.dumps(
            {
                "data": str(SAMPLE_DATA / "chest_ct.nii.gz"),
                "output": str(output),
                "widths": [4, 8, 8, 16],
                "views": {"global_size": [16, 16, 8], "local_size": [8, 8, 8]},
                "batch_size": 2,
                "lr": 0.02,
                "seed": 5,
                "export": False,
            }
        )
    )
    argv = ["pretrain", "--config", str(settings), "--cache-dir", cache, "--seed", "7"]
    assert main([*argv, *SHORT]) == 0
    run = json.loads((output / RUN_CONFIG).read_text())
    assert (run["lr"], run["seed"], run["momentum"]) == (0.02, 7, 0.9)  # file, flag, default
    # resuming a finished run reloads its settings and changes nothing
    assert main(["pretrain", "--resume", "--output", str(output)]) == 0
    assert "Trained 2 steps" in capsys.readouterr().out
    assert main(["pretrain", "--resume", "--output", str(output), "--lr", "0.5"]) == 1
    assert "lr: 0.02 -> 0.5" in capsys.readouterr().err


def test_export_command(tmp_path, cache, capsys):
    output = tmp_path / "run"
    argv = ["pretrain", "--data", str(SAMPLE_DATA / "chest_ct.nii.gz"), "--output", str(output),
            "--cache-dir", cache, "--widths", "4,8,8,16", "--view", "global_size=[16,16,8]",
            "--view", "local_size=[8,8,8]", "--batch-size", "2", "--no-export"]  # fmt: skip
    assert main([*argv, *SHORT]) == 0
    assert not (output / "export").exists()
    release = tmp_path / "release"
    assert main(["export", str(output / LAST), "-o", str(release), "--name", "my_ct"]) == 0
    assert "sha256" in capsys.readouterr().out
    entry = json.loads((release / "manifest_entry.json").read_text())
    assert entry["name"] == "my_ct" and entry["provenance"]["steps"] == 2
    model = pcrlv2_hub.load(weights=release / "model.safetensors")
    assert torch.equal(
        model.state_dict()["down_tr64.ops.0.conv1.weight"],
        torch.load(output / LAST, weights_only=True)["model"]["down_tr64.ops.0.conv1.weight"],
    )
    assert main(["export", str(tmp_path / "nothing.pt"), "-o", str(tmp_path / "x")]) == 1
    assert "no readable" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dim", "4"], "choose 3"),
        (["--view", "crop=7"], "unknown settings ['crop']"),
        (["--data", "/nonexistent/folder"], "does not exist"),
        (["--precision", "fp16", "--device", "cpu"], "needs a CUDA GPU"),
        (["--batch-size", "3", "--accumulation", "2"], "not divisible"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path, argv, message, capsys):
    assert main(["pretrain", "--output", str(tmp_path / "run"), *argv]) == 1
    assert message in capsys.readouterr().err


def _child(tmp_path: Path, argv: list[str], **env: str) -> subprocess.CompletedProcess:
    """The CLI in a child process whose Hugging Face settings cannot reach anything real."""
    isolated = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    isolated.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT="http://127.0.0.1:9", **env)
    return subprocess.run(
        [sys.executable, "-m", "pcrlv2_hub.cli", *argv],
        capture_output=True,
        text=True,
        env=isolated,
        timeout=300,
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory, cache) -> Path:
    root = tmp_path_factory.mktemp("release")
    argv = ["pretrain", "--data", str(SAMPLE_DATA / "chest_ct.nii.gz"), "--output",
            str(root / "run"), "--cache-dir", cache, "--widths", "4,8,8,16", "--view",
            "global_size=[16,16,8]", "--view", "local_size=[8,8,8]", "--batch-size", "2",
            "--epochs", "1", "--steps-per-epoch", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return root / "run" / "export"


def test_push_without_a_token_says_how_to_log_in(tmp_path, release):
    done = _child(tmp_path, ["push", str(release), "--repo-id", "someone/pcrlv2"])
    assert done.returncode == 1
    assert "hf auth login" in done.stderr and "Nothing was uploaded" in done.stderr


def test_push_failure_is_a_package_error(tmp_path, release):
    done = _child(tmp_path, ["push", str(release), "--repo-id", "a/b"], HF_TOKEN="hf_test")
    assert done.returncode == 1
    assert "uploading" in done.stderr and "failed" in done.stderr
    assert "Traceback" not in done.stderr
    not_a_release = _child(tmp_path, ["push", str(tmp_path), "--repo-id", "a/b"])
    assert not_a_release.returncode == 1 and "not a release folder" in not_a_release.stderr


def test_imagenet_init_offline_fails_clearly(tmp_path):
    done = _child(
        tmp_path,
        ["pretrain", "--dim", "2", "--imagenet-init", "--output", str(tmp_path / "run")],
        HF_HUB_OFFLINE="1",
    )
    assert done.returncode == 1
    assert "imagenet_init needs" in done.stderr and "--imagenet-init" in done.stderr
    assert not (tmp_path / "run" / LAST).exists()
