"""Each script in examples/ runs as a newcomer would run it, with tiny settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_WIDTHS, small_network

from pcrlv2_hub.weights_file import save_weights

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random 3D network in the pretrained-weights format (no network needed)."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    state = small_network().state_dict()
    return save_weights(path, state, "pcrlv2_unet3d", {"widths": list(SMALL_WIDTHS)})


CASES = [
    ("feature_extraction.py", ["--crop", "32"], "pooled vector (1, 64)"),
    ("finetune_classification_3d.py", ["--label-fraction", "0.02", "--epochs", "1"], "test "),
    ("segmentation_skip_unet.py", ["--steps", "2", "--batch-size", "2"], "test Dice"),
    ("adapt_to_mri_4ch.py", ["--crop", "32"], "give the CT encoder's features: True"),
]


@pytest.mark.parametrize(("script", "options", "expected"), CASES)
def test_example_runs(script: str, options: list[str], expected: str, weights: Path, tmp_path):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--weights", str(weights), *options],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert expected in completed.stdout


def test_every_example_is_tested():
    assert {case[0] for case in CASES} == {p.name for p in EXAMPLES.glob("*.py")}
