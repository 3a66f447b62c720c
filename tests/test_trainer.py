"""The pretraining loop on the real CT and X-ray samples: what a run writes, exact resume,
crash safety, SIGTERM, divergence and bad data. Networks and views are tiny so that each
step takes a fraction of a second; the code paths are those of a full-size run."""

from __future__ import annotations

import json
import math
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import flip_bit_in_largest_member
from PIL import Image

import pcrlv2_hub
from pcrlv2_hub.errors import (
    CheckpointError,
    CheckpointWarning,
    DataError,
    DataWarning,
    TrainingDivergedError,
)
from pcrlv2_hub.pretrain.checkpoint import LAST, PREVIOUS, load_checkpoint
from pcrlv2_hub.pretrain.config import SAMPLE_DATA, PretrainConfig
from pcrlv2_hub.pretrain.trainer import METRICS, RUN_CONFIG, SUMMARY, pretrain

CHEST_CT = SAMPLE_DATA / "chest_ct.nii.gz"
ABDOMEN_CT = SAMPLE_DATA / "abdomen_ct.nii.gz"
TERMS = ("total", "restoration", "multiscale_restoration", "comparison", "local_comparison")
TINY_VIEWS_3D = {
    "global_size": [16, 16, 8],
    "local_size": [8, 8, 8],
    "num_locals": 2,
    "swap_patch": [4, 2, 2],
    "swap_count": 10,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    """One volume cache for the module: each sample CT is decoded once."""
    return str(tmp_path_factory.mktemp("volume_cache"))


def tiny_3d(output: Path, cache_dir: str, **overrides) -> PretrainConfig:
    values = {
        "dim": 3,
        "data": str(SAMPLE_DATA / "*_ct.nii.gz"),
        "output": str(output),
        "widths": [4, 8, 8, 16],
        "views": TINY_VIEWS_3D,
        "batch_size": 2,
        "epochs": 2,
        "steps_per_epoch": 2,
        "checkpoint_every": 2,
        "workers": 0,
        "progress": False,
        "cache_dir": cache_dir,
        **overrides,
    }
    return PretrainConfig(**values)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_3d_run_writes_checkpoints_metrics_reports_and_a_loadable_export(tmp_path, cache_dir):
    summary = pretrain(tiny_3d(tmp_path / "run", cache_dir))
    run = Path(summary.output)
    assert summary.step == summary.total_steps == 4 and not summary.interrupted
    last, previous = load_checkpoint(run / LAST), load_checkpoint(run / PREVIOUS)
    assert (last["step"], previous["step"]) == (4, 2)
    assert last["data"]["used"] == 2 and len(last["data"]["files"]) == 2

    records = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r[t]) for r in records for t in (*TERMS, "lr"))
    lr = PretrainConfig(dim=3).lr
    assert [r["lr"] for r in records] == [lr, lr, lr * 0.5, lr * 0.5]  # cosine per epoch, E=2
    assert records[0]["beta"] == 1.0 and records[-1]["beta"] == pytest.approx(0.5)
    for png in ("loss_curves.png", "restorations.png"):
        with Image.open(run / png) as image:
            assert image.format == "PNG" and min(image.size) > 100

    model = pcrlv2_hub.load(weights=summary.export)
    assert state_dicts_equal(model.state_dict(), last["model"])
    card = (Path(summary.export).parent / "README.md").read_text()
    assert "Final losses" in card and "chest_ct.nii.gz" in card
    entry = json.loads((Path(summary.export).parent / "manifest_entry.json").read_text())
    assert entry["provenance"]["steps"] == 4
    assert json.loads((run / SUMMARY).read_text())["export"] == summary.export


def test_2d_run_on_the_xray_samples(tmp_path):
    config = PretrainConfig(
        dim=2,
        data=str(SAMPLE_DATA / "chestxray"),
        output=str(tmp_path / "run2d"),
        widths=[8, 8, 8, 8, 8],
        views={"global_size": 32, "local_size": 32, "num_locals": 2, "cutout_size": 8},
        batch_size=2,
        epochs=1,
        steps_per_epoch=2,
        workers=0,
        progress=False,
    )
    summary = pretrain(config)
    assert summary.step == 2 and summary.data["used"] == 24
    model = pcrlv2_hub.load(weights=summary.export)
    assert state_dicts_equal(model.state_dict(), load_checkpoint(tmp_path / "run2d")["model"])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.restoration.shape == (1, 3, 64, 64)
    assert (tmp_path / "run2d" / "restorations.png").is_file()


def _resumable_copy(source: Path, checkpoint: Path, target: Path) -> Path:
    """A run folder holding only ``checkpoint``: what a run stopped there leaves behind."""
    target.mkdir()
    shutil.copy(checkpoint, target / LAST)
    config = json.loads((source / RUN_CONFIG).read_text())
    (target / RUN_CONFIG).write_text(json.dumps({**config, "output": str(target)}))
    return target


def test_resume_continues_bitwise(tmp_path, cache_dir):
    # 6 steps straight; the checkpoint after step 4 is in the middle of epoch 1
    straight = pretrain(tiny_3d(tmp_path / "a", cache_dir, steps_per_epoch=3, export=False))
    assert load_checkpoint(tmp_path / "a" / PREVIOUS)["step"] == 4
    # the same run stopped after 4 steps, resumed in another folder with other workers,
    # and with activations kept as recipes rather than values: the same math
    copy = _resumable_copy(tmp_path / "a", tmp_path / "a" / PREVIOUS, tmp_path / "b")
    resumed = pretrain(
        tiny_3d(
            copy, cache_dir, steps_per_epoch=3, export=False, workers=2,
            recompute_activations=True,
        ),
        resume=True,
    )  # fmt: skip
    assert resumed.step == straight.step == 6
    assert resumed.losses == straight.losses
    final_a, final_b = load_checkpoint(tmp_path / "a"), load_checkpoint(copy)
    assert state_dicts_equal(final_a["model"], final_b["model"])
    assert state_dicts_equal(
        final_a["optimizer"]["state"][0], final_b["optimizer"]["state"][0]
    )  # momentum buffers too


def _damage(checkpoint: Path, how: str) -> None:
    """Truncate ``checkpoint``, or flip one bit inside its largest tensor's bytes."""
    if how == "truncate":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    else:
        flip_bit_in_largest_member(checkpoint)


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(tmp_path, cache_dir, how):
    straight = pretrain(tiny_3d(tmp_path / "a", cache_dir, steps_per_epoch=3, export=False))
    copy = _resumable_copy(tmp_path / "a", tmp_path / "a" / LAST, tmp_path / "b")
    shutil.copy(tmp_path / "a" / PREVIOUS, copy / PREVIOUS)  # step 4
    _damage(copy / LAST, how)
    with pytest.warns(CheckpointWarning, match=f"{LAST}.*resuming from .*{PREVIOUS}"):
        resumed = pretrain(tiny_3d(copy, cache_dir, steps_per_epoch=3, export=False), resume=True)
    assert resumed.step == 6 and resumed.losses == straight.losses
    assert state_dicts_equal(
        load_checkpoint(copy)["model"], load_checkpoint(tmp_path / "a")["model"]
    )
    assert load_checkpoint(copy / PREVIOUS)["step"] == 4  # the damaged file was not kept

    _damage(copy / LAST, how)
    _damage(copy / PREVIOUS, how)
    with pytest.raises(CheckpointError, match="damaged"):
        pretrain(tiny_3d(copy, cache_dir, steps_per_epoch=3, export=False), resume=True)


def test_resume_refuses_other_settings_and_fresh_runs_refuse_a_used_folder(tmp_path, cache_dir):
    config = tiny_3d(tmp_path / "run", cache_dir, epochs=1, steps_per_epoch=1, export=False)
    pretrain(config)
    with pytest.raises(CheckpointError, match="--resume"):
        pretrain(config)
    changed = tiny_3d(tmp_path / "run", cache_dir, epochs=1, steps_per_epoch=1, lr=0.5)
    with pytest.raises(CheckpointError, match="lr"):
        pretrain(changed, resume=True)
    with pytest.raises(CheckpointError, match="no readable"):
        pretrain(tiny_3d(tmp_path / "empty", cache_dir), resume=True)


def _child_run(output: Path, cache_dir: str, *, resume: bool, epochs: int = 2) -> str:
    """Python code running a tiny 3D run (as the tests above) in a child process."""
    return (
        "from pathlib import Path\n"
        "from pcrlv2_hub.pretrain.config import PretrainConfig\n"
        "from pcrlv2_hub.pretrain.trainer import pretrain\n"
        f"config = PretrainConfig(dim=3, data={str(SAMPLE_DATA / '*_ct.nii.gz')!r}, "
        f"output={str(output)!r}, widths=[8, 16, 32, 64], views={TINY_VIEWS_3D!r}, "
        f"batch_size=2, epochs={epochs}, steps_per_epoch=2, checkpoint_every=2, workers=0, "
        f"progress=False, export=False, cache_dir={cache_dir!r})\n"
        f"pretrain(config, resume={resume})\n"
    )


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, cache_dir):
    """The kernel kills the process (SIGXFSZ) in the middle of writing a checkpoint."""
    subprocess.run(
        [sys.executable, "-c", _child_run(tmp_path / "a", cache_dir, resume=False)], check=True
    )
    size = (tmp_path / "a" / LAST).stat().st_size
    copy = _resumable_copy(tmp_path / "a", tmp_path / "a" / PREVIOUS, tmp_path / "b")

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    killed = subprocess.run(
        [sys.executable, "-c",
         "import signal; signal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"  # Python ignores it
         + _child_run(copy, cache_dir, resume=True)],
        preexec_fn=limit_file_size, capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr
    partial = list(copy.glob(f".{LAST}.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size == size // 2  # killed mid-write
    assert load_checkpoint(copy / LAST)["step"] == 2  # the previous checkpoint is intact

    subprocess.run([sys.executable, "-c", _child_run(copy, cache_dir, resume=True)], check=True)
    assert not list(copy.glob("*.tmp")) and not list(copy.glob(".*.tmp"))
    assert state_dicts_equal(
        load_checkpoint(copy / LAST)["model"], load_checkpoint(tmp_path / "a" / LAST)["model"]
    )


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, cache_dir):
    output = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "pcrlv2_hub.cli", "pretrain",
         "--data", str(SAMPLE_DATA / "*_ct.nii.gz"), "--output", str(output),
         "--widths", "4,8,8,16", "--view", "global_size=[16,16,8]", "--view",
         "local_size=[8,8,8]", "--batch-size", "2", "--epochs", "1000",
         "--checkpoint-every", "100000", "--workers", "0", "--no-progress",
         "--cache-dir", cache_dir],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics = output / METRICS
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr
    assert "--resume" in stdout
    steps = len(metrics.read_text().splitlines())
    assert load_checkpoint(output)["step"] == steps >= 2
    summary = json.loads((output / SUMMARY).read_text())
    assert summary["interrupted"] and summary["export"] is None


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    config = tiny_3d(tmp_path / "run", cache_dir, lr=1e30, checkpoint_every=1, epochs=20)
    with pytest.raises(TrainingDivergedError, match=r"the loss became nan at step") as error:
        pretrain(config)
    diverged_at = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert "last good checkpoint" in str(error.value) and "--lr" in str(error.value)
    kept = load_checkpoint(tmp_path / "run")
    assert kept["step"] == diverged_at - 1 >= 1
    assert len((tmp_path / "run" / METRICS).read_text().splitlines()) == kept["step"]


def test_an_empty_data_folder_is_a_clear_error(tmp_path, cache_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no volumes"):
        pretrain(tiny_3d(tmp_path / "run", cache_dir, data=str(tmp_path / "empty")))
    assert not (tmp_path / "run").exists()


def test_an_unreadable_volume_is_skipped_and_counted(tmp_path, cache_dir):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(CHEST_CT, data / "chest.nii.gz")
    truncated = data / "truncated.nii.gz"
    truncated.write_bytes(ABDOMEN_CT.read_bytes()[: ABDOMEN_CT.stat().st_size // 2])
    config = tiny_3d(tmp_path / "run", cache_dir, data=str(data), epochs=1, steps_per_epoch=1)
    with pytest.warns(DataWarning, match="truncated.nii.gz"):
        summary = pretrain(config)
    assert (summary.data["found"], summary.data["used"]) == (2, 1)
    assert [s["path"] for s in summary.data["skipped"]] == [str(truncated)]
    card = (Path(summary.export).parent / "README.md").read_text()
    assert "1 skipped" in card
