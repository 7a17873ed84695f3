"""Slide-level classification metrics with percentile-bootstrap confidence intervals.

The prediction of a slide is the class of highest probability: no threshold is tuned anywhere
(the released FiVE code picked its F1 threshold on the test set; fivewsi does not).

Point estimates come from scikit-learn. The bootstrap resamples slides with replacement; because
calling scikit-learn 4 000 times per evaluation takes seconds, the resampled metrics are computed
from per-resample confusion matrices and rank sums, which give exactly scikit-learn's values for
each resample (``tests/test_evaluation_metrics.py`` checks this).

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> m = classification_metrics(["a", "b", "a", "a"], probs, ["a", "b"], n_bootstrap=200)
    >>> m["accuracy"]["value"], m["n"]
    (0.75, 4)
    >>> m["confusion_matrix"]
    [[2, 1], [0, 1]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from fivewsi.evaluation.calibration import (
    CALIBRATION_METRICS,
    N_BINS,
    brier_score,
    expected_calibration_error,
    is_probabilities,
    log_loss,
    resampled_calibration,
)

#: Metrics reported for every evaluation; ``balanced_accuracy`` is the headline.
METRICS = ("balanced_accuracy", "accuracy", "macro_f1", "auc")

#: Resamples are drawn in chunks so memory stays bounded for large test sets.
_CHUNK = 256


def encode_labels(y_true: Sequence[Any] | np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Class indices of ``y_true`` (class names); a clear error for names not in ``classes``.

    Example:
        >>> encode_labels(["b", "a"], ["a", "b"]).tolist()
        [1, 0]
    """
    index = {str(name): i for i, name in enumerate(classes)}
    if len(index) != len(classes):
        raise ValueError(f"duplicate class names in {list(classes)}")
    labels = [str(y) for y in np.asarray(y_true, dtype=object).ravel()]
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(
            f"labels {unknown} are not among the classes {list(classes)}"
        )
    return np.array([index[y] for y in labels], dtype=np.int64)


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and AUC of slide predictions, with bootstrap CIs.

    Args:
        y_true: the true class name of each slide.
        probabilities: ``[n, C]`` class probabilities (or any scores: only their order per
            class matters for AUC), columns in the order of ``classes``.
        classes: the class names.
        n_bootstrap: resamples of the slides for the confidence intervals (0: no intervals).
        seed: seed of the resampling; the same seed gives the same intervals.
        confidence: coverage of the percentile intervals.

    Returns:
        ``{"n", "classes", "accuracy", "balanced_accuracy", "macro_f1", "auc", "ece",
        "brier", "log_loss", "confusion_matrix", "bootstrap"}``. ``ece`` (15 bins, top-label),
        ``brier`` (multi-class) and ``log_loss`` measure calibration
        (:mod:`fivewsi.evaluation.calibration`); their values are None when ``probabilities``
        are scores rather than probabilities. Each metric is ``{"value", "ci_low", "ci_high",
        "n_resamples"}``; ``n_resamples`` counts the resamples the interval is made of (AUC
        skips resamples lacking one of the classes present in ``y_true``). AUC is binary with
        ``classes[1]`` as the positive class for two classes, the unweighted mean of
        one-vs-rest AUCs for more; its value is None when ``y_true`` holds fewer than two
        classes. ``confusion_matrix[i][j]`` counts slides of class i predicted as class j.

    Example:
        >>> import numpy as np
        >>> m = classification_metrics(["x", "y"], np.eye(2), ["x", "y"], n_bootstrap=50)
        >>> m["auc"]["value"], m["auc"]["ci_low"]
        (1.0, 1.0)
    """
    classes = [str(c) for c in classes]
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"need at least two classes, got {classes}")
    y = encode_labels(y_true, classes)
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(y), n_classes):
        raise ValueError(
            f"probabilities must be [n={len(y)}, C={n_classes}], got shape {probs.shape}"
        )
    if len(y) == 0:
        raise ValueError("no slides to evaluate")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or infinite values")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    pred = probs.argmax(axis=1)
    present = np.unique(y)
    values = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _sk_balanced_accuracy(y, pred),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "auc": _sk_auc(y, probs, present),
    }
    samples = _bootstrap(y, pred, probs, present, n_bootstrap, seed) if n_bootstrap else {}

    alpha = (1.0 - confidence) / 2.0
    result: dict[str, Any] = {"n": len(y), "classes": classes}
    for name in METRICS:
        value = values[name]
        draws = samples.get(name, np.empty(0))
        draws = draws[np.isfinite(draws)]
        if value is None or draws.size == 0:
            low = high = None
        else:
            low, high = np.quantile(draws, [alpha, 1.0 - alpha]).tolist()
        result[name] = {
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "n_resamples": int(draws.size) if value is not None else 0,
        }
    result.update(_calibration_metrics(y, probs, samples, alpha))
    result["auc"]["kind"] = (
        f"binary, positive class {classes[1]!r}"
        if n_classes == 2
        else f"one-vs-rest macro over {len(present)} classes present"
    )
    result["confusion_matrix"] = confusion_matrix(y, pred, labels=range(n_classes)).tolist()
    result["bootstrap"] = {
        "method": "percentile",
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "confidence": confidence,
        "unit": "slide",
    }
    return result


def _calibration_metrics(
    y: np.ndarray, probs: np.ndarray, samples: dict[str, np.ndarray], alpha: float
) -> dict[str, dict[str, Any]]:
    """ECE, Brier score and log-loss (:mod:`fivewsi.evaluation.calibration`) with their
    bootstrap intervals; values None when ``probs`` are scores, not probabilities."""
    calibrated = is_probabilities(probs)
    values = {
        "ece": expected_calibration_error(y, probs),
        "brier": brier_score(y, probs),
        "log_loss": log_loss(y, probs),
    } if calibrated else {}
    found: dict[str, dict[str, Any]] = {}
    for name in CALIBRATION_METRICS:
        value = values.get(name)
        draws = samples.get(name, np.empty(0))
        draws = draws[np.isfinite(draws)]
        low = high = None
        if value is not None and draws.size:
            low, high = np.quantile(draws, [alpha, 1.0 - alpha]).tolist()
        found[name] = {
            "value": value,
            "ci_low": low,
            "ci_high": high,
            "n_resamples": int(draws.size) if value is not None else 0,
        }
    if calibrated:
        found["ece"]["bins"] = N_BINS
    return found


def _sk_balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    # A class predicted but absent from y_true has no recall; scikit-learn ignores it and warns.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def _sk_auc(y: np.ndarray, probs: np.ndarray, present: np.ndarray) -> float | None:
    """scikit-learn AUC; None when y_true holds a single class (AUC is undefined)."""
    if len(present) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if probs.shape[1] == 2:
            return float(roc_auc_score(y == 1, probs[:, 1]))
        # One-vs-rest over the classes present (scikit-learn's "ovr" needs all of them).
        return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def _bootstrap(
    y: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray,
    present: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Metric values on ``n_bootstrap`` resamples of the slides (NaN where undefined)."""
    n = probs.shape[0]
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    calibrated = is_probabilities(probs)
    done = 0
    while done < n_bootstrap:
        size = min(_CHUNK, n_bootstrap - done)
        index = rng.integers(0, n, size=(size, n))
        # counts[b, i]: how often slide i is drawn in resample b.
        flat = (np.arange(size)[:, None] * n + index).ravel()
        counts = np.bincount(flat, minlength=size * n).reshape(size, n)
        for name, value in resampled_metrics(counts, y, pred, probs, present).items():
            out[name].append(value)
        if calibrated:
            for name, value in resampled_calibration(counts, y, probs).items():
                out.setdefault(name, []).append(value)
        done += size
    return {name: np.concatenate(parts) for name, parts in out.items()}


def resampled_metrics(
    counts: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray,
    present: np.ndarray,
) -> dict[str, np.ndarray]:
    """Metrics of resamples given as multiplicities ``counts`` ``[B, n]`` of each slide.

    Equal to scikit-learn's metrics on the resampled rows; AUC is NaN for a resample lacking one
    of the ``present`` classes.
    """
    n_classes = probs.shape[1]
    weights = counts.astype(np.float64)
    # cm[b, t, p]: weighted confusion matrices of all resamples at once.
    onehot = np.zeros((len(y), n_classes * n_classes))
    onehot[np.arange(len(y)), y * n_classes + pred] = 1.0
    cm = (weights @ onehot).reshape(-1, n_classes, n_classes)
    total = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)

    accuracy = tp.sum(axis=1) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)
        balanced = np.nanmean(recall, axis=1)
        # scikit-learn's default labels: classes in y_true or in the predictions.
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / denom, np.nan)
        macro_f1 = np.nanmean(f1, axis=1)

    auc = np.full(len(counts), np.nan)
    if len(present) >= 2:
        complete = (support[:, present] > 0).all(axis=1)
        if complete.any():
            if n_classes == 2:
                auc_c = _weighted_auc(weights[complete], y == 1, probs[:, 1])
            else:
                auc_c = np.mean(
                    [_weighted_auc(weights[complete], y == c, probs[:, c]) for c in present],
                    axis=0,
                )
            auc[complete] = auc_c
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "macro_f1": macro_f1,
        "auc": auc,
    }


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann–Whitney AUC (ties count one half) of each row of slide ``weights`` ``[B, n]``.

    Equals the area under the ROC curve scikit-learn computes on the resampled rows.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Start of each run of tied scores, scores ascending.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w = weights[:, order]
    is_pos = positive[order]
    pos = np.add.reduceat(w * is_pos, starts, axis=1)
    neg = np.add.reduceat(w * ~is_pos, starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos = pos.sum(axis=1)
    n_neg = neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)


# --- patient level ---------------------------------------------------------------------------


def patient_probabilities(
    patients: Sequence[str], labels: Sequence[str], probabilities: np.ndarray
) -> tuple[list[str], list[str], np.ndarray, list[int]]:
    """Patient-level rows from slide rows: a patient's probabilities are the mean of its
    slides'; its label is its slides' (one per patient).

    Returns:
        ``(patient ids in order of first slide, their labels, [P, C] probabilities,
        slides per patient)``.

    Raises:
        ValueError: a patient whose slides carry different labels.

    Example:
        >>> ids, labels, probs, n = patient_probabilities(
        ...     ["p1", "p2", "p1"], ["a", "b", "a"],
        ...     np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
        >>> ids, labels, probs.tolist(), n
        (['p1', 'p2'], ['a', 'b'], [[0.7, 0.3], [0.2, 0.8]], [2, 1])
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if len(patients) != len(labels) or len(labels) != probs.shape[0]:
        raise ValueError("patients, labels and probabilities must have one row per slide")
    order: dict[str, list[int]] = {}
    for i, patient in enumerate(patients):
        order.setdefault(str(patient), []).append(i)
    ids, patient_labels, rows, counts = [], [], [], []
    for patient, index in order.items():
        found = {str(labels[i]) for i in index}
        if len(found) > 1:
            raise ValueError(f"patient {patient!r} has slides of different labels "
                             f"{sorted(found)}")
        ids.append(patient)
        patient_labels.append(found.pop())
        rows.append(probs[index].mean(axis=0))
        counts.append(len(index))
    return ids, patient_labels, np.stack(rows), counts


def patient_metrics(
    patients: Sequence[str],
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`classification_metrics` of patients (mean of their slides' probabilities), the
    bootstrap resampling patients; ``aggregation`` and ``n_slides`` say how they were made.

    Example:
        >>> m = patient_metrics(["p1", "p1", "p2"], ["a", "a", "b"],
        ...                     np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]]), ["a", "b"],
        ...                     n_bootstrap=20)
        >>> m["n"], m["accuracy"]["value"], m["bootstrap"]["unit"], m["n_slides"]
        (2, 1.0, 'patient', 3)
    """
    _, patient_labels, probs, _ = patient_probabilities(patients, labels, probabilities)
    metrics = classification_metrics(patient_labels, probs, classes, n_bootstrap=n_bootstrap,
                                     seed=seed)
    metrics["bootstrap"]["unit"] = "patient"
    metrics["aggregation"] = "mean of the patient's slide probabilities"
    metrics["n_slides"] = len(labels)
    return metrics
