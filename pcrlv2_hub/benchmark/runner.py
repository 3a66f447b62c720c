"""Running a benchmark: jobs over worker processes, results kept after every job.

``results.json`` in the output folder is rewritten after each finished job, so a stopped
benchmark resumes where it stopped when run again with the same protocol, data and
weights (a weights file whose sha256 changed is benchmarked again). At the end the report
(``RESULTS.md`` and ``label_efficiency.png``) is written from it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..errors import InvalidInputError
from .jobs import (
    CLASSIFICATION,
    CLASSIFICATION_PROBE,
    SEGMENTATION,
    SEGMENTATION_PROBE,
    Context,
    Job,
    run_job,
)
from .protocol import Protocol

RESULTS = "results.json"


@dataclass(frozen=True)
class WeightsSpec:
    """``LABEL=SOURCE`` on the command line: how the table names a ``--weights`` value."""

    label: str
    source: str

    @classmethod
    def parse(cls, text: str) -> WeightsSpec:
        label, sep, source = text.partition("=")
        if not sep:
            source = text
            label = Path(text.partition(":")[2] or text).stem or text
            if text.startswith("scratch"):
                label = "scratch"
        if not label or not source:
            raise InvalidInputError(f"--weights {text!r}: write LABEL=SOURCE or just SOURCE.")
        return cls(label, source)


def plan(protocol: Protocol, labels: list[str], openkbp: bool, adrenal: bool) -> list[Job]:
    """Every job, longest first (the probes, then segmentation), so workers finish together."""
    jobs = []
    if openkbp:
        jobs += [Job(SEGMENTATION_PROBE, label, None, None) for label in labels]
        jobs += [
            Job(SEGMENTATION, label, count, seed)
            for count in sorted(protocol.label_counts, key=_all_last)
            for seed in protocol.seeds
            for label in labels
        ]
    if adrenal:
        jobs += [
            Job(CLASSIFICATION, label, fraction, seed)
            for fraction in protocol.classification.label_fractions
            for seed in protocol.seeds
            for label in labels
        ]
        jobs += [Job(CLASSIFICATION_PROBE, label, None, None) for label in labels]
    return jobs


def run_benchmark(
    protocol: Protocol,
    weights: list[WeightsSpec],
    output: str | os.PathLike,
    *,
    openkbp: str | os.PathLike | None = None,
    split: str | os.PathLike | None = None,
    adrenal: str | os.PathLike | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Run (or finish) the benchmark of ``weights``; returns the results it wrote."""
    from .report import write_report

    labels = [spec.label for spec in weights]
    if len(set(labels)) != len(labels):
        raise InvalidInputError(f"--weights labels must differ, got {labels}.")
    if openkbp is None and adrenal is None:
        raise InvalidInputError("give --openkbp DIR, --adrenal FILE or both: nothing to run.")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    described = {spec.label: _describe(spec) for spec in weights}
    data = {
        "openkbp": str(openkbp) if openkbp else None,
        "split": str(split) if split else "the split shipped with pcrlv2_hub",
        "adrenal": str(adrenal) if adrenal else None,
    }
    results = _previous(output / RESULTS, protocol, data, described) or {
        "protocol": protocol.to_dict(),
        "data": data,
        "weights": described,
        "command": " ".join(["pcrlv2-hub", *sys.argv[1:]]),
        "environment": _environment(workers),
        "seconds": 0.0,
        "records": [],
    }
    context = Context(
        protocol,
        {spec.label: spec.source for spec in weights},
        str(openkbp) if openkbp else None,
        str(split) if split else None,
        str(adrenal) if adrenal else None,
    )
    done = {record["job"] for record in results["records"]}
    jobs = [j for j in plan(protocol, labels, bool(openkbp), bool(adrenal)) if j.key not in done]
    started = time.perf_counter()
    with (
        ProcessPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(jobs), desc="benchmark", unit="job") as progress,
    ):
        futures = {pool.submit(run_job, job, context): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            results["records"] += [{"job": job.key, **r} for r in future.result()]
            results["seconds"] += time.perf_counter() - started
            started = time.perf_counter()
            write_text_atomic(output / RESULTS, json.dumps(results, indent=1) + "\n")
            progress.set_postfix_str(job.key, refresh=False)
            progress.update()
    write_report(results, output)
    return results


def _all_last(count: int | str) -> float:
    return float("inf") if isinstance(count, str) else float(count)


def _describe(spec: WeightsSpec) -> dict[str, Any]:
    from ..finetune.networks import weights_option
    from ..weights_file import sha256_file

    option = weights_option(spec.source, "unet3d_luna")
    file = option["weights"]
    sha256 = sha256_file(file) if file and Path(file).is_file() else None
    return {"source": spec.source, "pretrained": option["pretrained"], "sha256": sha256}


def _previous(
    path: Path, protocol: Protocol, data: dict[str, Any], weights: dict[str, Any]
) -> dict[str, Any] | None:
    """The earlier results in ``path`` if they belong to this benchmark (else refuse)."""
    if not path.exists():
        return None
    previous = json.loads(path.read_text(encoding="utf-8"))
    if previous["protocol"] != json.loads(json.dumps(protocol.to_dict())):
        raise InvalidInputError(
            f"{path} holds results of another protocol; pass another --output, or delete it."
        )
    if previous["data"] != data:
        raise InvalidInputError(f"{path} holds results on other data; pass another --output.")
    changed = [
        label
        for label, described in weights.items()
        if label in previous["weights"] and previous["weights"][label] != described
    ]
    previous["records"] = [
        r for r in previous["records"] if r["weights"] in weights and r["weights"] not in changed
    ]
    previous["weights"] = {**previous["weights"], **weights}
    return previous


def _environment(workers: int) -> dict[str, Any]:
    import torch

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "workers": workers,
        "threads_per_worker": 1,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
