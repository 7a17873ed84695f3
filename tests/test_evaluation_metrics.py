"""Slide-level metrics: scikit-learn values, bootstrap intervals, and their properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from fivewsi.evaluation.metrics import (
    METRICS,
    classification_metrics,
    encode_labels,
    resampled_metrics,
)

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def predictions(draw: st.DrawFn, n_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """Labels (every class present at least once) and probability rows."""
    c = n_classes or draw(st.integers(2, 4))
    n = draw(st.integers(c, 30))
    labels = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    labels[:c] = range(c)
    # Scores on a coarse grid so ties (and constant columns) occur.
    raw = draw(
        st.lists(
            st.lists(st.integers(0, 4), min_size=c, max_size=c), min_size=n, max_size=n
        )
    )
    scores = np.asarray(raw, dtype=float) + 0.5
    probs = scores / scores.sum(axis=1, keepdims=True)
    return [f"c{i}" for i in labels], probs


def _classes(probs: np.ndarray) -> list[str]:
    return [f"c{i}" for i in range(probs.shape[1])]


def test_values_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    classes = ["a", "b", "c"]
    m = classification_metrics(np.array(classes)[y], probs, classes, n_bootstrap=100)
    pred = probs.argmax(1)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"]["value"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc"]["value"] == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    assert np.array(m["confusion_matrix"]).sum() == 60
    assert np.trace(np.array(m["confusion_matrix"])) == (pred == y).sum()
    assert m["n"] == 60


def test_binary_auc_uses_second_class_as_positive() -> None:
    y = ["neg", "pos", "pos", "neg", "pos"]
    p_pos = np.array([0.2, 0.9, 0.4, 0.5, 0.7])
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    m = classification_metrics(y, probs, ["neg", "pos"], n_bootstrap=0)
    assert m["auc"]["value"] == pytest.approx(roc_auc_score(np.array(y) == "pos", p_pos))
    assert "'pos'" in m["auc"]["kind"]
    assert m["auc"]["ci_low"] is None  # no resamples, no interval
    # Swapping the class order flips the positive class; AUC stays (scores are complementary).
    swapped = classification_metrics(y, probs[:, ::-1], ["pos", "neg"], n_bootstrap=0)
    assert swapped["auc"]["value"] == pytest.approx(m["auc"]["value"])


@given(data=predictions(), seed=st.integers(0, 2**16))
@FAST
def test_resampled_metrics_equal_scikit_learn_on_resamples(
    data: tuple[list[str], np.ndarray], seed: int
) -> None:
    labels, probs = data
    classes = _classes(probs)
    y = encode_labels(labels, classes)
    pred = probs.argmax(1)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(y), size=(3, len(y)))
    counts = np.stack([np.bincount(i, minlength=len(y)) for i in index])
    fast = resampled_metrics(counts, y, pred, probs, np.unique(y))
    for b, rows in enumerate(index):
        yb, pb, sb = y[rows], pred[rows], probs[rows]
        assert fast["accuracy"][b] == pytest.approx(accuracy_score(yb, pb))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fast["balanced_accuracy"][b] == pytest.approx(balanced_accuracy_score(yb, pb))
        assert fast["macro_f1"][b] == pytest.approx(
            f1_score(yb, pb, average="macro", zero_division=0)
        )
        if len(np.unique(yb)) < len(classes):
            assert np.isnan(fast["auc"][b])
        elif len(classes) == 2:
            assert fast["auc"][b] == pytest.approx(roc_auc_score(yb == 1, sb[:, 1]))
        else:
            assert fast["auc"][b] == pytest.approx(
                roc_auc_score(yb, sb, multi_class="ovr", average="macro")
            )


@given(n_classes=st.integers(2, 4), n=st.integers(1, 25), seed=st.integers(0, 1000))
@FAST
def test_perfect_predictions_score_one_with_degenerate_interval(
    n_classes: int, n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    probs = np.eye(n_classes)[y] * 0.9 + 0.1 / n_classes
    classes = [f"c{i}" for i in range(n_classes)]
    m = classification_metrics(np.array(classes)[y], probs, classes, n_bootstrap=200, seed=seed)
    names = METRICS if len(np.unique(y)) > 1 else ("accuracy", "balanced_accuracy", "macro_f1")
    for name in names:
        assert m[name]["value"] == 1.0
        assert (m[name]["ci_low"], m[name]["ci_high"]) == (1.0, 1.0)
    if len(np.unique(y)) == 1:
        assert m["auc"]["value"] is None
        assert m["auc"]["n_resamples"] == 0


@given(data=predictions(), seed=st.integers(0, 2**16))
@FAST
def test_interval_contains_the_value_for_accuracy(
    data: tuple[list[str], np.ndarray], seed: int
) -> None:
    labels, probs = data
    m = classification_metrics(labels, probs, _classes(probs), n_bootstrap=300, seed=seed)
    acc = m["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    for name in METRICS:
        assert 0.0 <= m[name]["ci_low"] <= m[name]["ci_high"] <= 1.0


@pytest.mark.parametrize("n_classes", [2, 3])
def test_interval_contains_the_value_on_realistic_data(n_classes: int) -> None:
    # Percentile intervals need not contain a biased statistic's value on tiny sets; on
    # realistic test sets (here 120 slides, a fair classifier) they do.
    for seed in range(10):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, n_classes, 120)
        probs = rng.dirichlet(np.ones(n_classes), 120) + np.eye(n_classes)[y] * 0.4
        classes = [f"c{i}" for i in range(n_classes)]
        m = classification_metrics(np.array(classes)[y], probs, classes, seed=seed)
        for name in METRICS:
            assert m[name]["ci_low"] <= m[name]["value"] <= m[name]["ci_high"], (seed, name)
            assert m[name]["ci_high"] - m[name]["ci_low"] < 0.4


@given(data=predictions(), seed=st.integers(0, 2**16))
@FAST
def test_values_invariant_to_row_order(data: tuple[list[str], np.ndarray], seed: int) -> None:
    labels, probs = data
    classes = _classes(probs)
    order = np.random.default_rng(seed).permutation(len(labels))
    a = classification_metrics(labels, probs, classes, n_bootstrap=0)
    b = classification_metrics(np.array(labels)[order], probs[order], classes, n_bootstrap=0)
    for name in METRICS:
        assert a[name]["value"] == pytest.approx(b[name]["value"])
    assert a["confusion_matrix"] == b["confusion_matrix"]


@given(n_classes=st.integers(2, 4), seed=st.integers(0, 1000))
@FAST
def test_constant_scores_give_auc_one_half(n_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.r_[np.arange(n_classes), rng.integers(0, n_classes, 20)]
    probs = np.full((len(y), n_classes), 1.0 / n_classes)
    classes = [f"c{i}" for i in range(n_classes)]
    m = classification_metrics(np.array(classes)[y], probs, classes, n_bootstrap=100, seed=seed)
    assert m["auc"]["value"] == pytest.approx(0.5)
    assert m["auc"]["ci_low"] == pytest.approx(0.5)
    assert m["auc"]["ci_high"] == pytest.approx(0.5)


def test_three_classes_and_skipped_auc_resamples() -> None:
    # One slide of the rare class: many resamples lack it and are skipped for AUC only.
    y = ["a"] * 10 + ["b"] * 10 + ["c"]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), len(y))
    m = classification_metrics(y, probs, ["a", "b", "c"], n_bootstrap=500, seed=1)
    assert m["accuracy"]["n_resamples"] == 500
    # P(rare slide drawn at least once in 21 draws) = 1 - (20/21)^21 ≈ 0.64
    assert 250 < m["auc"]["n_resamples"] < 400
    assert "one-vs-rest" in m["auc"]["kind"]
    assert len(m["confusion_matrix"]) == 3


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    rng = np.random.default_rng(5)
    y = np.array(["x", "y"])[rng.integers(0, 2, 40)]
    probs = rng.dirichlet(np.ones(2), 40)
    a = classification_metrics(y, probs, ["x", "y"], seed=7)
    b = classification_metrics(y, probs, ["x", "y"], seed=7)
    c = classification_metrics(y, probs, ["x", "y"], seed=8)
    assert a == b
    assert a["accuracy"]["value"] == c["accuracy"]["value"]
    assert any(a[name]["ci_low"] != c[name]["ci_low"] for name in METRICS)


def test_classes_absent_from_the_labels() -> None:
    # A model with 3 classes evaluated on slides of 2: AUC over the classes present.
    y = ["a", "b", "a", "b"]
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    m = classification_metrics(y, probs, ["a", "b", "c"], n_bootstrap=50)
    # class a separates perfectly (AUC 1), class b ranks 3 of 4 pairs right; c has no slides.
    assert m["auc"]["value"] == pytest.approx((1.0 + 0.75) / 2)
    assert m["accuracy"]["value"] == 0.75


def test_clear_errors() -> None:
    probs = np.full((2, 2), 0.5)
    with pytest.raises(ValueError, match="not among the classes"):
        classification_metrics(["a", "z"], probs, ["a", "b"])
    with pytest.raises(ValueError, match="must be"):
        classification_metrics(["a", "b"], np.full((2, 3), 0.3), ["a", "b"])
    with pytest.raises(ValueError, match="no slides"):
        classification_metrics([], np.empty((0, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(["a", "b"], np.array([[np.nan, 1], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="two classes"):
        classification_metrics(["a"], np.ones((1, 1)), ["a"])
