"""The Lightning side of training: data loaders, the Trainer, checkpoints and metrics files.

:func:`fit` trains a :class:`~fivewsi.training.module.TrainingModule` on a plan's slides into a
run folder: ``checkpoints/last.ckpt`` written atomically after every epoch (exact resumption),
the best-on-validation weights kept aside, metrics in ``logs/`` (CSV, and TensorBoard when
installed), DDP under ``torchrun``.

Example:
    >>> epochs_for(TrainConfig(features="f", cohort="c.csv", out="r", epochs=30), 1)
    200
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from fivewsi.runs.record import CHECKPOINTS, LOGS
from fivewsi.runs.weights import save_weights
from fivewsi.training.config import TrainConfig, TrainError
from fivewsi.training.data import BagCache, BagDataset, EpochSampler, collate_bags
from fivewsi.training.folder import LAST_CKPT
from fivewsi.training.plan import Plan
from fivewsi.utils import dist
from fivewsi.utils.atomic import tmp_path_for, write_text_atomic

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
EARLIER_METRICS = "metrics-before-resume.csv"
BEST_WEIGHTS = "best.safetensors"


@dataclass
class FitResult:
    """What :func:`fit` did: epochs run, the monitored metric and its best value and epoch."""

    epochs: int
    monitor: str | None
    best_metric: float | None
    best_epoch: int | None
    best_weights: Path | None


def fit(
    module: Any,
    loaders: dict[str, torch.utils.data.DataLoader],
    config: TrainConfig,
    rank: dist.ProcessRank,
    *,
    epochs: int,
    resume: bool,
    callbacks: Sequence[Any] = (),
) -> FitResult:
    """Train ``module`` for ``epochs`` on ``loaders`` (:func:`make_loaders`) into
    ``config.out``, resuming from its last checkpoint when ``resume``."""
    import lightning as L

    out = config.out
    monitor = "val/loss" if "val_dataloaders" in loaders else None
    checkpoint = RunCheckpoint(out / CHECKPOINTS, monitor)
    all_callbacks: list[Any] = [checkpoint]
    if monitor and config.patience:
        from lightning.pytorch.callbacks import EarlyStopping

        all_callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=config.patience))
    all_callbacks.extend(callbacks)
    # Lightning's banners come from the Trainer's construction as well as from fit.
    with _quiet_lightning():
        trainer = L.Trainer(
            **_hardware(config, rank),
            max_epochs=epochs,
            accumulate_grad_batches=config.accumulate,
            callbacks=all_callbacks,
            logger=_loggers(out),
            enable_checkpointing=False,
            enable_progress_bar=config.progress and rank.is_leader,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            log_every_n_steps=max(1, min(50, len(loaders["train_dataloaders"]))),
            default_root_dir=out,
        )
        ckpt = out / CHECKPOINTS / LAST_CKPT if resume else None
        earlier = out / LOGS / EARLIER_METRICS
        if ckpt is not None:
            log.info("resuming %s from %s", out, ckpt)
            if rank.is_leader and (out / LOGS / METRICS).is_file():
                # Lightning's CSV logger starts metrics.csv afresh: keep the earlier epochs aside.
                os.replace(out / LOGS / METRICS, earlier)
        # Once a few-shot loss nears zero its gradients turn denormal, and CPU matrix products
        # on denormals run ~10-50x slower (five-official: 0.3 s -> 15 s a step). Flushing them
        # to zero changes nothing above 1e-38; the process setting is restored afterwards.
        flushed = torch.set_flush_denormal(True)
        try:
            trainer.fit(module, **loaders, ckpt_path=ckpt, weights_only=True)
        finally:
            if flushed:
                torch.set_flush_denormal(False)
    if rank.is_leader and earlier.is_file():
        _merge_metrics(earlier, out / LOGS / METRICS)
    best = out / CHECKPOINTS / BEST_WEIGHTS
    return FitResult(
        int(trainer.current_epoch), monitor, checkpoint.best_score, checkpoint.best_epoch,
        best if monitor and best.is_file() else None,
    )


def make_loaders(
    plan: Plan, config: TrainConfig, rank: dist.ProcessRank
) -> dict[str, torch.utils.data.DataLoader]:
    """The training loader (patch samples) and, with validation slides, the validation one."""
    cache = BagCache(int(config.cache_gb * (1 << 30)))
    train_ds = BagDataset(
        plan.train, train=True, sample_ratio=config.sample_ratio,
        max_patches=config.max_patches, seed=config.seed, cache=cache,
    )
    loaders = {"train_dataloaders": _loader(train_ds, config, rank, shuffle=True)}
    if plan.val:
        val_ds = BagDataset(plan.val, train=False, cache=cache)
        loaders["val_dataloaders"] = _loader(val_ds, config, rank, shuffle=False)
    return loaders


def epochs_for(config: TrainConfig, batches_per_epoch: int) -> int:
    """``config.epochs``, raised so that training makes at least ``config.min_steps`` steps.

    A few-shot set of 2 × 4 slides is one batch: 30 epochs would be 30 optimizer steps, too few
    for any model (FiVE or baseline) to fit, and too few to compare models fairly.
    """
    steps_per_epoch = max(1, batches_per_epoch // config.accumulate)
    needed = -(-config.min_steps // steps_per_epoch)
    if needed > config.epochs:
        log.info(
            "%d step(s) per epoch: training %d epochs instead of %d to make %d steps",
            steps_per_epoch, needed, config.epochs, config.min_steps,
        )
    return max(config.epochs, needed)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's banners and known-harmless warnings only show with -vv (debug)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    if not log.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for pattern in _HARMLESS_WARNINGS:
                warnings.filterwarnings("ignore", pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


#: Warnings that do not apply here: bags are cached in memory (few workers are fine), the
#: frozen text encoder is in eval mode on purpose, the logs folder is reused on resumption.
_HARMLESS_WARNINGS = (
    ".*does not have many workers.*",
    ".*module\\(s\\) in eval mode.*",
    ".*Experiment logs directory.*",
    ".*treespec.*",
    ".*no `val_dataloader`.*",
)


def _merge_metrics(earlier: Path, current: Path) -> None:
    """Earlier epochs' rows (before the resumed epoch) followed by the new rows, one header."""
    def rows(path: Path) -> list[dict[str, str]]:
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    new = rows(current)
    first = min((int(r["epoch"]) for r in new if r.get("epoch", "").isdigit()), default=None)
    old = [r for r in rows(earlier) if first is None or not r.get("epoch", "").isdigit()
           or int(r["epoch"]) < first]
    columns = list(dict.fromkeys(k for r in old + new for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(old + new)
    write_text_atomic(current, buffer.getvalue())
    earlier.unlink()


def _loader(
    dataset: BagDataset, config: TrainConfig, rank: dist.ProcessRank, *, shuffle: bool
) -> torch.utils.data.DataLoader:
    sampler = EpochSampler(
        dataset, shuffle=shuffle, seed=config.seed, num_replicas=rank.world_size, rank=rank.rank
    )
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=collate_bags,
        num_workers=config.workers,
        persistent_workers=False,
    )


def _hardware(config: TrainConfig, rank: dist.ProcessRank) -> dict[str, Any]:
    """Accelerator, devices, strategy, precision and determinism for ``config.device``."""
    device = config.device
    cuda = device != "cpu" and torch.cuda.is_available() and not device.startswith("mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available")
    options: dict[str, Any] = {"accelerator": "gpu" if cuda else "cpu"}
    if rank.world_size > 1:
        from lightning.pytorch.strategies import DDPStrategy

        local = int(os.environ.get("LOCAL_WORLD_SIZE", rank.world_size))
        options.update(
            devices=local,
            num_nodes=max(1, rank.world_size // local),
            strategy=DDPStrategy(
                process_group_backend="nccl" if cuda else "gloo", find_unused_parameters=True
            ),
        )
    elif cuda and ":" in device:
        options["devices"] = [int(device.split(":", 1)[1])]
    else:
        options["devices"] = 1
    precision = config.precision
    if precision == "auto":
        precision = (
            ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if cuda else "32-true"
        )
    options["precision"] = precision
    # Bit-for-bit reruns on CPU; on GPU determinism would cost speed (and needs cuBLAS setup).
    options["deterministic"] = not cuda
    return options


#: Resume checkpoints per run at most: a resumed run redoes at most 1/20 of its epochs.
MAX_RESUME_CHECKPOINTS = 20


def _loggers(out: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=out, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return loggers
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers.append(TensorBoardLogger(save_dir=out, name="logs", version="tensorboard"))
    return loggers


def checkpoint_every(epochs: int, most: int = MAX_RESUME_CHECKPOINTS) -> int:
    """Epochs between resume checkpoints: every epoch, but at most ``most`` in a run (the last
    epoch always writes one). The same on every rank (no clocks), so DDP saves together.

    Example:
        >>> checkpoint_every(20), checkpoint_every(30), checkpoint_every(100), checkpoint_every(0)
        (1, 2, 5, 1)
    """
    return max(1, -(-epochs // most))


class RunCheckpoint(Callback):
    """After every epoch (at most :data:`MAX_RESUME_CHECKPOINTS` per run, the last epoch
    always): ``last.ckpt`` written atomically; best-on-validation weights kept after every one.

    Lightning's own ModelCheckpoint writes in place, so a run killed while writing would leave a
    torn checkpoint; here the checkpoint is written beside the target and renamed.
    """

    def __init__(self, folder: Path, monitor: str | None) -> None:
        self.folder = Path(folder)
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_epoch: int | None = None

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor and self.monitor in trainer.callback_metrics:
            score = float(trainer.callback_metrics[self.monitor])
            if self.best_score is None or score < self.best_score:
                self.best_score, self.best_epoch = score, int(trainer.current_epoch)
                if trainer.is_global_zero:
                    save_weights(pl_module.model, self.folder / BEST_WEIGHTS)
        epoch, epochs = int(trainer.current_epoch) + 1, int(trainer.max_epochs or 0)
        if epoch % checkpoint_every(epochs) and epoch < epochs:
            return  # few-shot runs are 100 one-step epochs: a checkpoint each would dominate
        self._save_last(trainer)

    def _save_last(self, trainer: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        last = self.folder / LAST_CKPT
        tmp = tmp_path_for(last)
        try:
            trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
            if trainer.is_global_zero:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.replace(tmp, last)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a torn checkpoint is never left behind (disk full)
            raise
        trainer.strategy.barrier("last-checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")
