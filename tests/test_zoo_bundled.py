"""The zoo model whose weights ship inside the package: verified, offline, in the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from hub_server import LoopbackHub

import pcrlv2_hub
from pcrlv2_hub import ChecksumMismatchError
from pcrlv2_hub import manifest as manifest_module
from pcrlv2_hub.manifest import get_entry
from pcrlv2_hub.verify import verify
from pcrlv2_hub.weights_file import sha256_file

NAME = "unet3d_openct_small"
ROOT = Path(__file__).resolve().parents[1]


def test_bundled_file_is_the_one_the_manifest_describes():
    entry = get_entry(NAME)
    path = entry.weights.bundled_path
    assert entry.published and path.is_file()
    assert sha256_file(path) == entry.weights.sha256
    assert path.stat().st_size == entry.weights.size <= 8 * 1024 * 1024
    info = pcrlv2_hub.model_info(NAME)
    assert info["pretraining_data"]["file_list_sha256"] == sha256_file(
        ROOT / "benchmarks" / "openct" / "pretraining_data.txt"
    )
    assert info["recipe"]["steps"] > 0 and info["pretraining_data"]["redistribution"]


def test_load_by_name_gives_the_bundled_tensors():
    from safetensors.torch import load_file

    tensors = load_file(get_entry(NAME).weights.bundled_path)
    model = pcrlv2_hub.load(NAME)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    encoder = pcrlv2_hub.load_encoder("openct_small", segmentation_classes=3)
    assert "pretrained tensors loaded: 56 of 100" in str(encoder.transfer_report)


def test_verify_by_name_checks_sha256_and_golden_output(capsys):
    report = verify(NAME)
    assert report.expected_from == "the manifest" and report.golden_values >= 20
    from pcrlv2_hub.cli import main

    assert main(["verify", NAME]) == 0
    assert "golden output ok" in capsys.readouterr().out


def test_a_tampered_bundled_file_is_refused(tmp_path, monkeypatch):
    original = get_entry(NAME).weights.bundled_path
    copy = tmp_path / original.parent.name / original.name
    copy.parent.mkdir()
    data = bytearray(original.read_bytes())
    data[-100] ^= 0x01  # one bit of one tensor
    copy.write_bytes(bytes(data))
    monkeypatch.setattr(manifest_module, "PACKAGE_DIR", tmp_path)
    with pytest.raises(ChecksumMismatchError, match="modified after installation"):
        pcrlv2_hub.load(NAME)
    with pytest.raises(ChecksumMismatchError):
        pcrlv2_hub.load_encoder(NAME)
    copy.unlink()
    with pytest.raises(pcrlv2_hub.DownloadError, match="reinstall"):
        pcrlv2_hub.load(NAME)
    assert sha256_file(original) == get_entry(NAME).weights.sha256  # the real one untouched


LOAD_OFFLINE = textwrap.dedent(
    """
    import sys
    import pcrlv2_hub, torch
    print(pcrlv2_hub.__file__)
    model = pcrlv2_hub.load("unet3d_openct_small")
    encoder = pcrlv2_hub.load_encoder("unet3d_openct_small", pool="avg")
    with torch.no_grad():
        out = model(torch.rand(1, 1, 32, 32, 16))
    print(tuple(out.restoration.shape), tuple(encoder(torch.rand(2, 1, 16, 16, 16)).shape))
    """
)


def _run(code: str, env: dict[str, str], cwd: Path | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _environment(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}


def test_load_by_name_makes_no_network_request(hub_server: LoopbackHub, tmp_path):
    hub_server.reset()
    env = {**_environment(hub_server.url), "HF_HOME": str(tmp_path / "hf")}
    printed = _run(LOAD_OFFLINE, env)  # HF_HUB_OFFLINE unset, a Hub that would answer
    assert "(1, 1, 32, 32, 16) (2, 64)" in printed
    assert hub_server.requests == []
    unreachable = {**_environment("http://127.0.0.1:9"), "HF_HOME": str(tmp_path / "hf2")}
    assert "(1, 1, 32, 32, 16)" in _run(LOAD_OFFLINE, unreachable)


def test_torch_hub_local_gives_the_pretrained_weights():
    model = torch.hub.load(str(ROOT), NAME, source="local", trust_repo=True)
    reference = pcrlv2_hub.load(NAME).state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())


def test_the_wheel_carries_the_weights_and_loads_them_offline(tmp_path, hub_server):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("pcrlv2_hub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert f"pcrlv2_hub/zoo/{NAME}.safetensors" in names
        manifest = json.loads(archive.read("pcrlv2_hub/weights_manifest.json"))
        archive.extractall(tmp_path / "installed")
    (entry,) = [m for m in manifest["models"] if m["name"] == NAME]
    installed = tmp_path / "installed" / "pcrlv2_hub"
    assert sha256_file(installed / "zoo" / f"{NAME}.safetensors") == entry["weights"]["sha256"]
    hub_server.reset()
    env = {**_environment(hub_server.url), "HF_HOME": str(tmp_path / "hf")}
    env["PYTHONPATH"] = str(tmp_path / "installed")  # before the editable checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    printed = _run(LOAD_OFFLINE, env, cwd=elsewhere)
    assert printed.splitlines()[0] == str(installed / "__init__.py")
    assert hub_server.requests == []
    shutil.rmtree(tmp_path / "installed")
