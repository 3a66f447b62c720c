"""How preparation and training scale: decode throughput, time to the first step, memory.

    python benchmarks/bench_prepare.py --out benchmarks/results/scale.json

1. Decode throughput with 1 and 2 worker processes on the real CTs of the pretraining list
   (``benchmarks/openct/pretraining_data.txt``, the large ones, not OpenKBP's 128^3 crops),
   each order once, cold caches; the two caches must be byte-identical.
2. Time to the first training step and peak memory (max RSS) of the training process for
   N = 25, 100, 400 volumes (links to the two real sample CTs under distinct names, each
   its own cache entry), with a cold and then a warm cache.
3. Steady-state samples/s with one process and with ``torchrun --nproc_per_node 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "pcrlv2_hub" / "sample_data"
DATA_LIST = ROOT / "benchmarks" / "openct" / "pretraining_data.txt"
TINY = ["--widths", "4,8,8,16", "--view", "global_size=[16,16,8]", "--view",
        "local_size=[8,8,8]", "--view", "num_locals=2", "--batch-size", "4"]  # fmt: skip
DEMO = ["--widths", "16,32,64,128", "--view", "global_size=[32,32,16]", "--view",
        "local_size=[8,8,8]", "--batch-size", "8"]  # fmt: skip


def decode_throughput(work: Path) -> dict:
    from pcrlv2_hub.pretrain.preparation import prepare_volumes

    lines = [line.strip() for line in DATA_LIST.read_text().splitlines()]
    large = [DATA_LIST.parent / p for p in lines if p and not p.startswith("#")]
    large = [p for p in large if "openkbp" not in str(p)]
    listing = work / "large.txt"
    listing.write_text("\n".join(str(p) for p in large) + "\n")
    seconds: dict[int, list[float]] = {1: [], 2: []}
    for round_, workers in enumerate([1, 2, 2, 1]):
        cache = work / f"decode_{workers}_{round_}"
        started = time.perf_counter()
        prepared = prepare_volumes(listing, cache_dir=cache, workers=workers)
        seconds[workers].append(time.perf_counter() - started)
    identical = all(
        (work / "decode_1_0" / p.name).read_bytes() == p.read_bytes()
        for p in (work / "decode_2_1").iterdir()
    )
    median = {n: statistics.median(s) for n, s in seconds.items()}
    return {
        "volumes": prepared.summary.used,
        "cache_gib": round(prepared.cache_bytes / 2**30, 2),
        "seconds": seconds,
        "median_seconds": median,
        "speedup_2_workers": round(median[1] / median[2], 2),
        "caches_byte_identical": identical,
    }


def first_step(work: Path, n: int) -> dict:
    folder = work / f"links_{n}"
    folder.mkdir()
    for i in range(n):
        sample = ("chest_ct", "abdomen_ct")[i % 2]
        (folder / f"{sample}_{i:04d}.nii.gz").symlink_to(SAMPLES / f"{sample}.nii.gz")
    result = {}
    for cache_state in ("cold", "warm"):
        output = work / f"run_{n}_{cache_state}"
        command = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "pcrlv2_hub.cli",
                   "pretrain", "--data", str(folder), *TINY, "--epochs", "1",
                   "--steps-per-epoch", "1", "--workers", "0", "--no-export", "--no-progress",
                   "--device", "cpu", "--cache-dir", str(work / f"cache_{n}"),
                   "--output", str(output)]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        data = json.loads((output / "summary.json").read_text())["data"]
        result[cache_state] = {
            "wall_s": round(wall, 1),
            "prepare_s": data["prepare_seconds"],
            "decoded": data["decoded_per_rank"],
            "peak_rss_mib": round(int(done.stderr.strip().splitlines()[-1]) / 1024),
        }
    return result


def samples_per_s(work: Path, processes: int) -> dict:
    output = work / f"steady_{processes}"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [sys.executable, *(launcher if processes == 2 else []), "-m", "pcrlv2_hub.cli",
               "pretrain", "--data", str(SAMPLES / "*_ct.nii.gz"), *DEMO, "--epochs", "1",
               "--steps-per-epoch", "14", "--workers", "0", "--no-export", "--no-progress",
               "--device", "cpu", "--cache-dir", str(work / "steady_cache"),
               "--output", str(output)]  # fmt: skip
    threads = "1" if processes == 2 else "2"
    subprocess.run(command, check=True, capture_output=True, env={**os.environ,
                   "OMP_NUM_THREADS": threads})  # fmt: skip
    rates = [json.loads(line)["samples_per_s"] for line in (output / "metrics.jsonl").open()]
    return {"threads_per_process": int(threads), "median_samples_per_s":
            round(statistics.median(rates[2:]), 2), "steps_timed": len(rates) - 2}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as scratch:
        work = Path(scratch)
        results = {
            "command": " ".join(["python", *sys.argv]),
            "machine": f"{platform.processor() or platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}",
            "decode": decode_throughput(work),
            "first_step": {n: first_step(work, n) for n in (25, 100, 400)},
            "steady_state": {p: samples_per_s(work, p) for p in (1, 2)},
        }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
