"""``fivewsi train``: pretrain FiVE on reports, fine-tune it on classes, or train a baseline.

Which slides train:

- ``reports`` (the default without ``--classes``): rows with a ``report_label``; class labels
  are ignored.
- ``classes`` (the default with ``--classes``, and always for label baselines): rows with a
  ``label``; ``shots=K`` draws K slides per class with the seed.
- Rows whose ``split`` is ``test`` are never read, neither for training nor for model
  selection. Rows without a split count as training rows.
- Validation: rows with ``split == "val"``; otherwise (not few-shot) a ``val_fraction`` of the
  training rows, stratified by class. Early stopping (``patience``) and the choice of the best
  epoch need a validation set; without one the last epoch's weights are kept.

Runs are resumable: ``RUN/checkpoints/last.ckpt`` is written atomically after every epoch and a
rerun with the same settings continues from it exactly (same weights as an uninterrupted run
on CPU). A finished run is left alone unless ``overwrite=True``; other settings are refused.
Under ``torchrun`` every process trains a share of each epoch (DDP; gloo on CPU).

Example:
    >>> from fivewsi.training.config import TrainConfig
    >>> config = TrainConfig(features="feats", cohort="cohort.csv", out="runs/r0")
    >>> result = train(config)  # doctest: +SKIP
    >>> result.stage  # doctest: +SKIP
    'reports'
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from fivewsi import __version__
from fivewsi.cohort.labels import LabelPart, parse_report_label
from fivewsi.cohort.table import (
    ClassDescription,
    CohortRow,
    check_labels,
    read_classes,
    read_cohort,
)
from fivewsi.errors import TrainStageError
from fivewsi.reports.questions import QuestionSet, load_question_set
from fivewsi.training.config import TrainConfig
from fivewsi.training.data import (
    BagCache,
    BagDataset,
    EpochSampler,
    FeatureCheck,
    SlideItem,
    check_feature_files,
    collate_bags,
    find_feature_files,
)
from fivewsi.training.run import (
    RUN_FILE,
    SPLIT_FILE,
    WEIGHTS_FILE,
    RunError,
    build_model,
    load_weights,
    read_run_info,
    save_weights,
)
from fivewsi.utils import dist
from fivewsi.utils.atomic import sweep_tmp_files, tmp_path_for, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METRICS = "metrics.csv"
EARLIER_METRICS = "metrics-before-resume.csv"
LAST_CKPT = "last.ckpt"
BEST_WEIGHTS = "best.safetensors"


class TrainError(TrainStageError):
    """Training cannot start as asked (no usable slides, mismatched run, bad --init)."""


@dataclass
class TrainResult:
    """What a training run did.

    Attributes:
        run: the run folder.
        stage: ``"reports"`` or ``"classes"``.
        n_train / n_val: slides trained / validated on.
        epochs: epochs completed.
        best_metric: best validation loss (None without validation).
        monitor: the metric behind ``best_metric``.
        seconds: wall time of this call.
        skipped: True when the run had already finished and nothing was trained.
        n_skipped_slides: slides left out for missing or broken feature files.
    """

    run: Path
    stage: str
    n_train: int
    n_val: int
    epochs: int
    best_metric: float | None
    monitor: str | None
    seconds: float
    skipped: bool = False
    n_skipped_slides: int = 0


@dataclass
class _Plan:
    stage: str
    kind: str
    questions: QuestionSet
    classes: list[ClassDescription]
    train: list[SlideItem]
    val: list[SlideItem]
    val_source: str
    labels: list[list[LabelPart]] = field(default_factory=list)
    check: FeatureCheck = field(default_factory=FeatureCheck)


# --- entry point -----------------------------------------------------------------------------


def train(config: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train as ``config`` says and write the run folder ``config.out``.

    ``callbacks`` are extra Lightning callbacks (e.g. to watch or interrupt training).

    Raises:
        TrainError: nothing to train on, a run folder with other settings, a bad ``init`` run.
    """
    started = time.perf_counter()
    out = config.out
    rank = dist.process_rank()
    grouped = _init_group(config, rank)
    try:
        state = _run_state(out, config)
        dist.barrier()  # every rank has read the folder before the leader changes it
        if state == "finished":
            info = read_run_info(out)
            log.info("%s already finished; pass overwrite to train it again", out)
            return _result_from_info(out, info, time.perf_counter() - started, skipped=True)
        if state == "overwrite" and rank.is_leader:
            _clear_run(out)
        dist.barrier()
        return _train(config, rank, started, resume=state == "resume", callbacks=callbacks)
    finally:
        if grouped:
            dist.destroy_process_group()


def _init_group(config: TrainConfig, rank: dist.ProcessRank) -> bool:
    """Join the launcher's process group early so every rank sees the run folder alike."""
    if rank.world_size == 1 or "MASTER_ADDR" not in os.environ:
        return False
    import torch.distributed as tdist

    if tdist.is_initialized():
        return False
    cuda = config.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(rank.local_rank % torch.cuda.device_count())
    tdist.init_process_group(
        "nccl" if cuda else "gloo",
        rank=rank.rank,
        world_size=rank.world_size,
        timeout=datetime.timedelta(hours=2),
    )
    return True


def _run_state(out: Path, config: TrainConfig) -> str:
    """``new``, ``resume``, ``finished`` or ``overwrite``; refuses a run with other settings."""
    if not (out / RUN_FILE).exists():
        return "new"
    if config.overwrite:
        return "overwrite"
    info = read_run_info(out)
    diff = _config_diff(info.get("config") or {}, config)
    if diff:
        details = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise TrainError(
            f"{out} holds a run with other settings ({details}); use another --out folder, the "
            "run's settings, or --overwrite to start it again"
        )
    if info.get("status") == "finished" and (out / WEIGHTS_FILE).exists():
        return "finished"
    return "resume" if (out / CHECKPOINTS / LAST_CKPT).exists() else "new"


def _config_diff(stored: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    wanted = config.result_settings()
    return {
        key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value
    }


def _clear_run(out: Path) -> None:
    for name in (RUN_FILE, WEIGHTS_FILE, SPLIT_FILE):
        (out / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS, "logs"):
        shutil.rmtree(out / name, ignore_errors=True)


# --- what to train on ------------------------------------------------------------------------


def _plan(config: TrainConfig) -> _Plan:
    from fivewsi.model.registry import get_model_spec

    spec = get_model_spec(config.model)
    questions = load_question_set(config.questions)
    if config.objective == "auto":
        stage = "classes" if config.classes is not None or spec.kind == "label" else "reports"
    else:
        stage = config.objective
    if stage == "reports" and spec.kind != "text":
        raise TrainError(f"{config.model} is a label model: it cannot learn from reports")
    if spec.kind == "text" and stage == "classes" and config.classes is None:
        raise TrainError(f"{config.model} needs --classes (class descriptions) to train on labels")
    rows = read_cohort(config.cohort)
    usable = [r for r in rows if r.split != "test"]  # test rows are never looked at
    n_test = len(rows) - len(usable)
    labels: list[list[LabelPart]] = []
    classes: list[ClassDescription] = []
    if stage == "reports":
        pool, report_index, labels = _report_rows(usable, questions)
    else:
        classes = _classes(config, usable)
        pool = [r for r in usable if r.label is not None]
        check_labels(pool, classes)
        report_index = {}
    files = find_feature_files(config.features)
    check = check_feature_files([r.slide_id for r in pool], files)
    pool = [r for r in pool if r.slide_id in check.ok]
    target_of = {c.name: i for i, c in enumerate(classes)}

    def item(row: CohortRow) -> SlideItem:
        path, n = check.ok[row.slide_id]
        target = target_of.get(row.label) if stage == "classes" and row.label else None
        return SlideItem(row.slide_id, path, target, report_index.get(row.slide_id), n)

    train_rows = [r for r in pool if r.split in (None, "train")]
    val_rows = [r for r in pool if r.split == "val"]
    if config.shots is not None:
        train_rows = _draw_shots(train_rows, classes, config.shots, config.seed)
    val_source = "split" if val_rows else "none"
    if not val_rows and config.shots is None and config.val_fraction > 0:
        train_rows, val_rows = _hold_out(train_rows, config.val_fraction, config.seed, stage)
        val_source = "fraction" if val_rows else "none"
    if not train_rows:
        raise TrainError(
            f"no training slides: {len(rows)} cohort rows, {n_test} test rows (never used), "
            f"{len(check.missing)} without feature files, {len(check.broken)} broken; "
            f"stage {stage!r} needs rows with a {'report_label' if stage == 'reports' else 'label'}"
        )
    log.info(
        "%s stage: %d training and %d validation slides (%d test rows left out, %d skipped "
        "for missing or broken features)",
        stage, len(train_rows), len(val_rows), n_test, len(check.missing) + len(check.broken),
    )
    return _Plan(
        stage, spec.kind, questions, classes, [item(r) for r in train_rows],
        [item(r) for r in val_rows], val_source, labels, check,
    )


def _report_rows(
    rows: list[CohortRow], questions: QuestionSet
) -> tuple[list[CohortRow], dict[str, int], list[list[LabelPart]]]:
    """Rows with a usable report label, each slide's index into the distinct parsed labels."""
    distinct: dict[str, int] = {}
    labels: list[list[LabelPart]] = []
    index: dict[str, int] = {}
    pool, empty = [], 0
    for row in rows:
        if not row.report_label:
            continue
        if row.report_label not in distinct:
            distinct[row.report_label] = len(labels)
            labels.append(parse_report_label(row.report_label, questions))
        parts = labels[distinct[row.report_label]]
        if not any(not p.unknown and p.text.strip() for p in parts):
            empty += 1  # an all-Unknown label teaches nothing
            continue
        index[row.slide_id] = distinct[row.report_label]
        pool.append(row)
    if empty:
        log.warning("%d slides have report labels with no known part and are skipped", empty)
    return pool, index, labels


def _classes(config: TrainConfig, rows: list[CohortRow]) -> list[ClassDescription]:
    if config.classes is not None:
        return read_classes(config.classes)
    names = sorted({r.label for r in rows if r.label is not None})
    if len(names) < 2:
        raise TrainError(f"need at least two classes among the labels of {config.cohort}")
    return [ClassDescription(name, name) for name in names]


def _draw_shots(
    rows: list[CohortRow], classes: list[ClassDescription], shots: int, seed: int
) -> list[CohortRow]:
    rng = np.random.default_rng(seed)
    chosen: list[CohortRow] = []
    for klass in classes:
        members = sorted((r for r in rows if r.label == klass.name), key=lambda r: r.slide_id)
        if len(members) < shots:
            log.warning(
                "class %r has %d training slides, fewer than %d shots: using all",
                klass.name, len(members), shots,
            )
        picks = rng.permutation(len(members))[:shots]
        chosen.extend(members[int(i)] for i in sorted(picks))
    return chosen


def _hold_out(
    rows: list[CohortRow], fraction: float, seed: int, stage: str
) -> tuple[list[CohortRow], list[CohortRow]]:
    """Split off ``fraction`` of the rows for validation, per class (stratified) for classes."""
    rng = np.random.default_rng([seed, 17])
    groups: dict[str, list[CohortRow]] = {}
    for row in sorted(rows, key=lambda r: r.slide_id):
        key = (row.label or "") if stage == "classes" else ""
        groups.setdefault(key, []).append(row)
    val_ids: set[str] = set()
    for members in groups.values():
        n_val = min(round(len(members) * fraction), len(members) - 1)
        for i in rng.permutation(len(members))[: max(0, n_val)]:
            val_ids.add(members[int(i)].slide_id)
    kept = [r for r in rows if r.slide_id not in val_ids]
    return kept, [r for r in rows if r.slide_id in val_ids]


# --- the model -------------------------------------------------------------------------------


def _model_info(config: TrainConfig, plan: _Plan, in_dim: int) -> dict[str, Any]:
    options: dict[str, Any] = {"dim": config.dim}
    if config.dropout is not None:
        options["dropout"] = config.dropout
    info: dict[str, Any] = {"name": config.model, "kind": plan.kind, "in_dim": in_dim}
    if plan.kind == "text":
        options.update(
            n_learnable_prompts=config.n_learnable_prompts,
            attention=config.attention,
            heads=config.heads,
            logit_scale=config.logit_scale,
        )
        info["questions"] = [q.question for q in plan.questions.questions]
        info["question_keys"] = list(plan.questions.keys)
        info["text_encoder"] = {
            "name": config.text_encoder,
            "lora": config.lora,
            "lora_r": config.lora_r,
            "lora_alpha": config.lora_alpha,
            "lora_dropout": config.lora_dropout,
        }
    else:
        info["n_classes"] = len(plan.classes)
    options.update(config.model_options)
    info["options"] = options
    return info


def _check_init(init: Path, info: dict[str, Any], plan: _Plan) -> None:
    """RUN0 must be a FiVE run with the same input size, text encoder, questions and options."""
    if not (init / WEIGHTS_FILE).is_file():
        raise TrainError(f"--init {init}: no {WEIGHTS_FILE} (has that run finished?)")
    try:
        first = read_run_info(init)
    except RunError as exc:
        raise TrainError(f"--init: {exc}") from None
    old = first.get("model") or {}
    problems = []
    if info["kind"] != "text" or old.get("kind") != "text":
        problems.append("--init needs two text (FiVE) models")
    for key, what in (("name", "model"), ("in_dim", "feature size"), ("questions", "questions"),
                      ("text_encoder", "text encoder"), ("options", "model options")):
        if old.get(key) != info.get(key):
            problems.append(f"{what}: {init} has {old.get(key)!r}, this run {info.get(key)!r}")
    old_set = (first.get("question_set") or {}).get("fingerprint")
    if old_set and old_set != plan.questions.fingerprint():
        problems.append(f"question set: {init} used another version ({old_set})")
    if problems:
        raise TrainError(f"cannot start from {init}: " + "; ".join(problems))


# --- training --------------------------------------------------------------------------------


def _train(
    config: TrainConfig,
    rank: dist.ProcessRank,
    started: float,
    *,
    resume: bool,
    callbacks: Sequence[Any],
) -> TrainResult:
    import lightning as L

    from fivewsi.training.module import TrainingModule

    out = config.out
    plan = _plan(config)
    in_dim = int(plan.check.dim or 0)
    model_info = _model_info(config, plan, in_dim)
    if config.init is not None:
        _check_init(config.init, model_info, plan)
    info = _run_info(config, plan, model_info)
    if rank.is_leader:
        out.mkdir(parents=True, exist_ok=True)
        sweep_tmp_files(out)
        sweep_tmp_files(out / CHECKPOINTS)
        write_json_atomic(out / RUN_FILE, info)
        _write_split(out / SPLIT_FILE, plan)
    dist.barrier()

    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_model(info)
    if config.init is not None and not resume:
        load_weights(model, config.init / WEIGHTS_FILE)
        log.info("starting from the weights of %s", config.init)
    cache = BagCache(int(config.cache_gb * (1 << 30)))
    train_ds = BagDataset(
        plan.train, train=True, sample_ratio=config.sample_ratio,
        max_patches=config.max_patches, seed=config.seed, cache=cache,
    )
    loaders = {"train_dataloaders": _loader(train_ds, config, rank, shuffle=True)}
    if plan.val:
        val_ds = BagDataset(plan.val, train=False, cache=cache)
        loaders["val_dataloaders"] = _loader(val_ds, config, rank, shuffle=False)
    epochs = _epochs(config, len(loaders["train_dataloaders"]))
    module = TrainingModule(
        model,
        kind=plan.kind,
        stage=plan.stage,
        hparams=config.stored(),
        lr=config.lr,
        text_lr_ratio=config.text_lr_ratio,
        weight_decay=config.weight_decay,
        warmup_epochs=config.warmup_epochs,
        epochs=epochs,
        seed=config.seed,
        negatives=config.negatives,
        max_drop_fraction=config.max_drop_fraction,
        labels=plan.labels,
        train_report_index=[i.report_index for i in plan.train if i.report_index is not None],
        val_report_index=[i.report_index for i in plan.val if i.report_index is not None],
        class_texts=[c.description for c in plan.classes],
        question_keys=list(plan.questions.keys),
    )
    monitor = "val/loss" if plan.val else None
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
        earlier = out / "logs" / EARLIER_METRICS
        if ckpt is not None:
            log.info("resuming %s from %s", out, ckpt)
            if rank.is_leader and (out / "logs" / METRICS).is_file():
                # Lightning's CSV logger starts metrics.csv afresh: keep the earlier epochs aside.
                os.replace(out / "logs" / METRICS, earlier)
        trainer.fit(module, **loaders, ckpt_path=ckpt, weights_only=True)
    if rank.is_leader and earlier.is_file():
        _merge_metrics(earlier, out / "logs" / METRICS)

    epochs = int(trainer.current_epoch)
    best = checkpoint.best_score
    if rank.is_leader:
        best_file = out / CHECKPOINTS / BEST_WEIGHTS
        if monitor and best_file.is_file():
            load_weights(model, best_file)  # model selection on validation, never on test
        save_weights(model, out / WEIGHTS_FILE)
        info.update(
            status="finished",
            finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            result={
                "epochs": epochs,
                "monitor": monitor,
                "best_metric": best,
                "best_epoch": checkpoint.best_epoch,
                "seconds": round(time.perf_counter() - started, 3),
                "resumed": resume,
            },
        )
        write_json_atomic(out / RUN_FILE, info)
    dist.barrier()
    result = TrainResult(
        out, plan.stage, len(plan.train), len(plan.val), epochs, best, monitor,
        time.perf_counter() - started,
        n_skipped_slides=len(plan.check.missing) + len(plan.check.broken),
    )
    _log_summary(result, config)
    return result


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


# --- checkpoints -----------------------------------------------------------------------------


class RunCheckpoint(Callback):
    """After every epoch: ``last.ckpt`` written atomically, best-on-validation weights kept.

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
        self.folder.mkdir(parents=True, exist_ok=True)
        last = self.folder / LAST_CKPT
        tmp = tmp_path_for(last)
        trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, last)
        trainer.strategy.barrier("last-checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_epoch = state_dict.get("best_epoch")


# --- run records -----------------------------------------------------------------------------


def _run_info(config: TrainConfig, plan: _Plan, model_info: dict[str, Any]) -> dict[str, Any]:
    import lightning

    attrs = plan.check.attrs
    feature_keys = ("encoder", "encoder_dim", "encoder_weights", "encoder_input_size",
                    "target_mpp", "patch_size", "patch_size_level0", "target_magnification")
    return {
        "status": "running",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fivewsi_version": __version__,
        "stage": plan.stage,
        "config": config.stored(),
        "model": model_info,
        "in_dim": model_info["in_dim"],
        "prompt_names": _prompt_names(model_info),
        "classes": [{"name": c.name, "description": c.description} for c in plan.classes] or None,
        "question_set": {
            "name": plan.questions.name,
            "version": plan.questions.version,
            "fingerprint": plan.questions.fingerprint(),
            "keys": list(plan.questions.keys),
            # the whole set, so predict can score every category without the original YAML
            "definition": plan.questions.model_dump(mode="json"),
        },
        "feature_encoder": {k: _plain(attrs[k]) for k in feature_keys if k in attrs},
        "preprocess": _preprocess_settings(config.features),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "fivewsi": __version__,
        },
        "seed": config.seed,
        "shots": config.shots,
        "init": str(config.init) if config.init else None,
        "split": {
            "file": SPLIT_FILE,
            "n_train": len(plan.train),
            "n_val": len(plan.val),
            "validation": plan.val_source,
        },
        "skipped_slides": {"missing": plan.check.missing, "broken": plan.check.broken},
    }


def _prompt_names(model_info: dict[str, Any]) -> list[str]:
    if model_info["kind"] != "text":
        return []
    n = int(model_info["options"].get("n_learnable_prompts", 16))
    return list(model_info["questions"]) + [f"learnable-{i + 1}" for i in range(n)]


def _epochs(config: TrainConfig, batches_per_epoch: int) -> int:
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


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _preprocess_settings(features: Path) -> dict[str, Any] | None:
    import json

    for folder in (features, features.parent):
        path = folder / "preprocess.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                return None
    return None


def _write_split(path: Path, plan: _Plan) -> None:
    names = {i: c.name for i, c in enumerate(plan.classes)}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "role", "label"])
    for role, items in (("train", plan.train), ("val", plan.val)):
        for item in items:
            writer.writerow([item.slide_id, role, names.get(item.target, "")])
    write_text_atomic(path, buffer.getvalue())


def _result_from_info(
    out: Path, info: dict[str, Any], seconds: float, *, skipped: bool
) -> TrainResult:
    result = info.get("result") or {}
    split = info.get("split") or {}
    skipped_slides = info.get("skipped_slides") or {}
    return TrainResult(
        out,
        str(info.get("stage")),
        int(split.get("n_train", 0)),
        int(split.get("n_val", 0)),
        int(result.get("epochs", 0)),
        result.get("best_metric"),
        result.get("monitor"),
        seconds,
        skipped=skipped,
        n_skipped_slides=len(skipped_slides.get("missing", []))
        + len(skipped_slides.get("broken", {})),
    )


def _log_summary(result: TrainResult, config: TrainConfig) -> None:
    best = "" if result.best_metric is None else f", best {result.monitor} {result.best_metric:.4f}"
    log.info(
        "trained %s (%s stage) on %d slides, %d validation: %d epochs%s, %.1f s → %s",
        config.model, result.stage, result.n_train, result.n_val, result.epochs, best,
        result.seconds, result.run,
    )
