"""Stratified, patient-grouped k-fold cross-validation (``fivewsi crossval``).

The labelled rows of the cohort that are not ``test`` rows are split into ``folds`` folds by
scikit-learn's ``StratifiedGroupKFold`` (groups: patients, a slide without a patient being a
group of its own; stratified by label), so a patient's slides are always in one fold. For each
fold f a cohort CSV is written where fold f is the ``test`` split and every other fold's slides
are training rows (the cohort's own ``test`` rows are left out altogether); one run trains on it
(``train`` never reads test rows; validation, when there is one, is a patient-whole share of the
training folds) and is evaluated on fold f.

Files in ``out``: ``folds.csv`` (``slide_id, patient_id, fold``), ``folds/fold<f>/cohort.csv``,
``folds/fold<f>/run/`` (a run folder), ``folds/fold<f>/eval/`` (``metrics.json``,
``predictions.csv`` and, with patients, ``patient_predictions.csv``) and ``metrics.json``: per
fold metrics, their mean and sd over folds, and pooled metrics over every held-out prediction
with bootstrap intervals (a ``patient`` block too when the cohort has ``patient_id``), and
``crossval.png`` (balanced accuracy and AUC of each fold, their mean ± 95 % Student-t interval
over folds, the pooled value with its bootstrap interval; listed in ``metrics.json``'s
``figures``). Each fold's ``eval/`` holds its evaluation's figures too.

Resumable: a fold whose run finished and whose evaluation is written is reused; an unfinished
run resumes. A folder holding folds of another cohort or seed is refused.

Example:
    >>> config = CrossvalConfig(features="feats", cohort="cohort.csv", classes="classes.csv",
    ...                         out="cv", model="abmil", folds=3)
    >>> config.fold_config(0).out.name, config.fold_config(0).cohort.parent.name
    ('run', 'fold0')
    >>> result = run_crossval(config)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fivewsi.errors import EvaluationStageError
from fivewsi.evaluation.metrics import METRICS, classification_metrics, patient_metrics
from fivewsi.utils.atomic import write_json_atomic, write_text_atomic
from fivewsi.utils.outputs import csv_row, csv_value

log = logging.getLogger(__name__)

#: The fold assignment file in the output folder.
FOLDS_FILE = "folds.csv"
#: The figure of the folds (balanced accuracy and AUC), beside ``metrics.json``.
FIGURE_FILE = "crossval.png"


class CrossvalError(EvaluationStageError, ValueError):
    """Cross-validation cannot run as asked (too few patients, a folder of other folds)."""


class CrossvalConfig(BaseModel):
    """Settings of ``fivewsi crossval``, validated whole when built (the per-fold training
    config too, so a misspelt training setting fails before any fold runs).

    Attributes:
        features, cohort, classes, out: bags, cohort CSV, classes CSV, output folder.
        init: a run whose weights start every fold's run (e.g. a report-pretrained FiVE run).
        model: the model's registry name.
        folds: number of folds.
        shots: labelled patients per class drawn from the training folds (None: all).
        seed: seed of the folds and of every run.
        train_options: other ``TrainConfig`` settings for every fold's run.
        model_options: the model's own options.
        n_bootstrap: bootstrap resamples of the intervals.
    """

    model_config = ConfigDict(extra="forbid")

    features: Path
    cohort: Path
    classes: Path
    out: Path
    init: Path | None = None
    model: str = "five"
    folds: int = Field(5, ge=2, le=100)
    shots: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    train_options: dict[str, Any] = Field(default_factory=dict)
    model_options: dict[str, Any] = Field(default_factory=dict)
    n_bootstrap: int = Field(1000, ge=0)

    @field_validator("features", "cohort", "classes", "out", "init")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().absolute()

    @model_validator(mode="after")
    def _check_training(self) -> CrossvalConfig:
        taken = {"features", "cohort", "classes", "out", "init", "model", "shots", "seed",
                 "model_options"} & set(self.train_options)
        if taken:
            raise ValueError(f"train_options may not set {sorted(taken)} (crossval's own "
                             "settings)")
        self.fold_config(0)  # a misspelt training setting fails here
        return self

    def fold_dir(self, fold: int) -> Path:
        """``out/folds/fold<f>``."""
        return self.out / "folds" / f"fold{fold}"

    def fold_config(self, fold: int) -> Any:
        """The ``TrainConfig`` of fold ``fold``'s run."""
        from fivewsi.training.config import TrainConfig

        where = self.fold_dir(fold)
        return TrainConfig(
            features=self.features, cohort=where / "cohort.csv", classes=self.classes,
            out=where / "run", init=self.init, model=self.model, shots=self.shots,
            seed=self.seed, model_options=self.model_options, **self.train_options,
        )


@dataclass
class CrossvalResult:
    """What :func:`run_crossval` did: ``metrics`` is ``metrics.json``'s content."""

    out: Path
    folds: dict[str, int]
    metrics: dict[str, Any]
    n_failed: int
    seconds: float


def make_folds(
    slide_ids: list[str], labels: list[str], patients: list[str | None], folds: int, seed: int
) -> list[int]:
    """Each slide's fold: stratified by label, patients whole (a slide without a patient is a
    group of its own).

    Raises:
        CrossvalError: fewer patients than folds.

    Example:
        >>> ids = [f"s{i}" for i in range(8)]
        >>> fold = make_folds(ids, ["a", "b"] * 4, ["p0", "p0", "p1", "p1"] + [None] * 4, 2, 0)
        >>> fold[0] == fold[1] and fold[2] == fold[3], sorted(set(fold))
        (True, [0, 1])
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = [p if p is not None else f"\0slide:{s}" for s, p in zip(slide_ids, patients,
                                                                        strict=True)]
    n_groups = len(set(groups))
    if n_groups < folds:
        raise CrossvalError(f"{folds} folds need at least {folds} patients (slides without a "
                            f"patient count as one each); the cohort has {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = [0] * len(slide_ids)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        for i in held:
            fold[int(i)] = f
    return fold


def run_crossval(config: CrossvalConfig) -> CrossvalResult:
    """Run the folds of ``config`` (see the module docstring) and write ``out``.

    Raises:
        CrossvalError: too few patients, or ``out`` holds folds of another cohort or seed.
        CohortError: bad tables, a label not among the classes, a patient with two labels.
        TrainError, EvaluationError: a fold's training or evaluation cannot run.
    """
    from fivewsi.cohort.table import (
        CohortRow,
        check_labels,
        check_patient_labels,
        read_classes,
        read_cohort,
        write_cohort,
    )
    from fivewsi.evaluation.evaluate import evaluate_run
    from fivewsi.training.train import train
    from fivewsi.utils.outputs import check_output_folder

    started = time.perf_counter()
    rows = read_cohort(config.cohort)
    classes = [c.name for c in read_classes(config.classes)]
    pool = [r for r in rows if r.split != "test" and r.label is not None]
    if not pool:
        raise CrossvalError(f"{config.cohort}: no labelled row outside the test split")
    check_labels(pool, classes)
    check_patient_labels(pool)
    check_output_folder(config.out)
    fold_of_index = make_folds([r.slide_id for r in pool], [str(r.label) for r in pool],
                               [r.patient_id for r in pool], config.folds, config.seed)
    folds = {r.slide_id: f for r, f in zip(pool, fold_of_index, strict=True)}
    _write_or_check_folds(config.out / FOLDS_FILE, pool, folds)
    by_patient = any(r.patient_id is not None for r in pool)

    per_fold: list[dict[str, Any]] = []
    held: list[dict[str, str]] = []
    for f in range(config.folds):
        where = config.fold_dir(f)
        fold_rows = [CohortRow(r.slide_id, r.label, r.report_label,
                               "test" if folds[r.slide_id] == f else None, r.patient_id)
                     for r in pool]
        run_config = config.fold_config(f)
        where.mkdir(parents=True, exist_ok=True)
        _write_if_changed(run_config.cohort, fold_rows, write_cohort)
        trained = train(run_config)
        eval_dir = where / "eval"
        if not (trained.skipped and (eval_dir / "metrics.json").is_file()):
            evaluate_run(run_config.out, config.features, run_config.cohort, split="test",
                         out=eval_dir, n_bootstrap=config.n_bootstrap, seed=config.seed,
                         device=_eval_device(run_config.device))
        info = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
        entry = {"fold": f, "n_train": trained.n_train, "n_val": trained.n_val,
                 "n_test": info["n"], "n_failed": info["n_failed"], "run": str(run_config.out),
                 "metrics": info["metrics"]}
        if "patient" in info:
            entry["patient"] = info["patient"]
        per_fold.append(entry)
        held.extend(_read_predictions(eval_dir / "predictions.csv"))
        log.info("fold %d/%d: balanced accuracy %s", f + 1, config.folds,
                 info["metrics"]["balanced_accuracy"]["value"])

    done = [p for p in held if not p.get("error")]
    if not done:
        raise CrossvalError("no held-out slide could be predicted in any fold")
    probs = np.array([[float(p[f"p_{c}"]) for c in classes] for p in done])
    labels = [p["label"] for p in done]
    pooled: dict[str, Any] = {"metrics": classification_metrics(
        labels, probs, classes, n_bootstrap=config.n_bootstrap, seed=config.seed)}
    patient_of = {r.slide_id: r.patient_id or r.slide_id for r in pool}
    if by_patient:
        pooled["patient"] = patient_metrics([patient_of[p["slide_id"]] for p in done], labels,
                                            probs, classes, n_bootstrap=config.n_bootstrap,
                                            seed=config.seed)
    n_failed = sum(e["n_failed"] for e in per_fold)
    metrics = {
        "cohort": str(config.cohort),
        "classes": classes,
        "model": config.model,
        "init": None if config.init is None else str(config.init),
        "folds": config.folds,
        "shots": config.shots,
        "seed": config.seed,
        "grouping": "patient_id" if by_patient else "slide",
        "n_slides": len(pool),
        "n_failed": n_failed,
        "per_fold": per_fold,
        "fold_summary": _summary(per_fold, "metrics"),
        "pooled": pooled,
        "config": config.model_dump(mode="json"),
    }
    if by_patient:
        metrics["fold_summary_patient"] = _summary(per_fold, "patient")
    metrics["figures"] = _write_figure(config.out / FIGURE_FILE, metrics)
    write_json_atomic(config.out / "metrics.json", metrics)
    return CrossvalResult(config.out, folds, metrics, n_failed, time.perf_counter() - started)


def _write_figure(path: Path, metrics: dict[str, Any]) -> list[dict[str, str]]:
    """``crossval.png`` (:func:`fivewsi.evaluation.figures.crossval_figure`); its entry of
    ``metrics.json``'s ``figures``."""
    from fivewsi.evaluation.figures import crossval_figure

    crossval_figure(path, metrics)
    return [{"file": path.name, "title": "balanced accuracy and AUC per fold, their mean ± 95 % "
             "t-interval over folds, and pooled with its bootstrap interval"}]


def _summary(per_fold: list[dict[str, Any]], block: str) -> dict[str, Any]:
    """Mean and sd over folds of each metric (folds where it is defined)."""
    summary = {}
    for name in METRICS:
        values = [e[block][name]["value"] for e in per_fold
                  if block in e and e[block][name]["value"] is not None]
        summary[name] = {
            "mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "values": values,
        }
    return summary


def _eval_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_or_check_folds(path: Path, pool: list[Any], folds: dict[str, int]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "patient_id", "fold"])
    for row in pool:
        writer.writerow([*csv_row([row.slide_id, row.patient_id or ""]), folds[row.slide_id]])
    text = buffer.getvalue()
    if path.is_file():
        if path.read_text(encoding="utf-8") != text:
            raise CrossvalError(
                f"{path} holds other folds (another cohort, seed or number of folds): use "
                "another --out folder, or the settings it was made with"
            )
        return
    write_text_atomic(path, text)


def _write_if_changed(path: Path, rows: list[Any], write: Any) -> None:
    """Write the fold's cohort (only when it differs: a finished run's input stays put)."""
    from fivewsi.cohort.table import read_cohort

    if path.is_file() and read_cohort(path) == rows:
        return
    write(rows, path)


def _read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: csv_value(v) for k, v in r.items()} for r in csv.DictReader(handle)]
