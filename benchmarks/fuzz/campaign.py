"""Mutation fuzzing of every reader a user points at a file: seeded, reproducible, limited.

    python benchmarks/fuzz/campaign.py --cases 10000 --out benchmarks/fuzz/results
    python benchmarks/fuzz/campaign.py --targets safetensors --cases 1 --first-case 4711  # replay

Case ``i`` of a target mutates one file of its seed with ``random.Random(f"{seed}/{target}/{i}")``,
so any finding is replayed from its number. Cases run in a worker process with an
address-space limit (``--memory-mib`` above what the worker holds after its imports); the
parent gives each case ``--timeout`` seconds and replaces a worker that hangs or dies.

Outcomes: ``refused`` (a ``PCRLv2HubError``), ``accepted`` (read, and for weights the
tensors are exactly the seed's); findings: ``untyped`` (any other exception), ``memory``
(``MemoryError``, or the limit hit), ``kept`` (the worker holds over 256 MiB more after the
case than before it: the reader leaked; the worker is replaced), ``hang``, ``crash`` (the
worker died), ``changed``
(weights loaded without an error but with other tensors). The goal is zero findings,
except ``changed`` in files the package did not write (reported, not counted).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutations import mutate

if TYPE_CHECKING:
    from targets import Target

# This module imports no torch at its top: readers that decode in child processes (DICOM)
# re-run the main module there, and torch would cost each case a second.
FINDINGS = ("untyped", "memory", "kept", "hang", "crash", "changed")
KEPT_PER_KIND = 20
KEPT_LIMIT_MIB = 256  # resident memory a worker may gain over a case before it is a leak


def run_case(target: Target, case: int, seed: int, scratch: Path) -> dict[str, Any]:
    """Build case ``case`` of ``target`` in ``scratch`` and read it; its outcome."""
    from targets import tensors_equal

    from pcrlv2_hub import PCRLv2HubError

    rng = random.Random(f"{seed}/{target.name}/{case}")
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(target.seed, scratch)
    victim = rng.choice(target.mutable)
    mutation, data = mutate((scratch / victim).read_bytes(), rng, target.text)
    (scratch / victim).write_bytes(data)
    record = {"case": case, "file": victim, "mutation": mutation}
    try:
        result = target.read(scratch / target.entry)
    except PCRLv2HubError as error:
        return {**record, "outcome": "refused", "error": type(error).__name__}
    except MemoryError:
        return {**record, "outcome": "memory", "error": "MemoryError"}
    except Exception as error:  # exactly what the campaign looks for
        where = traceback.extract_tb(error.__traceback__)[-1]
        return {**record, "outcome": "untyped", "error": f"{type(error).__name__}: {error}"[:300],
                "at": f"{Path(where.filename).name}:{where.lineno}"}  # fmt: skip
    if target.expected is not None and not tensors_equal(result, target.expected):
        return {**record, "outcome": "changed", "error": "loaded with other tensors"}
    return {**record, "outcome": "accepted"}


def _worker(connection: Any, targets: dict[str, Target], seed: int, memory_mib: int) -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the readers' notices are not findings
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    limit = _status_kib("VmSize") * 1024 + memory_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    scratch = Path(tempfile.mkdtemp(prefix="fuzz_case_"))
    baseline = _status_kib("VmRSS") // 1024
    while (job := connection.recv()) is not None:
        name, case = job
        record = run_case(targets[name], case, seed, scratch / "case")
        kept = _status_kib("VmRSS") // 1024 - baseline
        if kept > KEPT_LIMIT_MIB:  # the reader did not give its memory back: a leak
            record = {**record, "outcome": "kept", "then": record["outcome"],
                      "error": f"{kept} MiB still held after the case"}  # fmt: skip
        connection.send(record)
        if record["outcome"] == "kept":
            return  # a fresh worker for the next case, so that leaks do not pile up


def _status_kib(field: str) -> int:
    """A size this process reports in ``/proc/self/status`` (``VmSize``, ``VmRSS``), in KiB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


class Workers:
    """One worker process at a time, replaced when it hangs or dies."""

    def __init__(self, targets: dict[str, Target], seed: int, memory_mib: int):
        self._context = multiprocessing.get_context("fork")
        self._arguments = (targets, seed, memory_mib)
        self._start()

    def _start(self) -> None:
        self._connection, child = self._context.Pipe()
        self._process = self._context.Process(target=_worker, args=(child, *self._arguments))
        self._process.start()

    def run(self, name: str, case: int, timeout: float) -> dict[str, Any]:
        self._connection.send((name, case))
        try:
            if self._connection.poll(timeout):
                record = self._connection.recv()
                if record["outcome"] == "kept":  # that worker has left
                    self._process.join()
                    self._start()
                return record
            outcome = "hang"
        except EOFError:
            outcome = "crash"
        if outcome == "hang":
            self._process.kill()
        self._process.join()
        code = self._process.exitcode
        self._start()
        return {"case": case, "outcome": outcome, "error": f"worker exit code {code}"}

    def close(self) -> None:
        self._connection.send(None)
        self._process.join(timeout=10)


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    from targets import build_targets, describe  # here, not at the top: see below

    work = Path(tempfile.mkdtemp(prefix="fuzz_seeds_"))
    targets = build_targets(work)
    chosen = args.targets.split(",") if args.targets else list(targets)
    workers = Workers(targets, args.seed, args.memory_mib)
    summary: dict[str, Any] = {}
    try:
        for name in chosen:
            started, counts, findings = time.perf_counter(), Counter(), []
            for case in range(args.first_case, args.first_case + args.cases):
                record = workers.run(name, case, args.timeout)
                counts[record["outcome"]] += 1
                if record["outcome"] in FINDINGS and counts[record["outcome"]] <= KEPT_PER_KIND:
                    findings.append(record)
            counted = [k for k in FINDINGS if k != "changed" or targets[name].ours]
            summary[name] = {
                "cases": args.cases,
                "outcomes": dict(counts),
                "findings": sum(counts[k] for k in counted),
                "examples": findings,
                "seconds": round(time.perf_counter() - started, 1),
            }
            print(f"{name}: {dict(counts)} in {summary[name]['seconds']} s", flush=True)
    finally:
        workers.close()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "command": "python benchmarks/fuzz/campaign.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "limits": {"timeout_s": args.timeout, "memory_mib": args.memory_mib},
        "targets": describe({name: targets[name] for name in chosen}),
        "results": summary,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per target")
    parser.add_argument("--first-case", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", help="comma-separated names (default: all)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    parser.add_argument("--memory-mib", type=int, default=2048, help="memory per case")
    parser.add_argument("--out", type=Path, help="folder for results.json")
    args = parser.parse_args()
    results = campaign(args)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    total = sum(r["findings"] for r in results["results"].values())
    print(f"findings: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
