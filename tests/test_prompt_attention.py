"""Attention maps in absolute terms: selection metrics, near-uniform labels, heatmap legends."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fivewsi.predict.attention import attention_range, auroc, prompt_selection
from fivewsi.predict.heatmaps import attention_label, with_legend
from fivewsi.predict.html import heatmap_caption


def test_auroc_on_constructed_maps() -> None:
    rng = np.random.default_rng(0)
    n = 50
    evidence = np.array([3, 7, 8, 20])
    mask = np.zeros(n, bool)
    mask[evidence] = True
    assert auroc(mask.astype(float), evidence) == 1.0  # the true mask against itself
    assert auroc(mask.astype(float), mask) == 1.0  # boolean mask form
    assert auroc(-mask.astype(float), evidence) == 0.0
    assert auroc(np.ones(n), evidence) == 0.5  # ties count half
    assert auroc(np.ones(n), np.array([], dtype=np.int64)) is None
    assert auroc(np.ones(n), np.arange(n)) is None
    scores = rng.random(n)  # agrees with the pairwise definition
    pairs = [(a > b) + 0.5 * (a == b) for a in scores[mask] for b in scores[~mask]]
    assert auroc(scores, evidence) == pytest.approx(float(np.mean(pairs)))


def test_entropy_and_range() -> None:
    uniform = attention_range(np.full(36, 1 / 36))
    assert uniform.entropy_ratio == pytest.approx(1.0) and uniform.near_uniform
    assert uniform.max_x_uniform == pytest.approx(1.0) and uniform.max_min_ratio == pytest.approx(1)
    # the trained maps: weights 0.022-0.035 where uniform is 0.028 (36 patches)
    w = np.linspace(0.022, 0.035, 36)
    r = attention_range(w / w.sum())
    assert r.near_uniform and r.entropy_ratio > 0.99
    peaked = np.full(100, 0.1)
    peaked[:5] = 50.0
    p = attention_range(peaked)
    assert not p.near_uniform and p.entropy_ratio < 0.9
    assert p.max_x_uniform == pytest.approx(100 * 50 / peaked.sum())
    one_hot = attention_range(np.eye(1, 8)[0])
    assert one_hot.entropy_ratio == 0.0 and math.isinf(one_hot.max_min_ratio)
    # entropy high but a spread of ≥ 1.5x is not near-uniform by ratio alone
    spread = attention_range(np.array([1.0, 1.0, 1.0, 2.0] * 50))
    assert spread.entropy_ratio > 0.95 and not spread.near_uniform
    assert attention_range(np.array([5.0])).entropy_ratio == 1.0
    for bad in (np.array([]), np.array([0.0, 0.0]), np.array([-1.0, 2.0]),
                np.array([np.nan, 1.0])):
        with pytest.raises(ValueError):
            attention_range(bad)


def test_correlation_between_questions() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(40)
    same = np.stack([base, base * 2, 1 - base])
    sel = prompt_selection(same, ["a", "b", "c"], {"a": np.array([0, 1])})
    assert sel.correlation[0, 1] == pytest.approx(1.0)
    assert sel.correlation[0, 2] == pytest.approx(-1.0)
    assert sel.auroc["b"] is None and sel.auroc["a"] is not None
    apart = np.zeros((2, 40))
    apart[0, :10] = 1.0
    apart[1, 30:] = 1.0
    sel = prompt_selection(apart + 0.01, ["x", "y"],
                           {"x": np.arange(10), "y": np.arange(30, 40)})
    assert sel.auroc == {"x": 1.0, "y": 1.0}
    assert sel.correlation[0, 1] < 0
    assert sel.entropy_ratio["x"] < 0.9
    with pytest.raises(ValueError):
        prompt_selection(apart, ["x"], {})


def test_heatmap_labels_say_near_uniform() -> None:
    flat = np.linspace(0.022, 0.035, 36)
    label = attention_label(flat)
    assert label is not None and label.startswith("near-uniform")
    assert "max/min 1.59×" in label or "entropy" in label
    peaked = np.full(50, 0.001)
    peaked[:3] = 0.3
    peaked_label = attention_label(peaked)
    assert peaked_label is not None and peaked_label.startswith("weights ")
    assert "× uniform (1/N)" in peaked_label
    assert attention_label(np.array([-1.0, 1.0])) is None  # not attention weights
    assert attention_label(flat, ascii_only=True).isascii()
    assert heatmap_caption("stas", label) == f"stas — {label}"
    assert heatmap_caption("stas", "") == "stas"


def test_legend_band_is_drawn_below_the_map() -> None:
    image = np.zeros((80, 240, 3), np.uint8)
    out = with_legend(image, np.full(20, 0.05))
    assert out.shape[1] == 240 and out.shape[0] > 80
    assert np.array_equal(out[:80], image)  # the map itself is untouched
    band = out[80:]
    assert len({tuple(c) for c in band[8, 10:230].tolist()}) > 20  # a colour ramp
    # near-uniform: the label is drawn in red ink; a peaked map's in dark ink
    red = (band[:, :, 0] > 150) & (band[:, :, 1] < 90)
    assert red[30:].any()
    peaked = np.full(20, 0.001)
    peaked[0] = 1.0
    band2 = with_legend(image, peaked)[80:]
    assert not ((band2[30:, :, 0] > 150) & (band2[30:, :, 1] < 90)).any()
