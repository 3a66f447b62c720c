"""One PCRLv2 training step of the full-size 3D network: seconds and peak memory.

Each variant runs in its own process (so the peak memory is its own): one warm-up step,
then ``--steps`` timed steps on real sub-crops of the chest CT sample (the paper's views:
two 64x64x32 globals, six 16^3 locals, corrupted as in training), SGD with momentum.
Besides wall-clock seconds, the process's CPU seconds are recorded: on a shared machine
they show how much of the wall time was spent waiting for a core.

Variants:
  ours              the package's step: x1 computes only its final restoration and the
                    drawn level's deep-supervision image; x2 and the locals run in local
                    mode (no restoration at all)
  official_style    the same network and loss, computed the authors' way: every view
                    computes every restoration (all deep-supervision heads and the final
                    head), most of them unused
  ours_recipes      ours with activations kept as recipes (``--recompute-activations``):
                    the same gradients, less memory
  ours_channels_last, ours_channels_last_recipes
                    ours with channels_last_3d memory (``ours`` keeps contiguous tensors),
                    without recipes (what ``pcrlv2-hub pretrain`` does by default) and with
  ours_bf16, ours_bf16_compile
                    bf16 autocast (on a CPU only worth it with native bf16: AVX512-BF16
                    or AMX), and with torch.compile

The data path is timed too: cutting the batch's sub-crops (DataLoader workers do this
in parallel with the step) and corrupting it (in the training process).

The authors' pipeline on the project's 2-core machine (issue #3): 16.4 s and 2.9 GB peak
per step at batch 2; 33.1 s and 5.0 GB at batch 4. On a GPU the goal is >= 150 samples/s
at batch 32 in bf16 on one H100.

    python benchmarks/bench_step.py                       # -> benchmarks/results/step_cpu.json
    python benchmarks/bench_step.py --device cuda         # -> benchmarks/results/step_cuda.json
    python benchmarks/bench_step.py --variants ours --batch-sizes 2 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import default_collate

from pcrlv2_hub.models.recompute import activations_as_recipes
from pcrlv2_hub.models.registry import build_model
from pcrlv2_hub.pretrain.crops import SubCropSampler
from pcrlv2_hub.pretrain.dataset import SubCropDataset, corrupt_batch
from pcrlv2_hub.pretrain.losses import (
    LevelDraw,
    LossOutput,
    comparison_loss,
    deep_supervision_weight,
    draw_levels,
    local_comparison_loss,
    multiscale_restoration_loss,
    pcrlv2_loss,
    restoration_loss,
)
from pcrlv2_hub.pretrain.preparation import prepare_volumes
from pcrlv2_hub.pretrain.views import ViewBatch, ViewConfig3D

SAMPLE = Path(__file__).parents[1] / "pcrlv2_hub" / "sample_data" / "chest_ct.nii.gz"
VARIANTS: dict[str, dict[str, bool]] = {
    "ours": {},
    "official_style": {"official": True},
    "ours_recipes": {"recipes": True},
    "ours_channels_last": {"channels_last": True},
    "ours_channels_last_recipes": {"channels_last": True, "recipes": True},
    "ours_bf16": {"bf16": True},
    "ours_bf16_compile": {"bf16": True, "compile": True},
}
AUTHORS = {2: {"seconds": 16.4, "peak_gb": 2.9}, 4: {"seconds": 33.1, "peak_gb": 5.0}}
GOALS = {"throughput_vs_authors": 2.0, "peak_memory_vs_authors": 0.6, "gpu_bf16_samples_per_s": 150}


def official_style_loss(model, views: ViewBatch, levels: LevelDraw, beta: float) -> LossOutput:
    """The authors' forward passes: all restorations of all views, the same four terms."""
    k = levels.level
    out1 = model(views.inputs1)
    out2 = model(views.inputs2)
    local = model(views.locals, supervise=range(len(out1.levels)))  # final head too
    terms = {
        "restoration": restoration_loss(out1.restoration, views.targets1),
        "multiscale_restoration": multiscale_restoration_loss(
            out1.levels[k].restoration, views.targets1, beta
        ),
        "comparison": comparison_loss(out1.levels[k], out2.levels[k]),
        "local_comparison": local_comparison_loss(
            (out1.levels, out2.levels), local.levels, levels.local_levels
        ),
    }
    return LossOutput(torch.stack(list(terms.values())).sum(), terms, None)


def run_variant(variant: str, batch_size: int, steps: int, device: torch.device) -> dict:
    """Time ``steps`` training steps (after one warm-up) in this process."""
    options = VARIANTS[variant]
    torch.manual_seed(0)
    config = ViewConfig3D()
    memory_format = torch.channels_last_3d if options.get("channels_last") else None
    model = build_model("pcrlv2_unet3d").train().to(device, memory_format=memory_format)
    network = torch.compile(model) if options.get("compile") else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    forward = official_style_loss if options.get("official") else pcrlv2_loss
    timings: dict[str, list[float]] = {"step": [], "cpu": [], "crops": [], "corruptions": []}

    def train_step(step: int) -> tuple[LossOutput, dict[str, float]]:
        started = time.perf_counter()
        batch = default_collate([dataset[step * batch_size + i] for i in range(batch_size)])
        cropped = time.perf_counter()
        views = corrupt_batch(batch, torch.Generator(device).manual_seed(step), config)
        _synchronize(device)
        corrupted = time.perf_counter()
        if memory_format is not None:
            views = ViewBatch(*(t.contiguous(memory_format=memory_format) for t in (
                views.inputs1, views.inputs2, views.targets1, views.targets2, views.locals
            )))  # fmt: skip
        levels = draw_levels(torch.Generator().manual_seed(step), 3, config.num_locals)
        cpu, tick = time.process_time(), time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        bf16 = options.get("bf16", False)
        recipes = activations_as_recipes() if options.get("recipes") else nullcontext()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), recipes:
            out = forward(network, views, levels, deep_supervision_weight(0, 240))
        out.total.backward()
        optimizer.step()
        _synchronize(device)
        return out, {
            "step": time.perf_counter() - tick,
            "cpu": time.process_time() - cpu,
            "crops": cropped - started,
            "corruptions": corrupted - cropped,
        }

    with tempfile.TemporaryDirectory() as cache:
        volumes = prepare_volumes(SAMPLE, cache_dir=cache).volumes
        dataset = SubCropDataset(volumes, SubCropSampler(config), 10_000, seed=0)
        memory_before = _peak_memory_gb(device)  # imports, network, optimiser, data
        for step in range(steps + 1):
            out, timing = train_step(step)
            if step:  # the first step warms up oneDNN/cuDNN, the allocator (and compiles)
                for name, seconds in timing.items():
                    timings[name].append(seconds)
        peak_memory = _peak_memory_gb(device)
        # FLOPs on one more step, after the peak is read: the counter's imports take 80 MB
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            train_step(steps + 1)
    median = {name: statistics.median(values) for name, values in timings.items()}
    result = {
        "variant": variant,
        "device": str(device),
        "batch_size": batch_size,
        "step_seconds_median": round(median["step"], 2),
        "step_seconds_all": [round(s, 2) for s in timings["step"]],
        "process_cpu_seconds_median": round(median["cpu"], 2),
        "samples_per_second": round(batch_size / median["step"], 3),
        "tflop_per_step": round(counter.get_total_flops() / 1e12, 4),
        "achieved_gflop_per_s": round(counter.get_total_flops() / 1e9 / median["step"], 1),
        "peak_memory_gb": round(peak_memory, 2),
        "peak_memory_before_the_first_step_gb": round(memory_before, 2),
        "data_crops_seconds_per_batch": round(median["crops"], 3),
        "data_corruptions_seconds_per_batch": round(median["corruptions"], 3),
        "loss": round(out.total.item(), 4),
    }
    authors = AUTHORS.get(batch_size)
    if authors and device.type == "cpu":
        result["throughput_vs_authors"] = round(authors["seconds"] / median["step"], 2)
        result["peak_memory_vs_authors"] = round(result["peak_memory_gb"] / authors["peak_gb"], 2)
    return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_gb(device: torch.device) -> float:
    """Peak resident memory of this process on the CPU; peak allocated memory on a GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: ours, official_style, ours_channels_last on the CPU "
                        "(plus ours_bf16 with native bf16); all on a GPU")  # fmt: skip
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="default: 2 4 (CPU), 32 (GPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="default: benchmarks/results/step_{cpu,cuda}.json")
    parser.add_argument("--worker", nargs=3, metavar=("VARIANT", "BATCH", "STEPS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        variant, batch, steps = args.worker
        print(json.dumps(run_variant(variant, int(batch), int(steps), device)))
        return
    gpu = device.type == "cuda"
    variants = args.variants or _default_variants(gpu)
    batch_sizes = args.batch_sizes or ([32] if gpu else [2, 4])
    out = Path(args.out or Path(__file__).parent / f"results/step_{device.type}.json")
    load_before = os.getloadavg()
    runs = []
    for batch in batch_sizes:
        for variant in variants:
            child = subprocess.run(
                [sys.executable, __file__, "--device", args.device, "--threads",
                 str(torch.get_num_threads()), "--worker", variant, str(batch), str(args.steps)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
    results = {
        "command": " ".join(["python", *map(shlex.quote, sys.argv)]),
        "machine": torch.cuda.get_device_name(device) if gpu else _cpu_model(),
        "cores": os.cpu_count(),
        "cpu_native_bf16": _has_native_bf16(),
        "cpu_nominal_peak_gflop_per_s": None if gpu else _cpu_peak_gflops(),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torch_threads": torch.get_num_threads(),
        "authors": AUTHORS,
        "goals": GOALS,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def _default_variants(gpu: bool) -> list[str]:
    if gpu:
        return ["official_style", "ours", "ours_channels_last_recipes", "ours_bf16",
                "ours_bf16_compile"]  # fmt: skip
    cpu = ["official_style", "ours", "ours_recipes", "ours_channels_last",
           "ours_channels_last_recipes"]  # fmt: skip
    return [*cpu, "ours_bf16"] if _has_native_bf16() else cpu


def _cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line]
    return names[0] if names else platform.processor()


def _cpu_peak_gflops() -> float:
    """Nominal FP32 peak: cores x clock x 2 FMA units x lanes (8 with AVX2, 16 with AVX-512)
    x 2 FLOP per FMA. No real kernel reaches it; it bounds what any step can achieve."""
    info = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if "cpu MHz" in line)
    lanes = 16 if "avx512f" in info else 8
    return round((os.cpu_count() or 1) * mhz / 1000 * 2 * lanes * 2, 1)


def _has_native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


if __name__ == "__main__":
    main()
