"""How selective an attention map is, and whether it looks where the answer is.

Numbers in absolute terms, not ranks: a map's entropy relative to the uniform map's (``log N``),
its largest and smallest weight as multiples of uniform (``1/N``), and whether it is
near-uniform; for a model with one map per question, the AUROC of each map against the
patches that carry its question's evidence and the correlation between questions' maps
(``benchmarks/bench_prompts.py`` prints them on the synthetic cohort).

Example:
    >>> import numpy as np
    >>> r = attention_range(np.full(36, 1 / 36))
    >>> round(r.entropy_ratio, 3), r.near_uniform, r.label()
    (1.0, True, 'near-uniform (max/min 1.00×, entropy 1.00 of max)')
    >>> auroc(np.array([0.1, 0.2, 0.7]), np.array([2]))
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: A map is near-uniform when its entropy is at least this share of ``log N`` ...
NEAR_UNIFORM_ENTROPY = 0.99
#: ... or its largest weight is less than this many times its smallest.
NEAR_UNIFORM_RATIO = 1.5


@dataclass(frozen=True)
class AttentionRange:
    """One attention map's range in absolute terms.

    Attributes:
        n: patches.
        entropy_ratio: entropy / ``log n`` (1 = uniform; 1 when n = 1).
        max_x_uniform, min_x_uniform: largest / smallest weight times n (uniform = 1).
        near_uniform: entropy ratio ≥ :data:`NEAR_UNIFORM_ENTROPY` or max/min <
            :data:`NEAR_UNIFORM_RATIO`.
    """

    n: int
    entropy_ratio: float
    max_x_uniform: float
    min_x_uniform: float
    near_uniform: bool

    @property
    def max_min_ratio(self) -> float:
        """Largest over smallest weight (inf when some weight is 0)."""
        return self.max_x_uniform / self.min_x_uniform if self.min_x_uniform > 0 else math.inf

    def label(self, *, ascii_only: bool = False) -> str:
        """A one-line caption: ``near-uniform (...)`` or the weights' range vs uniform
        (``ascii_only``: ``x`` and ``-`` for ``×`` and ``–``, for text drawn into a PNG).

        Example:
            >>> attention_range(np.array([1.0, 3.0])).label(ascii_only=True)
            'weights 0.50-1.50x uniform (1/N), entropy 0.81 of max'
        """
        times, dash = ("x", "-") if ascii_only else ("×", "–")
        ratio = self.max_min_ratio
        ratio_text = f"{ratio:.2f}{times}" if math.isfinite(ratio) else "inf"
        if self.near_uniform:
            return (f"near-uniform (max/min {ratio_text}, entropy {self.entropy_ratio:.2f} "
                    "of max)")
        return (f"weights {self.min_x_uniform:.2f}{dash}{self.max_x_uniform:.2f}{times} "
                f"uniform (1/N), entropy {self.entropy_ratio:.2f} of max")


def attention_range(weights: np.ndarray) -> AttentionRange:
    """:class:`AttentionRange` of a map of non-negative weights (normalised here to sum 1).

    Example:
        >>> r = attention_range(np.array([0.0, 0.0, 1.0, 0.0]))
        >>> r.entropy_ratio, r.max_x_uniform, r.near_uniform
        (0.0, 4.0, False)
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("attention weights must be finite, non-negative, not all zero")
    n = w.size
    p = w / w.sum()
    nz = p[p > 0]
    entropy = max(0.0, float(-(nz * np.log(nz)).sum()))
    ratio = entropy / math.log(n) if n > 1 else 1.0
    hi, lo = float(p.max() * n), float(p.min() * n)
    near = ratio >= NEAR_UNIFORM_ENTROPY or (lo > 0 and hi / lo < NEAR_UNIFORM_RATIO)
    return AttentionRange(n, min(ratio, 1.0), hi, lo, bool(near))


def auroc(scores: np.ndarray, positives: np.ndarray) -> float | None:
    """AUROC of ``scores`` for the patches ``positives`` (indices or a boolean mask) against
    the rest; ties count half. None when either side is empty.

    Example:
        >>> auroc(np.array([1.0, 1.0, 1.0]), np.array([0]))
        0.5
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    pos = np.asarray(positives)
    mask = pos.astype(bool) if pos.dtype == bool else np.isin(np.arange(s.size), pos)
    n_pos, n_neg = int(mask.sum()), int((~mask).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    # average ranks of ties (1-based)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[mask].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class PromptSelection:
    """Per question of one slide: AUROC against its evidence (None without evidence), entropy
    ratio; and the Pearson correlation between every two questions' maps (NaN if one is
    constant)."""

    names: list[str]
    auroc: dict[str, float | None]
    entropy_ratio: dict[str, float]
    correlation: np.ndarray  # [Q, Q]


def prompt_selection(maps: np.ndarray, names: Sequence[str],
                     evidence: Mapping[str, np.ndarray]) -> PromptSelection:
    """Selection metrics of one slide's question maps ``[Q, N]`` (rows named ``names``)
    against ``evidence`` (name → patch indices).

    Example:
        >>> maps = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
        >>> sel = prompt_selection(maps, ["a", "b"], {"a": np.array([0]), "b": np.array([3])})
        >>> sel.auroc, round(float(sel.correlation[0, 1]), 3)
        ({'a': 1.0, 'b': 1.0}, -0.333)
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != len(names):
        raise ValueError(f"maps must be [Q, N] with Q = {len(names)}, got {m.shape}")
    aurocs = {name: auroc(m[i], evidence[name]) if name in evidence else None
              for i, name in enumerate(names)}
    entropy = {name: attention_range(m[i]).entropy_ratio for i, name in enumerate(names)}
    centred = m - m.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (centred @ centred.T) / np.outer(norms, norms)
    return PromptSelection(list(names), aurocs, entropy, corr)
