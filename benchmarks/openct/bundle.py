"""Turn the pretraining run of ``unet3d_openct_small`` into the zoo entry that ships in the wheel.

    python benchmarks/openct/bundle.py --run runs/openct_small_full \
        --benchmark benchmarks/openct/results

1. exports the run's last checkpoint (``pcrlv2-hub export``: safetensors with the network's
   description, model card, manifest entry with sha256, size and golden output);
2. copies the weights to ``pcrlv2_hub/zoo/unet3d_openct_small.safetensors`` and the card,
   extended with the data's licences and the benchmark's tables, beside them;
3. writes the entry into ``weights_manifest.json``: status ``published``, source ``bundled``
   (the Hub repo named for when it is uploaded), the data with licences and attributions,
   the recipe, the steps and the benchmark summary.

Without ``--run`` only the benchmark is refreshed: the manifest entry's summary and the
card's benchmark section are rewritten from ``--benchmark``, the weights and the rest of
the entry stay as they are (a benchmark rerun needs no pretraining run folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pcrlv2_hub.atomic import write_text_atomic
from pcrlv2_hub.benchmark.report import collect
from pcrlv2_hub.manifest import validate_entry
from pcrlv2_hub.pretrain.export import export_checkpoint
from pcrlv2_hub.weights_file import sha256_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NAME = "unet3d_openct_small"
ZOO = ROOT / "pcrlv2_hub" / "zoo"
MANIFEST = ROOT / "weights_manifest.json"
DATA_LIST = HERE / "pretraining_data.txt"
BENCHMARK_HEADING = "## Transfer benchmark"
LICENCES = [
    {
        "folder": "ct_volumes_more (6 patients)",
        "what": "TCIA collections Pancreatic-CT-CBCT-SEG, Lung-PET-CT-Dx (CC BY 4.0), "
        "TCGA-THCA, LIDC-IDRI (CC BY 3.0); one head CT from the dicom2stl repository "
        "(Apache-2.0)",
        "cite": "each collection's TCIA citation (shared/data/ct_volumes_more/README.md); "
        "Clark et al., J. Digit. Imaging 26(6):1045-1057, 2013 (TCIA)",
    },
    {
        "folder": "ct_volumes_totalsegmentator (3 volumes, 2 patients)",
        "what": "TotalSegmentator test CTs, Apache-2.0 repository (TotalSegmentator data: "
        "CC BY 4.0)",
        "cite": "Wasserthal et al., Radiology: Artificial Intelligence 5(5):e230024, 2023",
    },
    {
        "folder": "openkbp_oars (170 OpenKBP train patients, CT images only)",
        "what": "OpenKBP, MIT licence (github.com/ababier/open-kbp), derived from TCIA "
        "head-and-neck collections (TCIA Data Usage Policy)",
        "cite": "Babier et al., Medical Physics 48(9):5549-5561, 2021; Clark et al. 2013",
    },
]
REDISTRIBUTION = (
    "Every volume is under a licence that allows sharing and adaptation with attribution "
    "(CC BY 3.0/4.0, Apache-2.0, MIT); the weights are a derived work released under MIT "
    "with the attributions above. GPL data (invesalius_head_ct) was left out. The OpenKBP "
    "validation patients (the benchmark's test patients) were not used."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="the pretraining run folder")
    parser.add_argument("--benchmark", type=Path, help="folder of the benchmark's results.json")
    args = parser.parse_args()
    if args.run is None and args.benchmark is None:
        parser.error("give --run (bundle a run), --benchmark (refresh the tables) or both")
    benchmark = None
    if args.benchmark:
        benchmark = json.loads((args.benchmark / "results.json").read_text(encoding="utf-8"))
    if args.run is None:
        refresh_benchmark(benchmark)
        return
    bundle(args.run, benchmark)


def bundle(run: Path, benchmark: dict[str, Any] | None) -> None:
    """Export ``run`` into the package: weights, card and manifest entry."""
    with tempfile.TemporaryDirectory() as folder:
        release = export_checkpoint(run, folder, name=NAME)
        entry = json.loads(release.snippet_path.read_text(encoding="utf-8"))
        card = release.card_path.read_text(encoding="utf-8")
        ZOO.mkdir(exist_ok=True)
        shutil.copyfile(release.weights_path, ZOO / f"{NAME}.safetensors")
    step_hours = training_step_hours(run, entry["provenance"]["recipe"]["batch_size"])
    entry = zoo_entry(entry, benchmark, step_hours)
    validate_entry(entry)
    write_text_atomic(ZOO / f"{NAME}.md", card + card_sections(benchmark, step_hours))
    manifest = _read_manifest()
    manifest["models"] = [m for m in manifest["models"] if m["name"] != NAME] + [entry]
    _write_manifest(manifest)
    print(f"{NAME}: {entry['weights']['size']} bytes, sha256 {entry['weights']['sha256']}")


def refresh_benchmark(benchmark: dict[str, Any]) -> None:
    """Rewrite the bundled entry's benchmark summary and its card's benchmark section."""
    manifest = _read_manifest()
    entry = next((m for m in manifest["models"] if m["name"] == NAME), None)
    if entry is None:
        raise SystemExit(f"{MANIFEST} has no {NAME} entry to refresh; bundle a run with --run.")
    entry["benchmark"] = benchmark_summary(benchmark)
    validate_entry(entry)
    card_path = ZOO / f"{NAME}.md"
    card = card_path.read_text(encoding="utf-8").split(f"\n{BENCHMARK_HEADING}\n")[0]
    write_text_atomic(card_path, card + "\n" + benchmark_section(benchmark))
    _write_manifest(manifest)
    print(f"{NAME}: benchmark of {benchmark['command']!r} written")


def _read_manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def _write_manifest(manifest: dict[str, Any]) -> None:
    write_text_atomic(MANIFEST, json.dumps(manifest, indent=2) + "\n")


def training_step_hours(run: Path, batch: int) -> float:
    """Hours spent in training steps (data loading overlaps them in a worker), summed over
    the run's sessions from ``metrics.jsonl``: wall clock is lost across ``--resume``."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return round(sum(batch / row["samples_per_s"] for row in rows) / 3600, 2)


def zoo_entry(
    entry: dict[str, Any], benchmark: dict[str, Any] | None, step_hours: float
) -> dict[str, Any]:
    provenance = entry.pop("provenance")
    data = provenance["pretraining_data"]
    entry.pop("note")
    entry.update(
        aliases=["openct_small", "pcrlv2_openct_small"],
        status="published",
        description="The 3D PCRLv2 network at 1/8 of the paper's widths (8-16-32-64: "
        "encoder, skip-less decoder and heads, 0.27 M parameters), pretrained by this "
        "project with `pcrlv2-hub pretrain` on 179 openly licensed CT volumes "
        "(head-and-neck, chest, abdomen) on a 2-core CPU. Its weights ship inside the "
        "package: it loads offline right after installation.",
        license="MIT",
        pretraining_data={
            "volumes": data["used"],
            "found": data["found"],
            "skipped": data["skipped"],
            "file_list": "benchmarks/openct/pretraining_data.txt (in the repository)",
            "file_list_sha256": sha256_file(DATA_LIST),
            "modality": "CT in HU",
            "sources": LICENCES,
            "redistribution": REDISTRIBUTION,
        },
        recipe={
            **provenance["recipe"],
            "widths": entry["arguments"]["widths"],
            "steps": provenance["steps"],
            "samples": provenance["steps"] * provenance["recipe"]["batch_size"],
            "training_step_hours": step_hours,
            "machine": "AMD EPYC, 2 cores shared by the three runs, one thread each, no GPU",
            "config": "benchmarks/openct/recipe_small.json",
            "why": "benchmarks/openct/README.md",
            "command": provenance["command"],
            "versions": provenance["versions"],
            "final_losses": provenance["final_losses"],
        },
    )
    entry["weights"].update(
        repo_id="pcrlv2-hub/unet3d_openct_small",
        revision=None,
        bundled=f"zoo/{NAME}.safetensors",
    )
    if benchmark is not None:
        entry["benchmark"] = benchmark_summary(benchmark)
    return entry


def benchmark_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Mean ± std over seeds of each task's metric, per weights and label count."""
    summary: dict[str, Any] = {
        "command": results["command"],
        "minutes": round(results["seconds"] / 60, 1),
        "report": "benchmarks/openct/results/RESULTS.md",
    }
    for task, metric in (
        ("segmentation", "mean_dice"),
        ("segmentation_probe", "mean_dice"),
        ("classification", "auc"),
        ("classification_probe", "auc"),
    ):
        table = collect(results, task, metric)
        summary[f"{task}_{metric}"] = {
            label: {str(k): _mean_std(v) for k, v in row.items()} for label, row in table.items()
        }
    return summary


def card_sections(benchmark: dict[str, Any] | None, step_hours: float) -> str:
    lines = [
        f"\n{step_hours} hours of training steps on a 2-core AMD EPYC CPU (one thread, "
        "beside the two ablation runs), over several sessions with `--resume`.\n",
        "## Data licences and attributions\n",
    ]
    for source in LICENCES:
        lines.append(f"- **{source['folder']}**: {source['what']}. Cite: {source['cite']}.")
    lines += ["", REDISTRIBUTION, ""]
    if benchmark is not None:
        lines.append(benchmark_section(benchmark))
    return "\n".join(lines)


def benchmark_section(benchmark: dict[str, Any]) -> str:
    """The card's benchmark section: the report without its title."""
    from pcrlv2_hub.benchmark.report import markdown

    return f"{BENCHMARK_HEADING}\n\n" + markdown(benchmark).split("\n", 2)[2]


def _mean_std(values: list[float]) -> str:
    import numpy as np

    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


if __name__ == "__main__":
    main()
