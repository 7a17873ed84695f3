"""`fivewsi demo`: the synthetic demo data, and the whole pipeline end to end (slow)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from fivewsi.demo import (
    CLASS_STYLES,
    SIZES,
    DemoError,
    _check_settings,
    _resolve_size,
    demo_regions,
    write_demo_data,
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_demo_data_tables_slides_and_reports(tmp_path):
    from fivewsi.cohort.table import read_classes
    from fivewsi.reports.pipeline import extract_reports
    from fivewsi.reports.questions import load_question_set
    from fivewsi.reports.render import render_label
    from fivewsi.slides.readers import open_slide

    data = write_demo_data(tmp_path, n_train=6, n_test=4, shots=2, seed=3, width=1024,
                           height=768, missing_report_every=3)
    slides = read_csv(data.slides_csv)
    assert [r["slide_id"] for r in slides] == [f"demo-{i:03d}" for i in range(10)]
    train = [r for r in slides if r["split"] == "train"]
    test = [r for r in slides if r["split"] == "test"]
    assert len(train) == 6 and len(test) == 4
    for cls in ("LUAD", "LUSC"):  # shots labelled per class; the rest known by report only
        assert sum(r["label"] == cls for r in train) == 2
        assert sum(r["label"] == cls for r in test) == 2
    assert sum(r["label"] == "" for r in train) == 2
    truth = {s.slide_id: s for s in data.slides}
    assert all(truth[r["slide_id"]].label == r["label"] for r in slides if r["label"])

    reports = read_csv(data.reports_csv)
    assert len(reports) == 8  # every 3rd training slide has no report
    assert {s.slide_id for s in data.slides if s.reported is None} == (
        {r["slide_id"] for r in slides} - {r["slide_id"] for r in reports}
    )
    # The offline extractor reads back exactly the fields each report states.
    extract_reports(data.reports_csv, tmp_path / "LABELS.csv", id_column="slide_id",
                    progress=False)
    qs = load_question_set("lung")
    for row in read_csv(tmp_path / "LABELS.csv"):
        assert row["status"] == "ok"
        assert row["fine_grained_label"] == render_label(truth[row["slide_id"]].reported, qs)

    classes = read_classes(data.classes_csv)
    assert [c.name for c in classes] == ["LUAD", "LUSC"] and all(c.description for c in classes)
    with open_slide(data.slides[0].path) as slide:
        assert slide.dimensions == (1024, 768) and slide.mpp == 0.5


def test_demo_data_is_deterministic_and_reuses_slides(tmp_path):
    first = write_demo_data(tmp_path / "a", n_train=4, n_test=2, shots=1, seed=1, width=512,
                            height=512)
    stamps = {s.path: s.path.stat().st_mtime_ns for s in first.slides}
    again = write_demo_data(tmp_path / "a", n_train=4, n_test=2, shots=1, seed=1, width=512,
                            height=512)
    assert {s.path: s.path.stat().st_mtime_ns for s in again.slides} == stamps
    other = write_demo_data(tmp_path / "b", n_train=4, n_test=2, shots=1, seed=1, width=512,
                            height=512)
    for name in ("slides.csv", "reports.csv", "classes.csv"):
        assert (first.root / name).read_bytes() == (other.root / name).read_bytes()
    assert first.slides[0].path.read_bytes() == other.slides[0].path.read_bytes()
    seeded = write_demo_data(tmp_path / "c", n_train=4, n_test=2, shots=1, seed=2, width=512,
                             height=512)
    assert (seeded.root / "reports.csv").read_bytes() != (first.root / "reports.csv").read_bytes()


def test_tumour_regions_follow_class_differentiation_and_stas():
    rng = np.random.default_rng(0)
    luad = demo_regions("LUAD", {"differentiation": "moderate", "stas": "absent"}, rng, 3072, 2048)
    lusc = demo_regions("LUSC", {"differentiation": "moderate", "stas": "absent"}, rng, 3072, 2048)
    assert len(luad) == len(lusc) == 1
    # LUSC: larger, darker nuclei, fewer of them, in eosin-rich stroma
    assert lusc[0].size > luad[0].size and lusc[0].darkness > luad[0].darkness
    assert lusc[0].density < luad[0].density and lusc[0].eosin > luad[0].eosin
    assert luad[0].size == CLASS_STYLES["LUAD"]["size"]
    poor = demo_regions("LUAD", {"differentiation": "poor", "stas": "absent"}, rng, 3072, 2048)
    well = demo_regions("LUAD", {"differentiation": "well", "stas": "absent"}, rng, 3072, 2048)
    assert poor[0].size > luad[0].size > well[0].size
    stas = demo_regions("LUAD", {"differentiation": "well", "stas": "present"}, rng, 3072, 2048)
    main, satellites = stas[0], stas[1:]
    assert 3 <= len(satellites) <= 5
    for s in satellites:  # small foci outside the main tumour
        assert s.radius < main.radius / 4
        assert np.hypot(s.x - main.x, s.y - main.y) > main.radius


def test_sizes_and_settings_are_checked(tmp_path):
    spec = _resolve_size("small", 20, 3)
    assert (spec.n_train, spec.n_test, spec.shots) == (12, 8, 3)
    assert _resolve_size(SIZES["default"], None, None) == SIZES["default"]
    with pytest.raises(ValueError, match="unknown demo size"):
        _resolve_size("huge", None, None)
    with pytest.raises(ValueError, match="cannot hold"):
        _resolve_size("small", 5, 2)
    _check_settings(tmp_path, spec, 0)
    _check_settings(tmp_path, spec, 0)  # the same demo again: reused
    assert json.loads((tmp_path / "demo.json").read_text())["seed"] == 0
    with pytest.raises(DemoError, match="other settings"):
        _check_settings(tmp_path, spec, 1)


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
    for folder in ("runs/fewshot/evaluation/test", "runs/pretrain/evaluation/zero-shot"):
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert metrics["n"] == spec.n_test and metrics["split"] == "test"
    test_ids = [r["slide_id"] for r in slides if r["split"] == "test"]
    predictions = read_csv(out / "predictions" / "predictions.csv")
    assert sorted(r["slide_id"] for r in predictions) == sorted(test_ids)
    assert all(r["status"] == "ok" and r["predicted"] in ("LUAD", "LUSC") for r in predictions)
    page = (out / "predictions" / "report.html").read_text(encoding="utf-8")
    assert all(slide_id in page for slide_id in test_ids)

    # what the user sees: each command, the metrics and where the page is
    text = " ".join(result.output.split())
    for command in ("fivewsi reports extract", "fivewsi cohort merge", "fivewsi preprocess",
                    "--init runs/pretrain", "fivewsi evaluate", "fivewsi predict"):
        assert command in text
    assert "balanced_accuracy" in text and "report.html" in text

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
