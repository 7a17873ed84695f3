"""Evaluation figures (fivewsi.evaluation.figures): valid, non-blank PNGs of the fixed size."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from fivewsi.evaluation import figures
from fivewsi.evaluation.fewshot import TableRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def figure_problems(path: Path, size: tuple[int, int]) -> list[str]:
    """Why ``path`` is not a drawn figure of ``size`` pixels (empty list: it is one)."""
    from PIL import Image

    problems = []
    if path.read_bytes()[:8] != PNG_SIGNATURE:
        return ["not a PNG"]
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        if image.size != size:
            problems.append(f"size {image.size}, expected {size}")
        pixels = np.asarray(image.convert("RGB"))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    # Text, lines and fills give hundreds of colours (anti-aliasing); an empty figure has one.
    if colours < 50:
        problems.append(f"only {colours} distinct colours")
    # Share of pixels that are not the white background.
    inked = float((pixels < 250).any(axis=2).mean())
    if inked < 0.02:
        problems.append(f"only {inked:.3%} of the pixels drawn")
    if float(pixels.std()) < 5:
        problems.append(f"pixel sd {pixels.std():.2f}")
    return problems


def _cohort(n_classes: int, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def test_an_empty_figure_fails_the_check(tmp_path: Path) -> None:
    empty = figures.save_figure(figures.new_figure(figures.ROC_SIZE), tmp_path / "empty.png")
    problems = figure_problems(empty, figures.ROC_SIZE)
    assert any("colours" in p for p in problems) and any("drawn" in p for p in problems)
    assert figure_problems(empty, (10, 10))[0].startswith("size")


@pytest.mark.parametrize("n_classes", [2, 3])
def test_evaluation_figures_are_drawn_at_their_size(tmp_path: Path, n_classes: int) -> None:
    y, probs = _cohort(n_classes)
    classes = [f"class {i}" for i in range(n_classes)]
    backend = matplotlib.get_backend()
    params = dict(matplotlib.rcParams)
    drawn = {
        "roc": (figures.roc_figure(tmp_path / "roc.png", y, probs, classes, title="t"),
                figures.ROC_SIZE),
        "confusion": (figures.confusion_figure(
            tmp_path / "confusion.png", confusion_matrix(y, probs.argmax(1),
                                                         labels=range(n_classes)), classes),
            figures.CONFUSION_SIZE),
        "reliability": (figures.reliability_figure(tmp_path / "reliability.png", y, probs),
                        figures.RELIABILITY_SIZE),
    }
    for name, (path, size) in drawn.items():
        assert figure_problems(path, size) == [], name
    # No global state changed, no temporary file left behind.
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == params
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion.png", "reliability.png", "roc.png"]


def test_roc_needs_two_classes_and_tolerates_an_absent_one(tmp_path: Path) -> None:
    y, probs = _cohort(3)
    with pytest.raises(ValueError, match="two classes"):
        figures.roc_figure(tmp_path / "x.png", np.zeros(5, int), probs[:5], ["a", "b", "c"])
    keep = y != 2  # class c has no slide: two curves, and the title says why not three
    path = figures.roc_figure(tmp_path / "roc.png", y[keep], probs[keep], ["a", "b", "c"])
    assert figure_problems(path, figures.ROC_SIZE) == []


def test_confusion_figure_with_an_empty_row(tmp_path: Path) -> None:
    path = figures.confusion_figure(tmp_path / "c.png", [[3, 1], [0, 0]], ["a", "b"])
    assert figure_problems(path, figures.CONFUSION_SIZE) == []


def _table(models: dict[str, float], shots=(1, 2, 4, 8), seeds: int = 5) -> list[TableRow]:
    rng = np.random.default_rng(0)
    rows = []
    for model, base in models.items():
        for k in shots:
            for metric in ("balanced_accuracy", "auc", "accuracy"):
                values = list(np.clip(base + 0.03 * np.log2(k) + rng.normal(0, 0.04, seeds),
                                      0, 1))
                sd = float(np.std(values, ddof=1)) if seeds > 1 else None
                rows.append(TableRow(model, k, metric, float(np.mean(values)), sd, seeds,
                                     values))
    return rows


@pytest.mark.parametrize("seeds", [1, 5])
def test_shots_figure(tmp_path: Path, seeds: int) -> None:
    rows = _table({"five": 0.7, "abmil": 0.6}, seeds=seeds)
    rows += [TableRow("five+reports", 0, m, 0.65, None, 1, [0.65])
             for m in ("balanced_accuracy", "auc")]
    path = figures.shots_figure(tmp_path / "fewshot.png", rows)
    assert figure_problems(path, figures.SHOTS_SIZE) == []
    with pytest.raises(ValueError, match="no values"):
        figures.shots_figure(tmp_path / "none.png", [TableRow("a", 1, "auc", None, None, 0, [])])


def test_shots_figure_intervals_are_student_t() -> None:
    low, high = figures.t_interval([0.6, 0.7, 0.8])
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert (low, high) == pytest.approx((0.7 - half, 0.7 + half))


def test_crossval_figure(tmp_path: Path) -> None:
    per_fold = [{"metrics": {"balanced_accuracy": {"value": 0.7 + 0.05 * f},
                             "auc": {"value": None if f == 0 else 0.8}}} for f in range(3)]
    pooled = {"balanced_accuracy": {"value": 0.75, "ci_low": 0.6, "ci_high": 0.85},
              "auc": {"value": 0.8, "ci_low": None, "ci_high": None}}
    summary = {"per_fold": per_fold, "pooled": {"metrics": pooled}, "model": "abmil",
               "folds": 3, "n_slides": 30}
    path = figures.crossval_figure(tmp_path / "crossval.png", summary)
    assert figure_problems(path, figures.CROSSVAL_SIZE) == []
