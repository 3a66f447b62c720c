"""The zoo manifest: the real file follows the schema; bad files and names fail clearly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import pcrlv2_hub
from pcrlv2_hub import ManifestError, UnknownModelError, WeightsNotPublishedError
from pcrlv2_hub.manifest import MANIFEST_ENV, get_entry, manifest_path, read_manifest
from pcrlv2_hub.models.registry import ARCHITECTURES

REAL_MANIFEST = Path(__file__).resolve().parents[1] / "weights_manifest.json"
OFFICIAL_FILES = {
    "unet3d_luna": "simance_multi_crop_luna_pretask_1.0_240.pt",
    "resnet18_chestxray": "simance_multi_crop_chest_pretask_1.0_240.pt",
    "resnet18_chexpert": "simance_multi_crop_chexpter_pretask_1.0_240.pt",
}


def test_the_real_manifest_follows_the_schema(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    assert manifest_path() == REAL_MANIFEST
    entries = read_manifest()
    assert sorted(entries) == sorted([*OFFICIAL_FILES, "unet3d_openct_small"])
    for name, entry in entries.items():
        assert entry.info.get("original_checkpoint") == OFFICIAL_FILES.get(name)
        assert entry.architecture in ARCHITECTURES
        assert entry.info["paper"]["arxiv"] == "2301.00772"
        assert entry.info["input"]["divisible_by"] in (8, 32)
        if not entry.published:  # honest about what is not there yet
            assert entry.weights.sha256 is entry.weights.revision is entry.golden is None
            assert "pcrlv2-hub convert" in entry.info["note"]
            assert "pcrlv2-hub pretrain" in entry.info["note"]
    assert entries["unet3d_luna"].component == "full"
    assert entries["resnet18_chestxray"].component == "encoder"
    ours = entries["unet3d_openct_small"]  # our own weights, shipped in the package
    assert ours.published and ours.weights.bundled and ours.golden is not None
    assert ours.weights.repo_id == "pcrlv2-hub/unet3d_openct_small"


def test_unpublished_weights_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    with pytest.raises(WeightsNotPublishedError, match=r"pcrlv2-hub convert .* -o DIR"):
        pcrlv2_hub.load("unet3d_luna")
    for name in OFFICIAL_FILES:  # pretrained=False always works
        assert not pcrlv2_hub.load(name, pretrained=False).training


def test_unknown_names_get_suggestions(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(MANIFEST_ENV, raising=False)
    with pytest.raises(UnknownModelError, match="Did you mean 'unet3d_luna'"):
        pcrlv2_hub.load("unet3d_lunna")
    with pytest.raises(UnknownModelError, match="Known models: resnet18_chestxray"):
        pcrlv2_hub.model_info("vit_base")
    assert get_entry("pcrlv2_chexpert").name == "resnet18_chexpert"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.pop("input"), "'input' is missing"),
        (lambda e: e.update(dimension="3"), "'dimension' has the wrong type"),
        (lambda e: e.update(status="beta"), "status must be one of"),
        (lambda e: e.update(status="published"), "needs sha256, size and golden"),
        (lambda e: e["weights"].update(sha256="abc"), "64 lower-case hex"),
        (lambda e: e["weights"].update(tensor_digest="md5:00"), "tensor_digest must be"),
        (lambda e: e["input"].pop("patch_size"), "input: the field 'patch_size'"),
        (lambda e: e["weights"].update(bundled="../../etc/x"), "a path inside the package"),
    ],
)
def test_schema_violations_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit, message
):
    document = json.loads(REAL_MANIFEST.read_text())
    edit(document["models"][0])
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(document))
    monkeypatch.setenv(MANIFEST_ENV, str(bad))
    with pytest.raises(ManifestError, match=message):
        pcrlv2_hub.list_models()


def test_duplicate_names_and_unreadable_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    document = json.loads(REAL_MANIFEST.read_text())
    twin = copy.deepcopy(document["models"][1])
    twin["name"] = "another"
    document["models"].append(twin)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(document))
    monkeypatch.setenv(MANIFEST_ENV, str(path))
    with pytest.raises(ManifestError, match="named twice"):
        pcrlv2_hub.list_models()
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not a readable JSON manifest"):
        pcrlv2_hub.list_models()
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(ManifestError, match=MANIFEST_ENV):
        pcrlv2_hub.list_models()
