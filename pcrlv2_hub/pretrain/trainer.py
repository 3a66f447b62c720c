"""The PCRLv2 pretraining loop: one CPU process, one GPU, or many GPUs and nodes (torchrun).

The recipe is the authors' (``train_3d.py`` / ``train_2d.py``): SGD with momentum and
weight decay, the learning rate set at the start of each epoch to
``lr * 1/2 (1 + cos(pi * epoch / epochs))``, the four PCRLv2 terms per step. Differences,
all deliberate: the authors run ``epochs + 1`` epochs, the last at learning rate 0, and
silently skip steps whose loss exceeds 1000 after epoch 10; here a run has ``epochs``
epochs and a NaN/inf loss stops it with :class:`TrainingDivergedError`. Their DataParallel
+ apex becomes DistributedDataParallel + ``torch.autocast``.

Never lose work: a checkpoint every ``checkpoint_every`` steps (atomic, see
``checkpoint.py``), on SIGTERM, and at the end; ``resume=True`` continues exactly, since
every random draw of the loop is a function of (seed, step) and the data items of
(seed, epoch, index). Only rank 0 writes files: the checkpoints, ``metrics.jsonl`` (each
loss term and the learning rate per step), the report PNGs and, at the end, the export.

BatchNorm with many processes: on GPUs the network is converted to SyncBatchNorm, so N
processes compute what one process computes on the whole batch. PyTorch's SyncBatchNorm
does not run on CPUs, so on gloo each process normalises with its own shard's
statistics; that equals one process with ``accumulation`` = N (the same shards as
micro-batches), which is how the distributed test checks it.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..atomic import write_text_atomic
from ..errors import CheckpointError, DownloadError, InvalidInputError, TrainingDivergedError
from ..models.recompute import activations_as_recipes
from ..models.registry import build_model
from . import distributed, report
from .checkpoint import (
    LAST,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from .config import PretrainConfig
from .dataset import ImageViewDataset, SubCropDataset, corrupt_batch
from .distributed import DistributedContext
from .losses import (
    COMPARISON_TERMS,
    RESTORATION_TERMS,
    PCRLv2Objective,
    deep_supervision_weight,
    draw_levels,
)
from .run_data import prepare_run_data
from .sharding import StepShardSampler
from .views import ViewBatch

CHECKPOINT_FORMAT = "pcrlv2_hub.pretrain/1"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
RUN_CONFIG = "config.json"
EXPORT = "export"
TERMS = RESTORATION_TERMS + COMPARISON_TERMS
RESUME_MAY_CHANGE = frozenset(
    {"output", "workers", "progress", "export", "compile", "cache_dir", "checkpoint_every",
     "recompute_activations", "prepare_workers", "shared_cache", "prepare_timeout",
     "dist_timeout"}
)  # fmt: skip
"""Settings that do not change the math, so a resumed run may use other values."""
_LEVEL_STREAM, _CORRUPTION_STREAM = 0, 1


@dataclass
class RunSummary:
    """What a run did; also written to ``summary.json`` in the output folder."""

    output: str
    step: int
    total_steps: int
    epoch: int
    losses: dict[str, float]
    data: dict[str, Any]
    checkpoint: str | None
    export: str | None
    interrupted: bool
    seconds: float


def pretrain(
    config: PretrainConfig, *, resume: bool = False, command: str | None = None
) -> RunSummary:
    """Train with ``config`` (resuming from ``config.output`` if asked) and export at the end.

    Raises TrainingDivergedError on a NaN/inf loss, CheckpointError when a checkpoint cannot
    be written or resumed, DataError when the data cannot be used.
    """
    if not resume and (Path(config.output) / LAST).exists():
        raise CheckpointError(
            f"{config.output} already holds a run (its {LAST}); continue it with --resume, "
            f"or pass another --output so that it is not overwritten."
        )
    context = distributed.start(config.device, config.dist_timeout)
    try:
        trainer = Trainer(config, context, command or " ".join(sys.argv))
        if resume:
            trainer.resume()
        return trainer.run()
    finally:
        distributed.stop()


def read_run_config(output: str | Path) -> dict[str, Any]:
    """The settings of the run in ``output`` (its ``config.json``), to resume it."""
    path = Path(output) / RUN_CONFIG
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"no run to resume in {output} ({path} is missing or unreadable: {error}); "
            f"give the --output folder of an earlier run, or start without --resume."
        ) from error


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """The authors' schedule: ``base_lr * 1/2 (1 + cos(pi * epoch / epochs))`` per epoch."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def stream_generator(seed: int, step: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator for one purpose of one step, seeded from (seed, step, stream).

    Seeding per step rather than carrying one generator along is what lets a resumed run,
    or a run split over more processes, draw exactly the same numbers.
    """
    mixed = np.random.SeedSequence([seed, step, stream]).generate_state(2, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(mixed) & ((1 << 63) - 1))


class Trainer:
    """One process's share of a run: its data shard, network, optimiser and bookkeeping."""

    def __init__(self, config: PretrainConfig, context: DistributedContext, command: str):
        self.config = config
        self.context = context
        self.command = command
        self.device = context.device
        self.output = Path(config.output)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise InvalidInputError("precision='fp16' needs a CUDA GPU; use bf16 or fp32.")
        if config.data is None:
            raise InvalidInputError(
                "no training data: pass --data (a folder, a glob or a list of files)."
            )
        _seed_everything(config.seed)
        self.view_config = config.view_config()
        sources, self.data_description = prepare_run_data(config, context)
        self.steps_per_epoch = config.steps_per_epoch or max(
            1, len(sources) * config.items_per_source // config.batch_size
        )
        self.dataset = self._dataset(sources, self.steps_per_epoch * config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.model = self._network()
        self.objective = self._wrapped_objective()
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.losses: dict[str, float] = {}
        self.last_views: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.stop_requested = False  # agreed by all processes at the end of a step
        self.signalled = False  # this process received SIGTERM
        self.checkpoint_path: Path | None = None
        self.checkpointed_step = -1

    # --- set-up -------------------------------------------------------------------------

    def _dataset(self, sources: list[Any], items_per_epoch: int) -> Dataset:
        if self.config.dim == 3:
            from .crops import SubCropSampler

            sampler = SubCropSampler(self.view_config)
            return SubCropDataset(sources, sampler, items_per_epoch, self.config.seed)
        from .views2d import ImageViewSampler

        sampler = ImageViewSampler(self.view_config)
        return ImageViewDataset(sources, sampler, items_per_epoch, self.config.seed)

    def _network(self) -> nn.Module:
        config = self.config
        model = build_model(config.architecture, **config.model_arguments())
        if config.imagenet_init:
            model.encoder.load_state_dict(_imagenet_resnet18_encoder())
        if self.context.is_distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if config.channels_last:
            model = model.to(memory_format=_memory_format(config.dim))
        return model.to(self.device).train()

    def _wrapped_objective(self) -> nn.Module:
        network = torch.compile(self.model) if self.config.compile else self.model
        objective: nn.Module = PCRLv2Objective(network, self.config.objective)
        if self.context.is_distributed:
            objective = DistributedDataParallel(
                objective,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # the levels not drawn leave their heads unused
            )
        return objective

    def resume(self) -> None:
        """Continue from the newest checkpoint in the output folder, exactly."""
        state = load_checkpoint(self.output)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{self.output} holds a checkpoint of another format ({state.get('format')!r}); "
                f"resume with the pcrlv2_hub version that wrote it, or start a new --output."
            )
        changed = {
            name: (state["config"].get(name), value)
            for name, value in self.config.to_dict().items()
            if name not in RESUME_MAY_CHANGE and state["config"].get(name) != value
        }
        if changed:
            listing = ", ".join(f"{n}: {old!r} -> {new!r}" for n, (old, new) in changed.items())
            raise CheckpointError(
                f"cannot resume {self.output} with other settings ({listing}); a resumed run "
                f"must keep the settings that change the training. Drop those flags, or "
                f"start a new run in another --output folder."
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.step = state["step"]
        self.losses = state["losses"]

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> RunSummary:
        started = time.perf_counter()
        config = self.config
        if self.context.is_writer:
            self.output.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.output)
            _truncate_metrics(self.output / METRICS, self.step)
            write_text_atomic(self.output / RUN_CONFIG, json.dumps(config.to_dict(), indent=2))
        in_main_thread = threading.current_thread() is threading.main_thread()
        if in_main_thread:  # Python delivers signals to the main thread only
            previous_handler = signal.signal(signal.SIGTERM, self._request_stop)
        progress = tqdm(
            total=self.total_steps * config.batch_size,
            initial=self.step * config.batch_size,
            unit="sample",
            unit_scale=True,
            dynamic_ncols=True,
            desc="pretrain",
            disable=not (self.context.is_writer and config.progress),
        )
        try:
            with (
                open(self.output / METRICS, "a") if self.context.is_writer else nullcontext()
            ) as metrics:
                for epoch in range(self.step // self.steps_per_epoch, config.epochs):
                    if self._run_epoch(epoch, metrics, progress):
                        break
            if self.checkpointed_step != self.step:
                self._checkpoint()
        finally:
            progress.close()
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous_handler)
        return self._finish(time.perf_counter() - started)

    def _run_epoch(self, epoch: int, metrics: Any, progress: tqdm) -> bool:
        """Train the remaining steps of ``epoch``; True when a stop was requested."""
        config = self.config
        lr = cosine_lr(config.lr, epoch, config.epochs)
        beta = deep_supervision_weight(epoch, config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.dataset.set_epoch(epoch)
        sampler = StepShardSampler(
            config.batch_size,
            self.steps_per_epoch,
            self.context.rank,
            self.context.world_size,
            config.accumulation,
            first_step=self.step - epoch * self.steps_per_epoch,
        )
        loader = DataLoader(
            self.dataset,
            batch_size=sampler.shard_size,
            sampler=sampler,
            num_workers=config.workers,
            pin_memory=self.device.type == "cuda",
        )
        for micro_batches in _grouped(iter(loader), config.accumulation):
            tick = time.perf_counter()
            self._train_step(micro_batches, sampler, beta)
            record = {
                "step": self.step,
                "epoch": epoch,
                "lr": lr,
                "beta": beta,
                **self.losses,
                "samples_per_s": config.batch_size / (time.perf_counter() - tick),
            }
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
            progress.update(config.batch_size)
            progress.set_postfix(epoch=epoch, loss=f"{self.losses['total']:.4f}", refresh=False)
            if self.step % config.checkpoint_every == 0 or self.stop_requested:
                self._checkpoint()
            if self.stop_requested:
                return True
        return False

    def _train_step(self, micro_batches: list[Any], sampler: StepShardSampler, beta: float) -> None:
        """One optimiser step over this process's micro-batches; raise on a NaN/inf loss."""
        config = self.config
        step = self.step
        levels = draw_levels(
            stream_generator(config.seed, step, _LEVEL_STREAM, torch.device("cpu")),
            len(self.model.decoder_stages()),
            self.view_config.num_locals,
        )
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(len(TERMS) + 2, device=self.device)
        for index, batch in enumerate(micro_batches):
            generator = stream_generator(
                config.seed, step, _CORRUPTION_STREAM + sampler.shard_index(index), self.device
            )
            views = self._on_device(corrupt_batch(batch, generator, self.view_config))
            last = index == len(micro_batches) - 1
            with self._gradient_sync(last), self._autocast():
                with self._activation_recipes():
                    out = self.objective(views, levels, beta)
                self.scaler.scale(out.total / len(micro_batches)).backward()
            sums[: len(TERMS)] += torch.stack([out.terms[t].detach().float() for t in TERMS])
            sums[len(TERMS)] += out.total.detach().float()
            if out.restoration is not None and self.context.is_writer and last:
                self.last_views = (views.targets1[0], views.inputs1[0], out.restoration[0])
        sums[: len(TERMS) + 1] /= len(micro_batches) * self.context.world_size
        sums[-1] = float(self.signalled)
        sums = distributed.sum_over_ranks(sums, self.context).tolist()
        self.losses = {
            "total": sums[len(TERMS)],
            **dict(zip(TERMS, sums[: len(TERMS)], strict=True)),
        }
        if not math.isfinite(self.losses["total"]):
            raise TrainingDivergedError(
                f"the loss became {self.losses['total']} at step {step + 1} "
                f"({', '.join(f'{t}={v:.4g}' for t, v in self.losses.items())}); the weights "
                f"were not updated. The last good checkpoint "
                f"{self.checkpoint_path or '(none yet)'} is kept. Lower the learning rate "
                f"(--lr), use --precision fp32, and resume from it with --resume."
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.stop_requested = sums[-1] > 0  # any process was signalled: all stop here

    def _gradient_sync(self, last_micro_batch: bool) -> Any:
        """DDP averages gradients once per step: skip it on all micro-batches but the last."""
        if last_micro_batch or not self.context.is_distributed:
            return nullcontext()
        return self.objective.no_sync()

    def _autocast(self) -> Any:
        precision = self.config.precision
        if precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[precision])

    def _activation_recipes(self) -> Any:
        if self.config.recompute_activations and not self.config.compile:
            return activations_as_recipes()
        return nullcontext()

    def _on_device(self, views: ViewBatch) -> ViewBatch:
        if not self.config.channels_last:
            return views
        memory_format = _memory_format(self.config.dim)
        return replace(
            views,
            inputs1=views.inputs1.contiguous(memory_format=memory_format),
            inputs2=views.inputs2.contiguous(memory_format=memory_format),
            locals=views.locals.contiguous(memory_format=memory_format),
        )

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM: finish the current step, save a checkpoint, leave cleanly."""
        self.signalled = True

    # --- output -------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        self.checkpointed_step = self.step
        if not self.context.is_writer:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "epoch": min(self.step // self.steps_per_epoch, self.config.epochs - 1),
            "total_steps": self.total_steps,
            "world_size": self.context.world_size,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "losses": self.losses,
            "data": self.data_description,
            "command": self.command,
            "versions": _versions(),
        }
        self.checkpoint_path = save_checkpoint(self.output, state)
        self._write_reports()

    def _write_reports(self) -> None:
        records = report.read_metrics(self.output / METRICS)
        if records:
            report.plot_loss_curves(records, TERMS, self.output / report.LOSS_CURVES)
        if self.last_views is not None:
            report.plot_restorations(
                *self.last_views, self.output / report.RESTORATIONS, title=f"step {self.step}"
            )

    def _finish(self, seconds: float) -> RunSummary:
        exported = None
        if self.context.is_writer and self.config.export and not self.stop_requested:
            from .export import export_checkpoint

            exported = export_checkpoint(self.checkpoint_path, self.output / EXPORT).weights_path
        summary = RunSummary(
            output=str(self.output),
            step=self.step,
            total_steps=self.total_steps,
            epoch=min(self.step // self.steps_per_epoch, self.config.epochs - 1),
            losses=self.losses,
            data=self.data_description,
            checkpoint=str(self.checkpoint_path) if self.checkpoint_path else None,
            export=str(exported) if exported else None,
            interrupted=self.stop_requested,
            seconds=seconds,
        )
        if self.context.is_writer:
            write_text_atomic(self.output / SUMMARY, json.dumps(asdict(summary), indent=2) + "\n")
        return summary


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _grouped(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` micro-batches (one optimiser step each)."""
    while group := [batch for _, batch in zip(range(size), batches, strict=False)]:
        yield group


def _memory_format(dim: int) -> torch.memory_format:
    return torch.channels_last_3d if dim == 3 else torch.channels_last


def _seed_everything(seed: int) -> None:
    """Seed the global generators (network initialisation, anything outside the loop)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the resumed step (they belong to work that was lost)."""
    if not path.exists():
        return
    kept = [r for r in report.read_metrics(path) if r["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def _imagenet_resnet18_encoder() -> dict[str, torch.Tensor]:
    """timm's ImageNet ResNet-18 weights (downloaded from the Hugging Face Hub, or cached)."""
    import timm

    try:
        pretrained = timm.create_model("resnet18", pretrained=True, features_only=True)
    except Exception as error:  # offline, no cache, hub errors: all mean "cannot fetch"
        raise DownloadError(
            "imagenet_init needs timm's ImageNet ResNet-18 weights from the Hugging Face Hub, "
            f"which could not be fetched ({type(error).__name__}: {error}). Connect to the "
            "network once (they are cached afterwards) or drop --imagenet-init to start "
            "from random weights."
        ) from error
    return pretrained.state_dict()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("pcrlv2_hub")
    except PackageNotFoundError:
        package = "unknown (not installed)"
    return {
        "pcrlv2_hub": package,
        "torch": str(torch.__version__),
        "python": sys.version.split()[0],
    }
