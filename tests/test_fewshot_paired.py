"""Paired comparison of few-shot rows with the best label-only baseline (issue 11, item 6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fivewsi.evaluation.fewshot import (
    CELL_METRICS,
    FewshotCell,
    TableRow,
    _read_metrics,
    metric_cells,
    paired_csv,
    paired_differences,
    summarize,
    table_markdown,
)

BASE = [0.50, 0.60, 0.55, 0.70, 0.65]  # the better baseline ("abmil"), seeds 0..4
GAIN = [0.10, 0.12, 0.08, 0.11, 0.09]  # "five" − "abmil" per seed: mean 0.10
# sd of GAIN = sqrt(0.001 / 4); t(0.975, 4) = 2.7764451; half width = t · sd / √5
HALF = 2.7764451051977987 * math.sqrt(0.001 / 4) / math.sqrt(5)


def _cells() -> list[FewshotCell]:
    cells = []
    for seed in reversed(range(5)):  # any order: pairing is by seed, not by position
        metrics = {"balanced_accuracy": BASE[seed], "auc": BASE[seed]}
        cells.append(FewshotCell("abmil", 2, seed, Path("."), "trained", metrics))
        worse = {"balanced_accuracy": BASE[seed] - 0.2, "auc": BASE[seed] + 0.3}
        cells.append(FewshotCell("mean", 2, seed, Path("."), "reused", worse))
        gain = BASE[seed] + GAIN[seed]
        cells.append(FewshotCell("five", 2, seed, Path("."), "trained",
                                 {"balanced_accuracy": gain, "auc": gain}))
    cells.append(FewshotCell("five+reports", 0, None, Path("."), "trained",
                             {"balanced_accuracy": 0.7, "auc": 0.8}))
    return cells


def test_known_differences_give_the_t_interval() -> None:
    rows = paired_differences(summarize(_cells()), ["abmil", "mean"])
    five = next(r for r in rows if (r.model, r.metric) == ("five", "balanced_accuracy"))
    assert five.baseline == "abmil"  # the best label-only mean at k = 2
    assert five.seeds == [0, 1, 2, 3, 4] and five.n_pairs == 5
    assert five.differences == pytest.approx(GAIN)
    assert five.mean == pytest.approx(0.10)
    assert (five.low, five.high) == pytest.approx((0.10 - HALF, 0.10 + HALF))
    assert abs(HALF - 0.019632) < 1e-6
    # The other baseline is compared too: a constant difference has a zero-width interval.
    mean = next(r for r in rows if (r.model, r.metric) == ("mean", "balanced_accuracy"))
    assert (mean.mean, mean.low, mean.high) == pytest.approx((-0.2, -0.2, -0.2))
    # The best baseline is chosen per metric: for AUC it is "mean" (+0.3 over abmil).
    auc = next(r for r in rows if (r.model, r.metric) == ("five", "auc"))
    assert auc.baseline == "mean" and auc.mean == pytest.approx(0.10 - 0.3)
    # No baseline at k = 0: the zero-shot cell is not compared.
    assert {r.k for r in rows} == {2}


def test_only_seeds_both_have_are_paired() -> None:
    cells = [c for c in _cells() if not (c.model == "five" and c.seed in (1, 3))]
    cells.append(FewshotCell("five", 2, 3, Path("."), "failed", {"balanced_accuracy": 1.0}))
    rows = paired_differences(summarize(cells), ["abmil", "mean"])
    five = next(r for r in rows if (r.model, r.metric) == ("five", "balanced_accuracy"))
    assert five.seeds == [0, 2, 4]
    assert five.differences == pytest.approx([GAIN[0], GAIN[2], GAIN[4]])
    one = [c for c in _cells() if not (c.model == "five" and c.seed != 0)]
    single = paired_differences(summarize(one), ["abmil"])
    row = next(r for r in single if (r.model, r.metric) == ("five", "balanced_accuracy"))
    assert row.n_pairs == 1 and row.low is None and row.high is None


def test_fewshot_markdown_shows_the_paired_table() -> None:
    text = table_markdown(summarize(_cells()), n_seeds=5, baselines=["abmil", "mean"])
    assert "## Paired differences from the best label-only baseline" in text
    assert "Student-t interval over the paired seed differences" in text
    section = text.split("### balanced_accuracy")[1].split("###")[0]
    assert "| *baseline* | abmil |" in section
    low, high = 100 * (0.10 - HALF), 100 * (0.10 + HALF)
    assert f"| five | +10.0 [+{low:.1f}, +{high:.1f}] * |" in section
    assert "| mean | -20.0 [-20.0, -20.0] * |" in section
    csv_text = paired_csv(paired_differences(summarize(_cells()), ["abmil", "mean"]))
    assert csv_text.splitlines()[0].startswith("model,k,metric,baseline,mean_difference")


def test_default_baselines_are_the_registered_label_only_models() -> None:
    rows = paired_differences(summarize(_cells()))  # abmil and mean are label-only
    assert {r.baseline for r in rows} == {"abmil", "mean"}
    assert "five+reports" not in {r.model for r in rows}  # only at k = 0


def test_calibration_metrics_are_tabulated_with_the_lowest_in_bold() -> None:
    rows = [
        TableRow("a", 4, "ece", 0.02, None, 1, [0.02]),
        TableRow("b", 4, "ece", 0.10, None, 1, [0.10]),
        TableRow("a", 4, "balanced_accuracy", 0.6, None, 1, [0.6]),
        TableRow("b", 4, "balanced_accuracy", 0.7, None, 1, [0.7]),
    ]
    assert metric_cells(rows, "ece")[1] == {("a", 4)}
    assert metric_cells(rows, "balanced_accuracy")[1] == {("b", 4)}
    text = table_markdown(rows)
    assert "## ece (calibration, lower is better)" in text
    assert "| a | **2.0** |" in text
    # the headline table comes first, calibration after the discrimination metrics
    assert text.index("## balanced_accuracy") < text.index("## ece")


def test_cells_keep_calibration_metrics(tmp_path: Path) -> None:
    metrics = {name: {"value": 0.5} for name in CELL_METRICS}
    (tmp_path / "metrics.json").write_text(json.dumps({"metrics": {**metrics, "n": 10}}))
    cell = FewshotCell("a", 1, 0, tmp_path, "reused")
    _read_metrics(cell, tmp_path / "metrics.json")
    assert set(cell.metrics) == set(CELL_METRICS)
    assert {r.metric for r in summarize([cell])} == set(CELL_METRICS)
