"""Temperature scaling: one number T that divides a run's class scores before the softmax.

A fine-tuned run fits T after training by minimising the negative log-likelihood (NLL) of its
held-in slides' labels over ``log T`` (a bounded 1-D search, deterministic): its validation
slides when it has any, else its training slides. Training slides were fitted, so their scores
are over-confident if anything: fitted on them, T is kept ≥ 1 (it may soften the probabilities,
never sharpen them). Dividing by T never changes which class is most probable.

Example:
    >>> import numpy as np
    >>> logits = np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0], [0.0, 4.0]])
    >>> fit = fit_temperature(logits, np.array([0, 1, 1, 0]))
    >>> fit.temperature > 1, fit.nll_after < fit.nll_before
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Bounds of the fitted temperature.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 100.0
#: Fewer held-in slides than this (or a single class among them): T = 1, nothing is fitted.
MIN_SLIDES = 4
#: Standard deviation of the Gaussian prior on log T (MAP fit). A few-shot run fits T on a
#: handful of slides: one confident mistake among 4 would otherwise drive T to its bound
#: (T = 100: every probability 0.5). Hundreds of validation slides outweigh the prior.
PRIOR_SD = 0.5


@dataclass(frozen=True)
class TemperatureFit:
    """The outcome of :func:`fit_temperature`: T, the slides it was fitted on, NLL before/after."""

    temperature: float
    n_slides: int
    nll_before: float | None
    nll_after: float | None
    fitted: bool


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels ``y`` under ``softmax(logits / T)``.

    Example:
        >>> round(nll(np.zeros((2, 2)), np.array([0, 1])), 4)
        0.6931
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(
    logits: np.ndarray,
    y: np.ndarray,
    *,
    min_temperature: float = MIN_TEMPERATURE,
    max_temperature: float = MAX_TEMPERATURE,
    min_slides: int = MIN_SLIDES,
    prior_sd: float | None = PRIOR_SD,
) -> TemperatureFit:
    """The temperature minimising the NLL of ``y`` (class indices) under ``logits`` ``[n, C]``,
    with a Gaussian prior of sd ``prior_sd`` on log T (None: plain maximum likelihood).

    T = 1 (``fitted=False``) when there are fewer than ``min_slides`` slides, fewer than two
    classes among them, or scores that are not finite.

    Example:
        >>> z, y = np.array([[4.0, 0], [0, 4], [4, 0], [8, 0]]), np.array([0, 1, 0, 1])
        >>> round(fit_temperature(z, y, prior_sd=None).temperature, 1)  # one confident mistake
        13.7
        >>> round(fit_temperature(z, y).temperature, 1)  # the prior keeps it nearer 1
        2.1
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    if z.ndim != 2 or z.shape[0] != n:
        raise ValueError(f"logits must be [n={n}, C], got shape {z.shape}")
    if n == 0 or not np.isfinite(z).all():
        return TemperatureFit(1.0, n, None, None, False)
    before = nll(z, y)
    if n < min_slides or len(np.unique(y)) < 2 or z.shape[1] < 2:
        return TemperatureFit(1.0, n, before, before, False)
    lo, hi = np.log(min_temperature), np.log(max_temperature)
    penalty = 0.0 if prior_sd is None else 0.5 / prior_sd**2  # per unit (log T)², summed NLL
    found = minimize_scalar(
        lambda log_t: n * nll(z, y, float(np.exp(log_t))) + penalty * log_t**2,
        bounds=(lo, hi), method="bounded", options={"xatol": 1e-6},
    )
    temperature = float(np.exp(found.x))
    after = nll(z, y, temperature)
    if after > before:  # never worse than T = 1 on the slides it was fitted on
        temperature, after = 1.0, before
    return TemperatureFit(temperature, n, before, after, True)
