"""Figures of an evaluation, drawn with matplotlib in one fixed style, written as PNG.

- :func:`roc_figure` — ROC curves, one-vs-rest per class (binary: one curve, ``classes[1]``
  positive as in the metrics), AUC in the legend.
- :func:`confusion_figure` — the confusion matrix twice: counts, and each row normalised to 1
  (the recall of each class on the diagonal).
- :func:`reliability_figure` — accuracy per confidence bin (slide counts above the bars), each
  bin's mean confidence, the diagonal of perfect calibration and the ECE in the title.
- :func:`shots_figure` — balanced accuracy and AUC against k for every model of the few-shot
  grid, mean ± 95 % Student-t interval over seeds, zero-shot as a horizontal line.
- :func:`crossval_figure` — balanced accuracy and AUC of every fold, their mean ± 95 % t-interval
  over folds, and the pooled value with its bootstrap interval.

Every figure has a fixed size in pixels (``*_SIZE``, at :data:`DPI`) and the style
:data:`STYLE`, applied with ``matplotlib.rc_context``: nothing changes matplotlib's global
state, no pyplot, no window (the figure is a plain ``Figure`` on an Agg canvas). Files are
written atomically (a temporary file in the folder, then ``os.replace``).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    >>> path = roc_figure(folder / "roc.png", np.array([0, 1, 1, 1]), probs, ["a", "b"])
    >>> Image.open(path).size == ROC_SIZE
    True
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import cycler, rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fivewsi.evaluation.calibration import N_BINS, expected_calibration_error, reliability_table
from fivewsi.utils.atomic import atomic_path

#: Dots per inch of every figure.
DPI = 100
#: Pixel sizes (width, height) of the figures.
ROC_SIZE = (640, 560)
CONFUSION_SIZE = (1040, 480)
RELIABILITY_SIZE = (640, 560)
SHOTS_SIZE = (1120, 480)
CROSSVAL_SIZE = (720, 480)
#: The fixed style (matplotlib rc parameters) of every figure.
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs everywhere
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": cycler(color=[
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf"]),
    "lines.linewidth": 1.8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "image.cmap": "Blues",
}
#: Metrics of the few-shot and cross-validation figures.
FIGURE_METRICS = ("balanced_accuracy", "auc")
_TITLES = {"balanced_accuracy": "balanced accuracy", "auc": "AUC"}


def new_figure(size: tuple[int, int]) -> Figure:
    """An empty figure of ``size`` pixels on its own Agg canvas (draw inside
    ``rc_context(STYLE)``).

    Example:
        >>> new_figure((320, 240)).get_size_inches().tolist()
        [3.2, 2.4]
    """
    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as a PNG at ``path`` atomically, its size exactly as made."""
    path = Path(path)
    with rc_context(STYLE), atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return path


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The Student-t interval of the mean of ``values``; None with fewer than two.

    Example:
        >>> [round(v, 3) for v in t_interval([0.6, 0.7, 0.8])]
        [0.452, 0.948]
        >>> t_interval([0.5]) is None
        True
    """
    from scipy import stats

    values = [float(v) for v in values]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


# ----------------------------------------------------------------------------------------------
# evaluate


def roc_figure(
    path: str | os.PathLike[str],
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    title: str = "",
    unit: str = "slides",
) -> Path:
    """ROC curves of ``probs`` (``[n, C]``) against class indices ``y``: binary one curve
    (``classes[1]`` positive), else one-vs-rest per class present in ``y``; AUC in the legend.

    Raises:
        ValueError: ``y`` holds fewer than two classes (no ROC curve is defined).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise ValueError("a ROC curve needs slides of at least two classes")
    positives = [1] if len(classes) == 2 else present
    with rc_context(STYLE):
        figure = new_figure(ROC_SIZE)
        ax = figure.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="chance")
        for c in positives:
            fpr, tpr, _ = roc_curve(y == c, probs[:, c])
            auc = roc_auc_score(y == c, probs[:, c])
            name = classes[c] if len(classes) == 2 else f"{classes[c]} vs rest"
            ax.plot(fpr, tpr, drawstyle="steps-post",
                    label=f"{name} (AUC {auc:.3f}, {int((y == c).sum())} positive)")
        missing = [classes[c] for c in range(len(classes)) if c not in present]
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate (1 − specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        kind = "ROC" if len(classes) == 2 else "ROC one-vs-rest"
        heading = f"{kind}, {len(y)} {unit}"
        if missing:
            heading += f"\n(no slide of {', '.join(missing)}: no curve)"
        ax.set_title(f"{title}\n{heading}".strip())
        ax.legend(loc="lower right")
    return save_figure(figure, path)


def confusion_figure(
    path: str | os.PathLike[str],
    matrix: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str],
    *,
    title: str = "",
    unit: str = "slides",
) -> Path:
    """The confusion matrix (``matrix[i][j]``: true i predicted j) as counts and normalised per
    row (a row without slides stays empty)."""
    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    labels = [str(c) for c in classes]
    with rc_context(STYLE):
        figure = new_figure(CONFUSION_SIZE)
        for i, (values, words) in enumerate(((counts, "counts"), (rates, "row-normalised"))):
            ax = figure.add_subplot(1, 2, i + 1)
            scale = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
            ax.imshow(np.ma.masked_invalid(values.astype(np.float64)), cmap="Blues", vmin=0,
                      vmax=max(scale, 1e-9) if i == 0 else 1.0)
            for (r, c), value in np.ndenumerate(values):
                if not np.isfinite(value):
                    continue
                dark = value > 0.6 * (scale if i == 0 else 1.0)
                text = f"{int(value)}" if i == 0 else f"{value:.2f}"
                ax.text(c, r, text, ha="center", va="center",
                        color="white" if dark else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 3 else 0)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.grid(False)
            ax.set_title(words if i else f"{words} ({int(counts.sum())} {unit})")
        if title:
            figure.suptitle(title)
    return save_figure(figure, path)


def reliability_figure(
    path: str | os.PathLike[str],
    y: np.ndarray,
    probs: np.ndarray,
    *,
    title: str = "",
    n_bins: int = N_BINS,
    unit: str = "slides",
) -> Path:
    """The reliability diagram: accuracy per equal-width confidence bin (bars, the bin's count
    above), each bin's mean confidence (dots), perfect calibration (diagonal), ECE in the
    title (:mod:`fivewsi.evaluation.calibration`)."""
    y = np.asarray(y)
    ece = expected_calibration_error(y, probs, n_bins)
    rows = [r for r in reliability_table(y, probs, n_bins) if r["n"]]
    with rc_context(STYLE):
        figure = new_figure(RELIABILITY_SIZE)
        ax = figure.add_subplot()
        ax.plot([0, 1], [0, 1], linestyle="--", color="#777777", linewidth=1.2,
                label="perfect calibration")
        width = 1.0 / n_bins
        bars = ax.bar([r["low"] for r in rows], [r["accuracy"] for r in rows], width=width,
                      align="edge", color="#5a82c8", edgecolor="#284690", label="accuracy")
        ax.bar_label(bars, labels=[str(r["n"]) for r in rows], padding=2, fontsize=8)
        ax.plot([r["confidence"] for r in rows], [r["confidence"] for r in rows], "o",
                color="#c83c3c", markersize=5, label="mean confidence of the bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel(f"accuracy (bar labels: {unit} per bin)")
        heading = f"ECE {ece:.3f} ({len(y)} {unit}, {n_bins} bins)"
        ax.set_title(f"{title}\n{heading}".strip())
        ax.legend(loc="upper left")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------------------------
# few-shot grid and cross-validation


def shots_figure(
    path: str | os.PathLike[str],
    table: Sequence[Any],
    *,
    metrics: Sequence[str] = FIGURE_METRICS,
    title: str = "",
) -> Path:
    """Each metric against k, one line per model: mean over seeds with its 95 % Student-t
    interval (a band; none with one seed); models scored at k = 0 only (zero-shot) as a
    horizontal dashed line. ``table`` holds rows with ``model, k, metric, mean, values``
    (:class:`fivewsi.evaluation.fewshot.TableRow`).

    Raises:
        ValueError: no row of ``table`` has a value for these metrics.
    """
    rows = [r for r in table if r.metric in metrics and r.mean is not None]
    if not rows:
        raise ValueError(f"no values of {', '.join(metrics)} to draw")
    models = list(dict.fromkeys(r.model for r in rows))
    shots = sorted({r.k for r in rows if r.k > 0})
    with rc_context(STYLE):
        figure = new_figure(SHOTS_SIZE)
        colours = STYLE["axes.prop_cycle"].by_key()["color"]
        for i, metric in enumerate(metrics):
            ax = figure.add_subplot(1, len(metrics), i + 1)
            for j, model in enumerate(models):
                colour = colours[j % len(colours)]
                mine = sorted((r for r in rows if r.model == model and r.metric == metric),
                              key=lambda r: r.k)
                for zero in (r for r in mine if r.k == 0):
                    ax.axhline(zero.mean, color=colour, linestyle="--", linewidth=1.5,
                               label=f"{model} zero-shot (k=0)")
                line = [r for r in mine if r.k > 0]
                if not line:
                    continue
                ks = [r.k for r in line]
                ax.plot(ks, [r.mean for r in line], "o-", color=colour, label=model)
                bands = [(r.k, t_interval(r.values)) for r in line]
                bands = [(k, b) for k, b in bands if b is not None]
                if bands:
                    ax.fill_between([k for k, _ in bands], [b[0] for _, b in bands],
                                    [b[1] for _, b in bands], color=colour, alpha=0.15,
                                    linewidth=0)
                    ax.errorbar([k for k, _ in bands], [(b[0] + b[1]) / 2 for _, b in bands],
                                yerr=[(b[1] - b[0]) / 2 for _, b in bands], fmt="none",
                                ecolor=colour, capsize=3, linewidth=1)
            if shots and max(shots) / min(shots) >= 4:
                ax.set_xscale("log", base=2)
            if shots:
                ax.set_xticks(shots, [str(k) for k in shots])
                ax.minorticks_off()
            ax.set_xlabel("k (labelled slides per class)")
            ax.set_ylabel(_TITLES.get(metric, metric))
            ax.set_title(f"{_TITLES.get(metric, metric)}: mean ± 95 % t-interval over seeds")
            lows = [r.mean for r in rows if r.metric == metric]
            lows += [band[0] for r in rows if r.metric == metric
                     for band in [t_interval(r.values)] if band is not None]
            ax.set_ylim(max(0.0, min([*lows, 0.5]) - 0.05), 1.02)
        legend: dict[str, Any] = {}  # one entry per label over every panel
        for ax in figure.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
        figure.legend(list(legend.values()), list(legend), loc="outside lower center",
                      ncols=min(len(legend), 6))
        if title:
            figure.suptitle(title)
    return save_figure(figure, path)


def crossval_figure(
    path: str | os.PathLike[str],
    summary: Mapping[str, Any],
    *,
    metrics: Sequence[str] = FIGURE_METRICS,
    title: str = "",
) -> Path:
    """Per metric: each fold's value (dots), their mean with its 95 % t-interval over folds,
    and the pooled value over every held-out slide with its bootstrap interval. ``summary`` is
    crossval's ``metrics.json`` (``per_fold``, ``pooled``)."""
    per_fold = summary["per_fold"]
    pooled = summary["pooled"]["metrics"]
    with rc_context(STYLE):
        figure = new_figure(CROSSVAL_SIZE)
        ax = figure.add_subplot()
        ax.axhline(0.5, color="#bbbbbb", linestyle=":", linewidth=1)
        for i, metric in enumerate(metrics):
            values = [e["metrics"][metric]["value"] for e in per_fold
                      if e["metrics"][metric]["value"] is not None]
            x = np.full(len(values), i - 0.2) + np.linspace(-0.06, 0.06, max(len(values), 1))[
                :len(values)]
            ax.plot(x, values, "o", color="#7f7f7f", alpha=0.8,
                    label="each fold" if i == 0 else None)
            if values:
                mean = float(np.mean(values))
                band = t_interval(values)
                yerr = None if band is None else [[mean - band[0]], [band[1] - mean]]
                ax.errorbar([i], [mean], yerr=yerr, fmt="s", color="#1f77b4", capsize=4,
                            label="mean over folds ± 95 % t" if i == 0 else None)
            p = pooled[metric]
            if p["value"] is not None:
                yerr = (None if p["ci_low"] is None
                        else [[p["value"] - p["ci_low"]], [p["ci_high"] - p["value"]]])
                ax.errorbar([i + 0.2], [p["value"]], yerr=yerr, fmt="D", color="#d62728",
                            capsize=4, label="pooled ± 95 % bootstrap" if i == 0 else None)
        ax.set_xticks(range(len(metrics)), [_TITLES.get(m, m) for m in metrics])
        ax.set_xlim(-0.6, len(metrics) - 0.4)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("value")
        heading = (f"{summary.get('model', '')}: {summary.get('folds', len(per_fold))}-fold "
                   f"cross-validation, {summary.get('n_slides', '')} slides").strip()
        if summary.get("shots"):
            heading += f", k={summary['shots']} per class"
        ax.set_title(f"{title}\n{heading}".strip())
        ax.legend(loc="lower right")
    return save_figure(figure, path)
