"""``fivewsi train``: pretrain FiVE on reports, fine-tune it on classes, or train a baseline.

Three jobs, three modules: :mod:`~fivewsi.training.folder` (the run folder: new, resumed,
finished, refused; its record), :mod:`~fivewsi.training.plan` (cohort → training and validation
slides) and :mod:`~fivewsi.training.fit` (Lightning: loaders, Trainer, checkpoints). This module
runs them in order and saves the finished run: ``model.safetensors``, ``texts.safetensors``
(text-aligned models) and the finished ``run.json``; a fine-tuned run's ``run.json`` carries the
temperature fitted on its held-in slides (:func:`calibrate`).

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

import datetime
import errno
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fivewsi.model.interfaces import TextAlignedModel
from fivewsi.model.registry import get_model_spec
from fivewsi.runs.calibration import MIN_TEMPERATURE
from fivewsi.runs.classifier import build_model, own_texts
from fivewsi.runs.record import (
    CHECKPOINTS,
    SPLIT_FILE,
    TEXTS_FILE,
    WEIGHTS_FILE,
    CalibrationRecord,
    RunRecord,
    read_record,
    write_record,
)
from fivewsi.runs.weights import load_weights, save_text_features, save_weights
from fivewsi.training import recipes
from fivewsi.training.config import TrainConfig, TrainError
from fivewsi.training.fit import epochs_for, fit, make_loaders
from fivewsi.training.folder import (
    check_init,
    clear_run,
    finish_record,
    model_record,
    new_record,
    run_state,
)
from fivewsi.training.plan import Plan, make_plan, write_split
from fivewsi.utils import dist
from fivewsi.utils.atomic import sweep_tmp_files
from fivewsi.utils.outputs import check_output_folder

log = logging.getLogger(__name__)

__all__ = ["TrainError", "TrainResult", "train"]


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


def train(config: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train as ``config`` says and write the run folder ``config.out``.

    ``callbacks`` are extra Lightning callbacks (e.g. to watch or interrupt training).

    Raises:
        TrainError: nothing to train on, a run folder with other settings, a bad ``init`` run.
        OutputError: ``config.out`` is a file or cannot be written (checked before training).
    """
    started = time.perf_counter()
    out = config.out
    rank = dist.process_rank()
    grouped = _init_group(config, rank)
    try:
        state = run_state(out, config)
        dist.barrier()  # every rank has read the folder before the leader changes it
        if state == "finished":
            log.info("%s already finished; pass overwrite to train it again", out)
            return _result_from_record(
                out, read_record(out), time.perf_counter() - started, skipped=True
            )
        check_output_folder(out)  # writable, not a file: before any work
        if state == "overwrite" and rank.is_leader:
            clear_run(out)
        dist.barrier()
        try:
            return _train(config, rank, started, resume=state == "resume", callbacks=callbacks)
        except Exception as exc:
            if not _disk_full(exc):
                raise
            raise TrainError(
                f"no space left on the device of {out} (or it became read-only) while training: "
                "the run is left unfinished; free some space and run the same command again to "
                "resume"
            ) from None
    finally:
        if grouped:
            dist.destroy_process_group()


#: errno values of a file system that cannot take the run's files any more.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a full, over-quota or read-only file system.

    torch and safetensors report a full disk as their own errors, with the OS's words inside.

    Example:
        >>> _disk_full(OSError(errno.ENOSPC, "No space left on device"))
        True
        >>> _disk_full(RuntimeError("shape mismatch"))
        False
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRNOS:
            return True
        text = str(current)
        if "No space left on device" in text or "os error 28" in text or "Disk quota" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


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
    spec = get_model_spec(config.model)
    plan = make_plan(config, objectives=spec.objectives, text_aligned=spec.text_aligned)
    in_dim = int(plan.check.dim or 0)
    L.seed_everything(config.seed, workers=True, verbose=False)
    model_info = model_record(config, plan, in_dim, [])
    model = build_model(model_info)
    model_info.prompt_names = list(model.prompt_names)
    if config.init is not None:
        check_init(config.init, model_info, plan)
    record = new_record(config, plan, model_info)
    if rank.is_leader:
        out.mkdir(parents=True, exist_ok=True)
        sweep_tmp_files(out)
        sweep_tmp_files(out / CHECKPOINTS)
        write_record(out, record)
        write_split(out / SPLIT_FILE, plan)
    dist.barrier()

    recipe = recipes.resolve_recipe(
        config.recipe, text_aligned=spec.text_aligned, init=config.init is not None,
        stage=plan.stage,
    )
    if recipe.name != "full":
        log.info("few-shot recipe: %s", recipe.name)
    if config.init is not None and not resume:
        load_weights(model, config.init / WEIGHTS_FILE)
        log.info("starting from the weights of %s", config.init)
    if recipe.name == "tip-adapter":
        if rank.is_leader:
            _finish_tip_adapter(model, plan, record, recipe, out, started)
        dist.barrier()
        return _result_from_record(out, read_record(out), time.perf_counter() - started,
                                   skipped=False)
    start_state: dict[str, torch.Tensor] | None = None
    if recipe.name == "partial":
        if resume:  # the starting weights are the --init run's, not the checkpoint's
            start_model = build_model(model_info)
            load_weights(start_model, config.init / WEIGHTS_FILE)  # type: ignore[operator]
        else:
            start_model = model
        start_state = recipes.partial_start(model, start_model)
        config = recipes.partial_config(config, recipe, plan)
    loaders = make_loaders(plan, config, rank)
    epochs = epochs_for(config, len(loaders["train_dataloaders"]))
    module = TrainingModule(
        model,
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
        anchor=start_state,
        l2sp=recipe.l2sp if start_state is not None else 0.0,
    )
    fitted = fit(module, loaders, config, rank, epochs=epochs, resume=resume,
                 callbacks=callbacks)
    if rank.is_leader:
        if fitted.best_weights is not None:
            load_weights(model, fitted.best_weights)  # model selection on validation, never test
        if start_state is not None and recipe.wise_ft < 1.0:
            recipes.interpolate(model, start_state, recipe.wise_ft)
        save_weights(model, out / WEIGHTS_FILE)
        texts = _save_texts(model, record, out)
        if plan.stage == "classes":
            record = record.model_copy(update={"calibration": calibrate(model, plan, record)})
        result = {
            "epochs": fitted.epochs,
            "monitor": fitted.monitor,
            "best_metric": fitted.best_metric,
            "best_epoch": fitted.best_epoch,
            "seconds": round(time.perf_counter() - started, 3),
            "resumed": resume,
            "recipe": recipe.name,
        }
        write_record(out, finish_record(record, result, texts))
    dist.barrier()
    summary = TrainResult(
        out, plan.stage, len(plan.train), len(plan.val), fitted.epochs, fitted.best_metric,
        fitted.monitor, time.perf_counter() - started,
        n_skipped_slides=len(plan.check.missing) + len(plan.check.broken),
    )
    _log_summary(summary, config)
    return summary


def _finish_tip_adapter(
    model: Any, plan: Plan, record: RunRecord, recipe: recipes.Recipe, out: Path, started: float
) -> None:
    """The ``tip-adapter`` recipe: no training; the starting weights, and the cache of the
    training slides' embeddings from the frozen model (``adapter.safetensors``)."""
    from fivewsi.runs.adapter import ADAPTER_FILE, TipAdapter, save_adapter
    from fivewsi.runs.classifier import SlideClassifier
    from fivewsi.runs.loop import predict_files

    model.eval()
    classifier = SlideClassifier(
        model, classes=[c.name for c in plan.classes],
        descriptions=[c.description for c in plan.classes], record=record,
    )
    targets = {i.slide_id: i.target for i in plan.train}
    keys, labels = [], []
    for result in predict_files(classifier, [(i.slide_id, i.path) for i in plan.train]):
        target = targets[result.slide_id]
        if result.prediction is None or target is None:
            continue
        keys.append(torch.from_numpy(result.prediction.embedding))
        labels.append(int(target))
    if not keys:
        raise TrainError("tip-adapter: no training slide could be read for the cache")
    values = torch.nn.functional.one_hot(torch.tensor(labels), len(plan.classes)).float()
    adapter = TipAdapter(torch.nn.functional.normalize(torch.stack(keys).float(), dim=1), values,
                         alpha=recipe.alpha, beta=recipe.beta, reduce=recipe.reduce)
    save_weights(model, out / WEIGHTS_FILE)
    save_adapter(adapter, out / ADAPTER_FILE)
    texts = _save_texts(model, record, out)
    record = record.model_copy(update={
        "adapter_file": ADAPTER_FILE,
        # the shots are the cache: their scores say nothing about calibration (T = 1)
        "calibration": CalibrationRecord(temperature=1.0, fitted_on="none", n_slides=0),
    })
    result = {"epochs": 0, "monitor": None, "best_metric": None, "best_epoch": None,
              "seconds": round(time.perf_counter() - started, 3), "resumed": False,
              "recipe": recipe.name, "cache_slides": len(keys)}
    write_record(out, finish_record(record, result, texts))
    log.info("tip-adapter: cache of %d shot(s) written to %s (no training)", len(keys), out)


def calibrate(model: Any, plan: Plan, record: RunRecord) -> CalibrationRecord:
    """Fit the temperature of a fine-tuned model's class scores on held-in slides.

    The validation slides when the run has any; else the training slides, with T kept ≥ 1
    (fitted scores are over-confident if anything). T = 1 (``fitted_on="none"``) with fewer
    than :data:`~fivewsi.runs.calibration.MIN_SLIDES` usable slides or a single class.
    """
    from fivewsi.runs.calibration import fit_temperature
    from fivewsi.runs.classifier import SlideClassifier
    from fivewsi.runs.loop import predict_files

    fitted_on = "val" if plan.val else "train"
    items = plan.val or plan.train
    device = next(iter(model.parameters()), torch.empty(0)).device
    classifier = SlideClassifier(
        model,
        classes=[c.name for c in plan.classes],
        descriptions=[c.description for c in plan.classes],
        record=record,
        device=device,
    )
    targets = {i.slide_id: i.target for i in items}
    logits, labels = [], []
    for result in predict_files(classifier, [(i.slide_id, i.path) for i in items]):
        target = targets[result.slide_id]
        if result.prediction is None or result.prediction.logits is None or target is None:
            continue
        logits.append(result.prediction.logits)
        labels.append(target)
    n_classes = len(plan.classes)
    found = fit_temperature(
        np.asarray(logits, dtype=np.float64).reshape(len(logits), n_classes),
        np.asarray(labels, dtype=np.int64),
        min_temperature=1.0 if fitted_on == "train" else MIN_TEMPERATURE,
    )
    calibration = CalibrationRecord(
        temperature=found.temperature,
        fitted_on=fitted_on if found.fitted else "none",
        n_slides=found.n_slides,
        nll_before=found.nll_before,
        nll_after=found.nll_after,
    )
    log.info(
        "calibration: temperature %.4g fitted on %d %s slides (NLL %s → %s)",
        calibration.temperature, calibration.n_slides, calibration.fitted_on,
        _num(calibration.nll_before), _num(calibration.nll_after),
    )
    return calibration


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _save_texts(model: Any, record: RunRecord, out: Path) -> str | None:
    """Store a text-aligned model's outputs for the run's own texts (see ``runs.weights``)."""
    (out / TEXTS_FILE).unlink(missing_ok=True)
    if not isinstance(model, TextAlignedModel):
        return None
    model.clear_text_cache()  # encode as a freshly loaded run would, batch by batch
    return TEXTS_FILE if save_text_features(model, own_texts(record), out / TEXTS_FILE) else None


def _result_from_record(
    out: Path, record: RunRecord, seconds: float, *, skipped: bool
) -> TrainResult:
    result = record.result or {}
    split = record.split
    skipped_slides = record.skipped_slides
    return TrainResult(
        out,
        str(record.stage),
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
