"""`fivewsi demo`: sizes and settings, and the whole pipeline end to end (slow)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fivewsi.demo import SIZES, DemoError, _check_settings, _resolve_size


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_sizes_and_settings_are_checked(tmp_path):
    spec = _resolve_size("small", 20, 3)
    assert (spec.n_train, spec.n_test, spec.shots) == (12, 8, 3)
    assert _resolve_size(SIZES["default"], None, None) == SIZES["default"]
    with pytest.raises(DemoError, match="unknown demo size"):
        _resolve_size("huge", None, None)
    with pytest.raises(DemoError, match="cannot hold"):
        _resolve_size("small", 5, 2)
    _check_settings(tmp_path, spec, 0)
    _check_settings(tmp_path, spec, 0)  # the same demo again: reused
    assert json.loads((tmp_path / "demo.json").read_text())["seed"] == 0
    with pytest.raises(DemoError, match="other settings"):
        _check_settings(tmp_path, spec, 1)


def test_default_demo_settings_are_the_documented_ones():
    """docs/benchmarks.md "The demo" measured exactly the default size: it states its settings."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    section = text.split("## The demo", 1)[1].split("\n## ", 1)[0]
    assert repr(SIZES["default"]) in " ".join(section.split())
    # enough report-labelled slides to pretrain on: every 8th training slide has no report
    spec = SIZES["default"]
    assert spec.n_train - spec.n_train // 8 >= 120


def demo_app() -> typer.Typer:
    from fivewsi.cli import app

    return app


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    runner = CliRunner()
    env = {"COLUMNS": "200"}
    result = runner.invoke(demo_app(), ["demo", "--out", str(out), "--size", "small",
                                        "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    spec = SIZES["small"]
    n_slides = spec.n_train + spec.n_test

    # every step's outputs
    slides = read_csv(out / "data" / "slides.csv")
    assert len(slides) == n_slides
    assert len(list((out / "data" / "slides").glob("*.tif"))) == n_slides
    labels = read_csv(out / "reports" / "LABELS.csv")
    assert labels and all(r["status"] == "ok" for r in labels)
    cohort = read_csv(out / "cohort.csv")
    assert [r["slide_id"] for r in cohort] == [r["slide_id"] for r in slides]
    with_report = {r["slide_id"] for r in labels if r["fine_grained_label"]}
    assert {r["slide_id"] for r in cohort if r["report_label"]} == with_report
    assert len(list((out / "preprocessed" / "features").glob("*.h5"))) == n_slides
    for run in ("pretrain", "fewshot"):
        info = json.loads((out / "runs" / run / "run.json").read_text())
        assert info["status"] == "finished"
        assert (out / "runs" / run / "model.safetensors").exists()
    assert json.loads((out / "runs" / "fewshot" / "run.json").read_text())["stage"] == "classes"
    # pretraining keeps its last weights: no validation hold-out to pick an epoch by
    pretrain_info = json.loads((out / "runs" / "pretrain" / "run.json").read_text())
    assert pretrain_info["config"]["val_fraction"] == 0
    for folder in ("runs/fewshot/evaluation/test", "runs/pretrain/evaluation/zero-shot"):
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert metrics["n"] == spec.n_test and metrics["split"] == "test"
    test_ids = [r["slide_id"] for r in slides if r["split"] == "test"]
    predictions = read_csv(out / "predictions" / "predictions.csv")
    assert sorted(r["slide_id"] for r in predictions) == sorted(test_ids)
    assert all(r["status"] == "ok" and r["predicted"] in ("LUAD", "LUSC") for r in predictions)
    page = (out / "predictions" / "report.html").read_text(encoding="utf-8")
    assert all(slide_id in page for slide_id in test_ids)
    # the page shows the run's test evaluation figures (runs/fewshot/evaluation/test)
    assert "<h2>Evaluation</h2>" in page and "ROC curves (one-vs-rest)" in page
    for name in ("roc.png", "confusion.png", "reliability.png"):
        assert (out / "runs" / "fewshot" / "evaluation" / "test" / name).is_file()

    # what the user sees: each command, the metrics and where the page is
    text = " ".join(result.output.split())
    for command in ("fivewsi reports extract", "fivewsi cohort merge", "fivewsi preprocess",
                    "--val-fraction 0", "--init runs/pretrain", "fivewsi evaluate",
                    "fivewsi predict"):
        assert command in text
    assert "balanced_accuracy" in text and "report.html" in text
    assert f"fivewsi view {(out / 'predictions').resolve()}" in text  # and how to look at it

    # a rerun reuses the finished work; other settings in the same folder are refused
    stamp = os.stat(out / "runs" / "fewshot" / "model.safetensors").st_mtime_ns
    again = runner.invoke(demo_app(), ["demo", "--out", str(out), "--size", "small",
                                       "--no-progress"], env=env)
    assert again.exit_code == 0, again.output
    assert "reused" in again.output
    assert os.stat(out / "runs" / "fewshot" / "model.safetensors").st_mtime_ns == stamp
    other = runner.invoke(demo_app(), ["demo", "--out", str(out), "--slides", "20",
                                       "--no-progress"], env=env)
    assert other.exit_code == 2 and "other settings" in other.output
