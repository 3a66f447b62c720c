"""The CI slice of the fuzz campaign: a few hundred seeded mutations per reader, no findings."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz"
sys.path.insert(0, str(FUZZ))

from campaign import run_case  # noqa: E402
from targets import build_targets  # noqa: E402


def test_every_reader_refuses_damaged_files_with_the_package_error(tmp_path: Path):
    command = [sys.executable, str(FUZZ / "campaign.py"), "--cases", "150", "--seed", "1",
               "--timeout", "20", "--out", str(tmp_path)]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(results) == 12 and all(r["cases"] == 150 for r in results.values())
    findings = {name: r["examples"] for name, r in results.items() if r["findings"]}
    assert not findings and finished.returncode == 0, findings
    # Most mutations of a self-verifying weights file are refused, none is taken silently.
    assert results["safetensors"]["outcomes"].get("refused", 0) >= 140


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    return build_targets(tmp_path_factory.mktemp("seeds"))


def test_the_campaign_sees_untyped_errors_and_silent_changes(targets, tmp_path: Path):
    """The campaign can fail: a reader raising KeyError is a finding, and so is weights
    that load with other tensors."""

    def untyped(path: Path) -> None:
        raise KeyError("a reader that forgot to check")

    broken = replace(targets["manifest"], read=untyped)
    assert run_case(broken, 0, 0, tmp_path / "a")["outcome"] == "untyped"

    weights = targets["safetensors"]
    changed = {name: tensor + 1 for name, tensor in weights.expected.items()}
    lenient = replace(weights, read=lambda path: changed)
    assert run_case(lenient, 0, 0, tmp_path / "b")["outcome"] == "changed"
