"""Evaluate a trained run on the held-out slides of a cohort: predictions, metrics, files.

The slides of one split (``test`` by default) are predicted with every patch, the predicted
class is the most probable one (no threshold is tuned: the test set is never used to choose
anything), and the metrics carry percentile-bootstrap intervals over slides. A slide whose
feature file is missing or broken is recorded with its error and left out of the metrics; a
slide without a label is skipped and counted.

Files written to ``out`` (atomically): ``metrics.json`` (the run, split, classes and where they
came from, counts, metrics with calibration metrics, the temperature applied),
``predictions.csv`` (``slide_id, label, predicted, p_<class>..., error``) and the figures
(:mod:`fivewsi.evaluation.figures`, listed in ``metrics.json``'s ``figures``): ``roc.png``
(ROC curves, one-vs-rest per class; binary: one curve), ``confusion.png`` (counts and
row-normalised) and ``reliability.png`` (accuracy against confidence per bin, ECE). Failed
slides are left out of the figures as they are of the metrics.

Patients: when the cohort has a ``patient_id`` column, ``metrics.json`` also holds a
``patient`` block (the same metrics over patients, a patient's probabilities being the mean of
its predicted slides', the bootstrap resampling patients) and ``patient_predictions.csv``
(``patient_id, label, predicted, n_slides, p_<class>...``) is written beside
``predictions.csv``, with the patients' figures ``patient_roc.png``, ``patient_confusion.png``
and ``patient_reliability.png``. A slide without a patient counts as a patient of its own
(its slide id).

Example:
    >>> result = evaluate_run("runs/abmil", "features", "cohort.csv", out="runs/abmil/eval")
    ... # doctest: +SKIP
    >>> result.metrics["balanced_accuracy"]["value"]  # doctest: +SKIP
    0.87
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fivewsi.errors import EvaluationStageError
from fivewsi.evaluation.metrics import (
    METRICS,
    classification_metrics,
    patient_metrics,
    patient_probabilities,
)
from fivewsi.utils.atomic import write_json_atomic, write_text_atomic
from fivewsi.utils.outputs import check_output_folder, csv_cell, csv_row

if TYPE_CHECKING:
    from fivewsi.cohort.table import ClassDescription, CohortRow
    from fivewsi.runs.classifier import SlideClassifier

log = logging.getLogger(__name__)

#: The reliability diagram written beside ``metrics.json``.
RELIABILITY_FILE = "reliability.png"
#: The figures written beside ``metrics.json`` (patients: the same names, ``patient_`` first).
FIGURE_FILES = {"roc": "roc.png", "confusion": "confusion.png", "reliability": RELIABILITY_FILE}
#: What each figure shows (``metrics.json``'s ``figures`` titles).
FIGURE_TITLES = {
    "roc": "ROC curves (one-vs-rest)",
    "confusion": "confusion matrix (counts and row-normalised)",
    "reliability": "reliability diagram",
}


class EvaluationError(EvaluationStageError, ValueError):
    """The evaluation cannot be done as asked (no slides, unknown labels, no split)."""


@dataclass
class SlideOutcome:
    """One evaluated slide: its label and the model's prediction, or why it has none.

    Attributes:
        slide_id: the slide's id.
        label: its true class.
        predicted: the most probable class (None when the slide failed).
        probabilities: ``[C]`` class probabilities in the order of the result's classes.
        error: why the slide could not be predicted (missing or broken feature file).
    """

    slide_id: str
    label: str
    predicted: str | None = None
    probabilities: np.ndarray | None = None
    error: str | None = None


@dataclass
class PatientOutcome:
    """One evaluated patient: its label, mean class probabilities over its predicted slides.

    Attributes:
        patient_id: the patient (a slide's id for a slide without a patient).
        label: its true class.
        predicted: the most probable class.
        probabilities: ``[C]`` mean of its slides' probabilities.
        n_slides: slides it was averaged over.
    """

    patient_id: str
    label: str
    predicted: str
    probabilities: np.ndarray
    n_slides: int


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` found.

    Attributes:
        run: the run folder.
        split: the split evaluated (None: every labelled slide of a cohort without splits).
        classes: the model's classes, in the order of the probabilities.
        classes_source: where the classes came from ("run", or a classes file).
        metrics: :func:`~fivewsi.evaluation.metrics.classification_metrics` of the slides
            predicted.
        slides: every labelled slide of the split, predicted or failed.
        n_unlabelled: slides of the split skipped for having no label.
        info: everything written to ``metrics.json``.
        out: the folder written to, if any.
    """

    run: Path
    split: str | None
    classes: list[str]
    classes_source: str
    metrics: dict[str, Any]
    slides: list[SlideOutcome]
    n_unlabelled: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    patients: list[PatientOutcome] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Slides in the metrics."""
        return int(self.metrics["n"])

    @property
    def failed(self) -> dict[str, str]:
        """Slide id → error of the slides left out of the metrics."""
        return {s.slide_id: s.error for s in self.slides if s.error is not None}


def evaluate_run(
    run: str | os.PathLike[str],
    features: str | os.PathLike[str],
    cohort: str | os.PathLike[str],
    *,
    split: str | None = "test",
    classes: str | os.PathLike[str] | Sequence[ClassDescription] | None = None,
    out: str | os.PathLike[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "cpu",
) -> EvaluationResult:
    """Predict the labelled slides of ``split`` with the run's model and score them.

    Args:
        run: a training run folder (``fivewsi train``).
        features: folder of bags (any layout below it, as for training).
        cohort: cohort CSV (slide_id, label, report_label, split).
        split: the split to evaluate; when no row of the cohort has a split, every labelled
            slide is evaluated (with a warning: those may include the training slides).
            None evaluates every labelled slide regardless of split.
        classes: class descriptions replacing the run's own (text models only, e.g. a
            report-pretrained run used zero-shot); None uses the run's classes.
        out: folder for ``metrics.json`` and ``predictions.csv``; None writes nothing.
        n_bootstrap, seed: the bootstrap of the confidence intervals.
        device: where the model runs.

    Raises:
        EvaluationError: no labelled slide in the split, a label that is not one of the
            model's classes, or no slide that could be predicted.
        OutputError: ``out`` is a file or cannot be written (checked before predicting).
    """
    from fivewsi.cohort.table import CohortError, check_labels, check_patient_labels, read_cohort
    from fivewsi.runs.classifier import load_model
    from fivewsi.training.items import find_feature_files

    run = Path(run)
    rows = read_cohort(cohort)
    selected, used_split = _select_rows(rows, split, Path(cohort))
    labelled = [r for r in selected if r.label is not None]
    n_unlabelled = len(selected) - len(labelled)
    if n_unlabelled:
        log.info("%d slides of the split have no label and are skipped", n_unlabelled)
    if not labelled:
        raise EvaluationError(
            f"{cohort}: no labelled slide in {_split_words(used_split)} "
            f"({len(selected)} rows, none with a label)"
        )

    classifier = load_model(run, classes=classes, device=device)
    model_classes = list(classifier.classes)
    source = _classes_source(classes)
    try:
        check_labels(labelled, model_classes)
    except CohortError as exc:
        raise EvaluationError(
            f"{cohort}: {exc}; the model's classes come from {source}"
            + ("" if classes is not None else " (pass classes=... to use other descriptions)")
        ) from None

    by_patient = any(r.patient_id is not None for r in labelled)
    if by_patient:
        check_patient_labels(labelled)
    if out is not None:
        check_output_folder(out)  # before predicting: a read-only --out fails at once
    files = find_feature_files(features)
    outcomes = _predict(classifier, labelled, files)
    done = [o for o in outcomes if o.error is None]
    failed = {o.slide_id: o.error for o in outcomes if o.error is not None}
    if failed:
        log.warning(
            "%d of %d slides could not be predicted and are left out of the metrics "
            "(first: %s: %s)",
            len(failed), len(outcomes), *next(iter(failed.items())),
        )
    if not done:
        raise EvaluationError(
            f"none of the {len(outcomes)} slides could be predicted; first error: "
            f"{next(iter(failed.values()))}"
        )
    probabilities = np.stack([o.probabilities for o in done])
    metrics = classification_metrics(
        [o.label for o in done], probabilities, model_classes, n_bootstrap=n_bootstrap, seed=seed
    )
    seen = _training_overlap(run, [o.slide_id for o in done])
    if seen:
        log.warning(
            "%d evaluated slides were used to train the run (e.g. %s): the metrics are not "
            "held-out", len(seen), seen[0],
        )

    info = {
        "run": str(run.resolve()),
        "model": classifier.model_name,
        "kind": classifier.kind,
        "features": str(Path(features).resolve()),
        "cohort": str(Path(cohort).resolve()),
        "split": used_split,
        "split_requested": split,
        "classes": model_classes,
        "descriptions": list(classifier.descriptions),
        "classes_source": source,
        "n": metrics["n"],
        "n_rows": len(selected),
        "n_unlabelled": n_unlabelled,
        "n_failed": len(failed),
        "failed": failed,
        "n_seen_in_training": len(seen),
        "prediction": "argmax of the class probabilities (no threshold tuning)",
        "calibration": _calibration_info(classifier),
        "metrics": metrics,
        "fivewsi_version": _version(),
    }
    result = EvaluationResult(
        run=run,
        split=used_split,
        classes=model_classes,
        classes_source=source,
        metrics=metrics,
        slides=outcomes,
        n_unlabelled=n_unlabelled,
        info=info,
    )
    if by_patient:
        patient_of = {r.slide_id: r.patient_id or r.slide_id for r in labelled}
        _add_patients(result, [patient_of[o.slide_id] for o in done], done, n_bootstrap, seed)
    if out is not None:
        result.out = write_evaluation(result, out)
    _log_summary(result)
    return result


def write_evaluation(result: EvaluationResult, out: str | os.PathLike[str]) -> Path:
    """Write ``predictions.csv``, the figures (``roc.png``, ``confusion.png``,
    ``reliability.png``, and ``patient_*.png`` with patients) and ``metrics.json`` of
    ``result`` into ``out`` atomically.

    ``metrics.json`` is written last, so a folder holding it is complete.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "label", "predicted", *[f"p_{c}" for c in result.classes],
                     "error"])
    for s in result.slides:
        probs = (
            [f"{p:.6g}" for p in s.probabilities]
            if s.probabilities is not None
            else [""] * len(result.classes)
        )
        text = csv_row([s.slide_id, s.label, s.predicted or ""])
        writer.writerow([*text, *probs, csv_cell(s.error or "")])
    write_text_atomic(out / "predictions.csv", buffer.getvalue())
    result.info["figures"] = _write_figures(result, out)
    _write_patients(result, out)
    write_json_atomic(out / "metrics.json", result.info)
    return out


def _calibration_info(classifier: SlideClassifier) -> dict[str, Any]:
    """How the evaluated probabilities were calibrated: the temperature applied and the run's
    record of fitting it (any classifier-like object: without them, T = 1)."""
    from fivewsi.runs.classifier import calibration_words

    record = getattr(classifier, "record", None)
    stored = getattr(record, "calibration", None)
    temperature = float(getattr(classifier, "temperature", 1.0))
    return {
        "temperature": temperature,
        "applied": temperature != 1.0,
        "description": calibration_words(stored, temperature),
        "fitted": stored.model_dump(mode="json") if stored is not None else None,
    }


def _write_figures(result: EvaluationResult, out: Path) -> list[dict[str, str]]:
    """The figures of the predicted slides (and of the patients, when there are patients):
    ROC, confusion matrix, reliability diagram (:mod:`fivewsi.evaluation.figures`). A figure
    that cannot be drawn (one class only: no ROC; scores rather than probabilities: no
    reliability diagram) is not written and an old one of that name is removed. Returns
    ``metrics.json``'s ``figures``: ``{"file", "title"}`` per file written."""
    from fivewsi.evaluation.metrics import encode_labels

    done = [s for s in result.slides if s.error is None and s.probabilities is not None]
    title = f"{result.run.name} on {_split_words(result.split)}"
    written = []
    levels = [("", "slides", [s.label for s in done],
               [s.probabilities for s in done], result.metrics["confusion_matrix"])]
    if result.patients:
        levels.append(("patient_", "patients", [p.label for p in result.patients],
                       [p.probabilities for p in result.patients],
                       result.info["patient"]["confusion_matrix"]))
    else:
        for name in FIGURE_FILES.values():
            (out / f"patient_{name}").unlink(missing_ok=True)
    for prefix, unit, labels, rows, matrix in levels:
        probs = np.stack(rows)
        y = encode_labels(labels, result.classes)
        for kind, draw in _figure_drawers(y, probs, result.classes, matrix, unit).items():
            path = out / f"{prefix}{FIGURE_FILES[kind]}"
            if draw is None:
                path.unlink(missing_ok=True)
                continue
            draw(path, f"{title} ({unit})" if prefix else title)
            written.append({"file": path.name, "title": f"{FIGURE_TITLES[kind]}, {unit}"})
    return written


def _figure_drawers(
    y: np.ndarray, probs: np.ndarray, classes: list[str], matrix: list[list[int]], unit: str
) -> dict[str, Any]:
    """Each figure's drawing function ``(path, title)``, None where it cannot be drawn."""
    from fivewsi.evaluation import figures
    from fivewsi.evaluation.calibration import is_probabilities

    return {
        "roc": (lambda path, title: figures.roc_figure(path, y, probs, classes, title=title,
                                                        unit=unit))
        if len(set(y.tolist())) >= 2 else None,
        "confusion": lambda path, title: figures.confusion_figure(path, matrix, classes,
                                                                  title=title, unit=unit),
        "reliability": (lambda path, title: figures.reliability_figure(path, y, probs,
                                                                       title=title, unit=unit))
        if is_probabilities(probs) else None,
    }


#: Patient-level predictions, beside ``predictions.csv`` (cohorts with ``patient_id``).
PATIENT_PREDICTIONS = "patient_predictions.csv"


def _add_patients(
    result: EvaluationResult,
    patients: list[str],
    done: list[SlideOutcome],
    n_bootstrap: int,
    seed: int,
) -> None:
    """The ``patient`` block of ``metrics.json`` and the patient rows of ``result``."""
    labels = [o.label for o in done]
    probabilities = np.stack([o.probabilities for o in done])
    ids, patient_labels, probs, counts = patient_probabilities(patients, labels, probabilities)
    result.patients = [
        PatientOutcome(pid, label, result.classes[int(p.argmax())], p, n)
        for pid, label, p, n in zip(ids, patient_labels, probs, counts, strict=True)
    ]
    result.info["patient"] = patient_metrics(
        patients, labels, probabilities, result.classes, n_bootstrap=n_bootstrap, seed=seed
    )


def _write_patients(result: EvaluationResult, out: Path) -> None:
    """``patient_predictions.csv`` (an old one is removed when there are no patients)."""
    from fivewsi.utils.outputs import csv_row

    path = out / PATIENT_PREDICTIONS
    if not result.patients:
        path.unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["patient_id", "label", "predicted", "n_slides",
                     *[f"p_{c}" for c in result.classes]])
    for p in result.patients:
        writer.writerow([*csv_row([p.patient_id, p.label, p.predicted]), p.n_slides,
                         *[f"{v:.6g}" for v in p.probabilities]])
    write_text_atomic(path, buffer.getvalue())


def _select_rows(
    rows: list[CohortRow], split: str | None, cohort: Path
) -> tuple[list[CohortRow], str | None]:
    if split is None:
        return rows, None
    if all(r.split is None for r in rows):
        log.warning(
            "%s has no split column (or no split values): evaluating every labelled slide, "
            "which may include the slides the model was trained on", cohort,
        )
        return rows, None
    selected = [r for r in rows if r.split == split]
    if not selected:
        present = sorted({r.split for r in rows if r.split is not None})
        raise EvaluationError(
            f"{cohort}: no slide in split {split!r}; splits present: {', '.join(present)}"
        )
    return selected, split


def _split_words(split: str | None) -> str:
    return "the cohort" if split is None else f"split {split!r}"


def _classes_source(classes: object) -> str:
    if classes is None:
        return "run"
    if isinstance(classes, (str, os.PathLike)):
        return str(Path(classes).resolve())
    return "given descriptions"


def _predict(
    classifier: SlideClassifier, rows: list[CohortRow], files: dict[str, Path]
) -> list[SlideOutcome]:
    """Outcomes of ``rows`` in order: predictions batched by patch count, errors per slide."""
    from fivewsi.runs.loop import predict_files

    items = [(r.slide_id, files.get(r.slide_id)) for r in rows]
    outcomes = []
    for row, result in zip(rows, predict_files(classifier, items), strict=True):
        outcome = SlideOutcome(row.slide_id, str(row.label), error=result.error)
        if result.prediction is not None:
            outcome.probabilities = np.asarray(result.prediction.probabilities, dtype=np.float64)
            outcome.predicted = str(result.prediction.predicted)
        outcomes.append(outcome)
    return outcomes


def _training_overlap(run: Path, slide_ids: list[str]) -> list[str]:
    """Evaluated slides that the run trained on, from the run's ``split.csv``."""
    from fivewsi.runs.record import SPLIT_FILE

    path = run / SPLIT_FILE
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        role_column = next(
            (c for c in ("role", "split", "set", "stage") if c in (reader.fieldnames or [])), None
        )
        if role_column is None or "slide_id" not in (reader.fieldnames or []):
            return []
        trained = {r["slide_id"] for r in reader if (r.get(role_column) or "").strip() == "train"}
    return [s for s in slide_ids if s in trained]


def _version() -> str:
    from fivewsi import __version__

    return __version__


def _log_summary(result: EvaluationResult) -> None:
    parts = []
    for name in METRICS:
        m = result.metrics[name]
        if m["value"] is None:
            parts.append(f"{name} n/a")
        elif m["ci_low"] is None:
            parts.append(f"{name} {m['value']:.3f}")
        else:
            parts.append(f"{name} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    log.info(
        "%s on %s: %d slides (%d failed, %d unlabelled): %s",
        result.run.name, _split_words(result.split), result.n, len(result.failed),
        result.n_unlabelled, ", ".join(parts),
    )
