"""A run under torchrun survives a lost worker and a SIGTERM, and ends with the same weights.

``torchrun --max-restarts 1`` restarts the whole group when one worker is killed with
SIGKILL; ``--auto-resume`` makes the restarted workers continue from the last checkpoint.
Every random draw is a function of (seed, step), so the finished weights must equal
those of a run that was never interrupted, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_distributed import ONE_THREAD, RUN, TORCHRUN

from pcrlv2_hub.pretrain.checkpoint import load_checkpoint
from pcrlv2_hub.pretrain.trainer import METRICS

STEPS = 12
LONGER = [*RUN, "--steps-per-epoch", str(STEPS), "--checkpoint-every", "2", "--auto-resume"]


def _command(output: Path, cache: Path, *launcher: str) -> list[str]:
    return [sys.executable, *TORCHRUN, *launcher, "-m", "pcrlv2_hub.cli", *LONGER,
            "--output", str(output), "--cache-dir", str(cache)]  # fmt: skip


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **ONE_THREAD},
    )  # fmt: skip


def _wait_for_steps(output: Path, steps: int, launcher: subprocess.Popen) -> int:
    """Block until ``steps`` steps are logged; how many were logged then."""
    metrics = output / METRICS
    while launcher.poll() is None:
        done = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        if done >= steps:
            return done
        time.sleep(0.01)
    raise AssertionError(f"the run ended before step {steps}: {launcher.stderr.read()[-2000:]}")


def _workers(launcher: subprocess.Popen) -> list[int]:
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(output)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    launcher = _start(_command(root / "run", root / "cache"))
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    return root / "run"


def test_a_killed_worker_restarts_the_group_which_resumes_to_the_same_weights(
    uninterrupted, tmp_path
):
    output = tmp_path / "run"
    launcher = _start(_command(output, tmp_path / "cache", "--max-restarts", "1"))
    logged = _wait_for_steps(output, 5, launcher)  # past the checkpoint of step 4
    victim = _workers(launcher)[-1]
    os.kill(victim, signal.SIGKILL)
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    assert logged < STEPS, "the kill came after the end"
    state = load_checkpoint(output)
    assert state["step"] == STEPS
    expected = _weights(uninterrupted)
    assert all(torch.equal(state["model"][k], expected[k]) for k in expected)
    lines = (output / METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))


def test_sigterm_to_the_launcher_saves_and_a_resume_ends_with_the_same_weights(
    uninterrupted, tmp_path
):
    output = tmp_path / "run"
    launcher = _start(_command(output, tmp_path / "cache"))
    _wait_for_steps(output, 3, launcher)
    launcher.send_signal(signal.SIGTERM)
    launcher.communicate(timeout=120)
    stopped = load_checkpoint(output)["step"]
    assert 3 <= stopped < STEPS  # saved where it stopped, not at an older checkpoint
    resumed = _start(_command(output, tmp_path / "cache"))
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    expected = _weights(uninterrupted)
    finished = _weights(output)
    assert all(torch.equal(finished[k], expected[k]) for k in expected)
