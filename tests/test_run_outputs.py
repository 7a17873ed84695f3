"""Output folders of train, evaluate and fewshot: unwritable or a file → one line, exit 2,
before any work; overwrite clears a run's evaluations; a full disk stops training cleanly."""

from __future__ import annotations

import csv
import importlib
import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fivewsi.cli import app
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"dim": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    return make_feature_cohort(
        tmp_path_factory.mktemp("cohort"), n_train=8, n_test=6, dim=8, n_patches=(30, 40),
        class_strength=12.0, seed=7,
    )


@pytest.fixture(scope="module")
def trained(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mean"
    train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                      model="mean", model_options=SMALL, epochs=1, min_steps=0, progress=False))
    return out


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any start of real work (planning a training, predicting a bag)."""
    calls: list[str] = []

    def plan(*args: object, **kwargs: object) -> None:
        calls.append("plan")
        raise AssertionError("training was planned")

    def predict(*args: object, **kwargs: object) -> None:
        calls.append("predict")
        raise AssertionError("slides were predicted")

    monkeypatch.setattr(importlib.import_module("fivewsi.training.train"), "make_plan", plan)
    monkeypatch.setattr("fivewsi.runs.loop.predict_files", predict)
    return calls


def _train_args(cohort: FeatureCohort, out: Path) -> list[str]:
    return ["train", "--features", str(cohort.features_dir), "--cohort", str(cohort.cohort_csv),
            "--out", str(out), "--model", "mean", "--epochs", "1", "--no-progress", "-q"]


def _evaluate_args(cohort: FeatureCohort, run: Path, out: Path) -> list[str]:
    return ["evaluate", str(run), "--features", str(cohort.features_dir), "--cohort",
            str(cohort.cohort_csv), "--out", str(out), "--bootstrap", "10", "-q"]


def _fewshot_args(cohort: FeatureCohort, out: Path) -> list[str]:
    return ["fewshot", "--features", str(cohort.features_dir), "--cohort",
            str(cohort.cohort_csv), "--classes", str(cohort.classes_csv), "--out", str(out),
            "--models", "mean", "--shots", "1", "--seeds", "1", "--epochs", "1",
            "--no-progress", "--device", "cpu"]


def test_out_that_is_a_file_is_refused_before_any_work(
    cohort: FeatureCohort, trained: Path, tmp_path: Path, no_work: list[str]
) -> None:
    file = tmp_path / "taken"
    file.write_text("keep me")
    runner = CliRunner()
    for args in (_train_args(cohort, file), _evaluate_args(cohort, trained, file),
                 _fewshot_args(cohort, file)):
        line = _one_line_exit_2(runner.invoke(app, args))
        assert "is a file" in line and str(file) in line
    assert file.read_text() == "keep me"
    assert no_work == []


def test_out_on_a_read_only_file_system_is_refused_before_any_work(
    cohort: FeatureCohort, trained: Path, mount_tmpfs, no_work: list[str]
) -> None:
    readonly = mount_tmpfs(size="1m", readonly=True)
    runner = CliRunner()
    for args in (_train_args(cohort, readonly / "run"),
                 _evaluate_args(cohort, trained, readonly / "eval"),
                 _fewshot_args(cohort, readonly / "grid")):
        line = _one_line_exit_2(runner.invoke(app, args))
        assert "not writable" in line
    assert no_work == []


def test_a_class_without_training_slides_is_refused_and_few_shots_warned(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    classes = tmp_path / "classes.csv"
    classes.write_text(cohort.classes_csv.read_text() + "SCLC,Small cell lung carcinoma.\n")
    line = _one_line_exit_2(CliRunner().invoke(app, [
        *_train_args(cohort, tmp_path / "run"), "--classes", str(classes)]))
    assert "'SCLC'" in line and "no training slide" in line
    assert not (tmp_path / "run" / "model.safetensors").exists()
    warned: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append  # type: ignore[method-assign]
    plan_log = logging.getLogger("fivewsi.training.plan")
    plan_log.addHandler(handler)
    try:
        train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv,
                          out=tmp_path / "few", model="mean", model_options=SMALL, shots=100,
                          epochs=1, min_steps=0, progress=False))
    finally:
        plan_log.removeHandler(handler)
    assert any("fewer than 100 shots" in r.getMessage() for r in warned)


def test_overwrite_clears_the_evaluations_of_the_old_weights(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    from fivewsi.evaluation.evaluate import evaluate_run

    out = tmp_path / "run"
    config = {"features": cohort.features_dir, "cohort": cohort.cohort_csv, "out": out,
              "model": "mean", "model_options": SMALL, "epochs": 1, "min_steps": 0,
              "progress": False}
    train(TrainConfig(**config))
    evaluate_run(out, cohort.features_dir, cohort.cohort_csv, out=out / "evaluation" / "test",
                 n_bootstrap=10)
    (out / "metrics.json").write_text("{}")  # a few-shot cell's evaluation sits at the top
    assert (out / "evaluation" / "test" / "metrics.json").is_file()
    train(TrainConfig(**config, overwrite=True))
    assert not (out / "evaluation").exists() and not (out / "metrics.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize("size", ["24k", "48k", "96k"])
def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary_file(
    cohort: FeatureCohort, mount_tmpfs, size: str
) -> None:
    # 24k fills up at the best weights, 48k and 96k at the first checkpoint (measured).
    disk = mount_tmpfs(size=size)
    out = disk / "run"
    line = _one_line_exit_2(CliRunner().invoke(app, _train_args(cohort, out)))
    assert "no space left" in line and "resume" in line
    assert [p for p in disk.rglob("*") if ".tmp-" in p.name] == []
    assert not (out / "model.safetensors").exists()
    if (out / "run.json").is_file():
        assert json.loads((out / "run.json").read_text())["status"] != "finished"


def test_fewshot_labels_its_table_by_the_k_actually_used(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "grid"
    args = _fewshot_args(cohort, out)
    args[args.index("--shots") + 1] = "2,100"
    done = CliRunner().invoke(app, [*args, "--bootstrap", "10"])
    assert done.exit_code == 0, done.output
    per_class = min(sum(s.label == c for s in cohort.split("train")) for c in ("LUAD", "LUSC"))
    assert per_class < 100
    markdown = (out / "fewshot.md").read_text()
    assert f"| model | k=2 | k={per_class} (asked 100) |" in markdown
    assert "k=100 |" not in markdown
    with (out / "fewshot.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {r["k_used"] for r in rows if r["k"] == "100"} == {str(per_class)}
    assert {r["k_used"] for r in rows if r["k"] == "2"} == {"2"}
    with (out / "cells.csv").open() as handle:
        cells = {r["k"]: r["k_used"] for r in csv.DictReader(handle)}
    assert cells == {"2": "2", "100": str(per_class)}
