"""How fast, and in how much memory, a warm-cache ``load("unet3d_luna")`` gives a ready model.

Compared with what users of the authors' code do today: build the network, ``torch.load``
the same tensors from a ``.pt`` pickle, ``load_state_dict``. The zoo file is served once by
the loopback Hub of the tests (same protocol as huggingface.co), then every measured load
runs with ``HF_HUB_OFFLINE=1``. Each measurement is a fresh subprocess, so caches inside
Python do not help either side, and the two sides alternate.

    python benchmarks/bench_loading.py [--repeats 7] [--out benchmarks/results/loading.json]

Peak memory is the resident-set high-water mark during loading minus the resident set
once the model-free imports are done: the memory loading itself costs, compared with the
weights' size. It is read from /proc/self/status (VmHWM, the figure ``ru_maxrss`` reports)
after resetting the mark through /proc/self/clear_refs, because ``ru_maxrss`` of a fresh
subprocess still carries its parent's mark across fork and exec, and the import of torch
peaks higher than a load does. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hub_server import LoopbackHub  # noqa: E402  (stdlib only: safe before the HF imports)
from machine_info import machine  # noqa: E402

REPO_ID = "pcrlv2-bench/unet3d_luna"

# Each script prints JSON: seconds from the call to a ready (eval-mode) model, and the
# peak-RSS growth in MiB over the baseline taken after the imports.
_PRELUDE = """
import json, time
def status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return status_mib("VmRSS:")
def peak_mib():
    return status_mib("VmHWM:")
"""
OURS = (
    _PRELUDE
    + """
import torch, pcrlv2_hub.api
base = reset_peak(); start = time.perf_counter()
model = pcrlv2_hub.api.load("unet3d_luna")
seconds = time.perf_counter() - start
ready = peak_mib() - base
checksum = sum(float(t.sum()) for t in model.state_dict().values())  # pages every weight in
print(json.dumps({"seconds": seconds, "peak_mib": ready, "peak_touched_mib": peak_mib() - base}))
"""
)
PICKLE = (
    _PRELUDE
    + """
import sys, torch
from pcrlv2_hub.models.unet3d import PCRLv2UNet3D
base = reset_peak(); start = time.perf_counter()
model = PCRLv2UNet3D()
model.load_state_dict(torch.load(sys.argv[1], map_location="cpu")["state_dict"])
model.eval()
seconds = time.perf_counter() - start
ready = peak_mib() - base
checksum = sum(float(t.sum()) for t in model.state_dict().values())  # pages every weight in
print(json.dumps({"seconds": seconds, "peak_mib": ready, "peak_touched_mib": peak_mib() - base}))
"""
)
# The same load with the check of the tensors taken out (the digest "computed" instantly):
# what the check costs is the difference.
UNCHECKED = OURS.replace(
    "import torch, pcrlv2_hub.api",
    """import sys, torch, pcrlv2_hub.api, pcrlv2_hub.weights_file as weights_file
class Instant:
    def __init__(self, *args, **kwargs):
        self.digest = weights_file.read_metadata(sys.argv[1]).tensor_digest
    def result(self):
        return self.digest
weights_file.start_digest = Instant""",
)
# A local file has no manifest sha256 behind it: its tensors are checked against the
# digest the file records. How much of the load is that check?
LOCAL = (
    _PRELUDE
    + """
import sys, torch, pcrlv2_hub.api
from pcrlv2_hub.tensor_digest import tensor_digest
from pcrlv2_hub.weights_file import read_metadata
start = time.perf_counter()
model = pcrlv2_hub.api.load(weights=sys.argv[1])
seconds = time.perf_counter() - start
start = time.perf_counter()
assert tensor_digest(model.state_dict()) == read_metadata(sys.argv[1]).tensor_digest
print(json.dumps({"seconds": seconds, "digest_seconds": time.perf_counter() - start}))
"""
)
IMPORT = """
import time
start = time.perf_counter()
import pcrlv2_hub
print(time.perf_counter() - start)
"""


def run(script: str, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loading.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_loading_"))
    with LoopbackHub() as hub:
        # huggingface_hub reads these once, at import: set them before anything imports it.
        env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_ENDPOINT": hub.url,
               "PCRLV2_HUB_MANIFEST": str(work / "manifest.json"),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
        os.environ.update(env)
        import torch

        from pcrlv2_hub.api import load
        from pcrlv2_hub.models.unet3d import PCRLv2UNet3D
        from pcrlv2_hub.publish import write_release

        torch.manual_seed(0)
        network = PCRLv2UNet3D()
        release = write_release(work / "release", network.state_dict(), "pcrlv2_unet3d",
                                {}, {"source": "benchmark"}, name="unet3d_luna")  # fmt: skip
        commit = hub.publish(REPO_ID, {"model.safetensors": release.weights_path.read_bytes()})
        entry = json.loads(release.snippet_path.read_text())
        entry.update(status="published")
        entry["weights"].update(repo_id=REPO_ID, revision=commit)
        (work / "manifest.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
        del entry["weights"]["tensor_digest"]  # a manifest from before tensor digests
        (work / "manifest_sha256.json").write_text(
            json.dumps({"schema_version": 1, "models": [entry]})
        )
        load("unet3d_luna")  # the one download: fills the cache
        pickle_path = work / "official_style.pt"
        torch.save({"state_dict": network.state_dict()}, pickle_path)

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    whole_file = {**offline, "PCRLV2_HUB_MANIFEST": str(work / "manifest_sha256.json")}
    ours, unchecked, sha256, pickle, local = [], [], [], [], []
    for _ in range(args.repeats):
        ours.append(json.loads(run(OURS, offline)))
        unchecked.append(json.loads(run(UNCHECKED, offline, str(release.weights_path))))
        sha256.append(json.loads(run(OURS, whole_file)))
        pickle.append(json.loads(run(PICKLE, offline, str(pickle_path))))
        local.append(json.loads(run(LOCAL, offline, str(release.weights_path))))
    imports = [float(run(IMPORT, offline)) for _ in range(args.repeats)]

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(row[key] for row in rows)

    weights_mib = release.size_bytes / 2**20
    results = {
        "command": f"python benchmarks/bench_loading.py --repeats {args.repeats}",
        "machine": machine(),
        "weights_mib": round(weights_mib, 1),
        "import_pcrlv2_hub_s": {"median": statistics.median(imports), "runs": imports},
        "load_warm_cache_s": {"median": median(ours, "seconds"), "runs": ours},
        "pickle_path_s": {"median": median(pickle, "seconds"), "runs": pickle},
        "speedup_vs_pickle": median(pickle, "seconds") / median(ours, "seconds"),
        # what checking the tensors against the manifest adds to a warm-cache load
        "load_unchecked_s": {"median": median(unchecked, "seconds"), "runs": unchecked},
        "check_cost_s": median(ours, "seconds") - median(unchecked, "seconds"),
        "check_share_of_load": 1 - median(unchecked, "seconds") / median(ours, "seconds"),
        "check_cost_paired_median_s": statistics.median(
            a["seconds"] - b["seconds"] for a, b in zip(ours, unchecked, strict=True)
        ),
        # the same load when the manifest records no tensor digest: one sha256 stream
        "load_whole_file_sha256_s": {"median": median(sha256, "seconds"), "runs": sha256},
        "whole_file_sha256_share_of_load": 1
        - median(unchecked, "seconds") / median(sha256, "seconds"),
        "load_local_file_s": {"median": median(local, "seconds"), "runs": local},
        "tensor_digest_s": median(local, "digest_seconds"),
        "digest_share_of_local_load": statistics.median(
            row["digest_seconds"] / row["seconds"] for row in local
        ),
        # at "ready", and after every weight was read once (safetensors maps the file, so
        # pages arrive on first use; the pickle path has them all at once)
        "peak_mib": {
            side: {key: median(rows, key) for key in ("peak_mib", "peak_touched_mib")}
            for side, rows in (("load", ours), ("pickle_path", pickle))
        },
        "peak_touched_in_weight_copies": {
            "load": median(ours, "peak_touched_mib") / weights_mib,
            "pickle_path": median(pickle, "peak_touched_mib") / weights_mib,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if "runs" not in str(v)}, indent=2))


if __name__ == "__main__":
    main()
