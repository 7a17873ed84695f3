"""Calibration of class probabilities: ECE, Brier score, log-loss and the reliability diagram.

- **ECE** (expected calibration error, top-label): the slides are put in 15 equal-width bins of
  their confidence (the highest probability); ECE is the slide-weighted mean over bins of
  |accuracy − mean confidence|. 0 is perfect.
- **Brier score** (multi-class): mean over slides of Σ_c (p_c − 1[y = c])²; between 0 and 2.
  For two classes it is twice scikit-learn's binary ``brier_score_loss``.
- **Log-loss**: mean over slides of −log p_y (p clipped to [1e-15, 1]), scikit-learn's
  ``log_loss``.

Each is a weighted mean over slides, so a bootstrap resample (slide multiplicities) gives its
value exactly (:func:`resampled_calibration`).

Example:
    >>> import numpy as np
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> y = np.array([0, 1, 0, 0])
    >>> round(brier_score(y, probs), 4), round(log_loss(y, probs), 4)
    (0.35, 0.5108)
    >>> round(expected_calibration_error(y, probs), 4)
    0.35
"""

from __future__ import annotations

import numpy as np

#: Calibration metrics of ``metrics.json`` (lower is better for all three).
CALIBRATION_METRICS = ("ece", "brier", "log_loss")
#: Equal-width confidence bins of the ECE and the reliability diagram.
N_BINS = 15
_EPS = 1e-15


def is_probabilities(probs: np.ndarray, *, tol: float = 1e-4) -> bool:
    """Whether the rows of ``probs`` are probability vectors (in [0, 1], summing to 1)."""
    probs = np.asarray(probs, dtype=np.float64)
    return bool(
        probs.ndim == 2 and (probs >= -tol).all() and (probs <= 1 + tol).all()
        and np.allclose(probs.sum(axis=1), 1.0, atol=tol)
    )


def confidence_bins(probs: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin (0 … ``n_bins`` − 1) of each slide's confidence; bins are (i/n, (i+1)/n], bin 0
    also holding confidence 0."""
    confidence = np.asarray(probs, dtype=np.float64).max(axis=1)
    # rounded first: 0.8 * 15 is 12.000000000000002 in floating point, yet 0.8 ends bin 11
    edges = np.ceil(np.round(confidence * n_bins, 9)).astype(np.int64)
    return np.clip(edges - 1, 0, n_bins - 1)


def per_slide(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Each slide's Brier term, log-loss term, confidence and correctness."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), y] = 1.0
    p_true = np.clip(probs[np.arange(len(y)), y], _EPS, 1.0)
    return {
        "brier": ((probs - onehot) ** 2).sum(axis=1),
        "log_loss": -np.log(p_true),
        "confidence": probs.max(axis=1),
        "correct": (probs.argmax(axis=1) == y).astype(np.float64),
    }


def brier_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Multi-class Brier score (see the module)."""
    return float(per_slide(np.asarray(y), probs)["brier"].mean())


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean −log p of the true class (see the module)."""
    return float(per_slide(np.asarray(y), probs)["log_loss"].mean())


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> float:
    """Top-label ECE over ``n_bins`` equal-width confidence bins (see the module)."""
    once = np.ones((1, len(y)))
    return float(resampled_calibration(once, np.asarray(y), probs, n_bins)["ece"][0])


def resampled_calibration(
    counts: np.ndarray, y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS
) -> dict[str, np.ndarray]:
    """ECE, Brier and log-loss of resamples given as slide multiplicities ``counts`` ``[B, n]``."""
    weights = np.asarray(counts, dtype=np.float64)
    terms = per_slide(y, probs)
    total = weights.sum(axis=1)
    bins = np.zeros((len(y), n_bins))
    bins[np.arange(len(y)), confidence_bins(probs, n_bins)] = 1.0
    gap = weights @ (bins * (terms["correct"] - terms["confidence"])[:, None])  # [B, bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "ece": np.abs(gap).sum(axis=1) / total,
            "brier": weights @ terms["brier"] / total,
            "log_loss": weights @ terms["log_loss"] / total,
        }


def reliability_table(y: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Per confidence bin: its range, slide count, mean confidence and accuracy (None if empty)."""
    terms = per_slide(np.asarray(y), probs)
    index = confidence_bins(probs, n_bins)
    rows = []
    for b in range(n_bins):
        inside = index == b
        count = int(inside.sum())
        rows.append({
            "low": b / n_bins, "high": (b + 1) / n_bins, "n": count,
            "confidence": float(terms["confidence"][inside].mean()) if count else None,
            "accuracy": float(terms["correct"][inside].mean()) if count else None,
        })
    return rows
