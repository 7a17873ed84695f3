"""The run folder of a training: new, resumed, finished, overwritten or refused; its record.

A folder without ``run.json`` is new. With one, its stored config must give the same result as
the config asked (:meth:`TrainConfig.result_settings`), else training is refused; a finished run
(``status`` finished and weights) is left alone unless ``overwrite``; an unfinished one resumes
from ``checkpoints/last.ckpt`` when there is one.

Example:
    >>> from fivewsi.training.config import TrainConfig
    >>> run_state(Path("/no/such/run"), TrainConfig(features="f", cohort="c.csv", out="r"))
    'new'
"""

from __future__ import annotations

import datetime
import platform
import shutil
from pathlib import Path
from typing import Any, Literal

from fivewsi import __version__
from fivewsi.errors import RunError
from fivewsi.runs.adapter import ADAPTER_FILE
from fivewsi.runs.record import (
    CHECKPOINTS,
    EVALUATION,
    EVALUATION_FILES,
    LOGS,
    RUN_FILE,
    SPLIT_FILE,
    TEXTS_FILE,
    WEIGHTS_FILE,
    ClassRecord,
    ModelRecord,
    RunRecord,
    read_record,
)
from fivewsi.training.config import TrainConfig, TrainError
from fivewsi.training.plan import Plan

LAST_CKPT = "last.ckpt"

RunState = Literal["new", "resume", "finished", "overwrite"]


def run_state(out: Path, config: TrainConfig) -> RunState:
    """``new``, ``resume``, ``finished`` or ``overwrite``; refuses a run with other settings."""
    if not (out / RUN_FILE).exists():
        return "new"
    if config.overwrite:
        return "overwrite"
    record = read_record(out)
    diff = config_diff(record.config, config)
    if diff:
        details = "; ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise TrainError(
            f"{out} holds a run with other settings ({details}); use another --out folder, the "
            "run's settings, or --overwrite to start it again"
        )
    if record.status == "finished" and (out / WEIGHTS_FILE).exists():
        return "finished"
    return "resume" if (out / CHECKPOINTS / LAST_CKPT).exists() else "new"


def config_diff(stored: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Result settings that differ: key → (stored, asked)."""
    wanted = config.result_settings()
    return {
        key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value
    }


def clear_run(out: Path) -> None:
    """Remove what a training wrote in ``out`` (before training it again), and the
    evaluations of the old weights (``evaluation/``, a few-shot cell's metrics): results
    of other weights must never sit beside the new ones."""
    for name in (RUN_FILE, WEIGHTS_FILE, TEXTS_FILE, ADAPTER_FILE, SPLIT_FILE, *EVALUATION_FILES):
        (out / name).unlink(missing_ok=True)
    for name in (CHECKPOINTS, LOGS, EVALUATION):
        shutil.rmtree(out / name, ignore_errors=True)


def check_init(init: Path, model: ModelRecord, plan: Plan) -> None:
    """RUN0 must hold the same architecture, model arguments, input size and questions."""
    if not (init / WEIGHTS_FILE).is_file():
        raise TrainError(f"--init {init}: no {WEIGHTS_FILE} (has that run finished?)")
    try:
        first = read_record(init)
    except RunError as exc:
        raise TrainError(f"--init: {exc}") from None
    old = first.model
    problems = []
    for key, what in (("architecture", "model"), ("in_dim", "feature size"),
                      ("questions", "questions"), ("args", "model options")):
        if getattr(old, key) != getattr(model, key):
            problems.append(
                f"{what}: {init} has {getattr(old, key)!r}, this run {getattr(model, key)!r}"
            )
    old_set = first.question_set.get("fingerprint")
    if old_set and old_set != plan.questions.fingerprint():
        problems.append(f"question set: {init} used another version ({old_set})")
    if problems:
        raise TrainError(f"cannot start from {init}: " + "; ".join(problems))


def model_record(config: TrainConfig, plan: Plan, in_dim: int, prompts: list[str]) -> ModelRecord:
    """The record's model section: architecture, validated arguments, what it is built for."""
    return ModelRecord(
        architecture=config.model,
        in_dim=in_dim,
        n_classes=len(plan.classes),
        questions=[q.question for q in plan.questions.questions],
        question_keys=list(plan.questions.keys),
        args=dict(config.model_options),
        prompt_names=prompts,
    )


def new_record(config: TrainConfig, plan: Plan, model: ModelRecord) -> RunRecord:
    """The record of a run that starts (status ``running``)."""
    import lightning
    import torch

    attrs = plan.check.attrs
    feature_keys = ("encoder", "encoder_dim", "encoder_weights", "encoder_input_size",
                    "target_mpp", "patch_size", "patch_size_level0", "target_magnification")
    return RunRecord(
        status="running",
        created=_now(),
        fivewsi_version=__version__,
        stage=plan.stage,  # type: ignore[arg-type]
        config=config.stored(),
        model=model,
        classes=[ClassRecord(name=c.name, description=c.description) for c in plan.classes]
        or None,
        question_set={
            "name": plan.questions.name,
            "version": plan.questions.version,
            "fingerprint": plan.questions.fingerprint(),
            "keys": list(plan.questions.keys),
            # the whole set, so predict can score every category without the original YAML
            "definition": plan.questions.model_dump(mode="json"),
        },
        feature_encoder={k: _plain(attrs[k]) for k in feature_keys if k in attrs},
        preprocess=_preprocess_settings(config.features),
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "fivewsi": __version__,
        },
        seed=config.seed,
        shots=config.shots,
        init=str(config.init) if config.init else None,
        split={
            "file": SPLIT_FILE,
            "n_train": len(plan.train),
            "n_val": len(plan.val),
            "validation": plan.val_source,
        },
        skipped_slides={"missing": plan.check.missing, "broken": plan.check.broken},
    )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def finish_record(record: RunRecord, result: dict[str, Any], texts_file: str | None) -> RunRecord:
    """The record of a finished run."""
    return record.model_copy(
        update={"status": "finished", "finished": _now(), "result": result,
                "texts_file": texts_file}
    )


def _plain(value: Any) -> Any:
    import numpy as np

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
