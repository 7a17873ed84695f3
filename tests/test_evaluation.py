"""Held-out evaluation of a run, the few-shot grid and their CLI commands."""

from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from fivewsi.cohort.table import CohortRow, read_cohort, write_cohort
from fivewsi.evaluation.evaluate import EvaluationError, evaluate_run
from fivewsi.evaluation.fewshot import (
    FewshotCell,
    FewshotConfig,
    FewshotError,
    run_fewshot,
    summarize,
    table_markdown,
)
from fivewsi.runs.classifier import SlidePrediction
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from test_figures import figure_problems

CLASSES = ["LUAD", "LUSC"]
METRIC_NAMES = ("balanced_accuracy", "accuracy", "macro_f1", "auc", "confusion_matrix")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    # Strong class signal so a few epochs learn something; small bags so training is quick.
    return make_feature_cohort(
        tmp_path_factory.mktemp("cohort"), n_train=16, n_test=12, dim=16, n_patches=(30, 50),
        class_strength=12.0, nuisance_strength=1.0, seed=3,
    )


class StubClassifier:
    """Scores a bag by the sign of its first mean feature: a fixed, known classifier."""

    classes = CLASSES
    descriptions = ("adenocarcinoma", "squamous cell carcinoma")
    kind = "label"
    model_name = "stub"

    def __init__(self, in_dim: int = 16) -> None:
        self.in_dim = in_dim
        self.seen: list[list[str]] = []

    def predict_batch(self, bags: list) -> list[SlidePrediction]:
        self.seen.append([b.slide_id for b in bags])
        out = []
        for bag in bags:
            p = 1.0 / (1.0 + np.exp(-float(bag.features[:, 0].mean())))
            probs = np.array([1 - p, p])
            out.append(SlidePrediction(bag.slide_id, probs, CLASSES[int(p > 0.5)],
                                       np.zeros(2), np.zeros(bag.n_patches), None,
                                       np.zeros(bag.n_patches)))
        return out


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> StubClassifier:
    classifier = StubClassifier()
    monkeypatch.setattr(
        "fivewsi.runs.classifier.load_model", lambda run, classes=None, device="cpu": classifier
    )
    return classifier


def _copy_cohort(cohort: FeatureCohort, tmp_path: Path, edit=None) -> Path:
    rows = read_cohort(cohort.cohort_csv)
    if edit is not None:
        rows = edit(rows)
    path = tmp_path / "cohort.csv"
    write_cohort(rows, path)
    return path


def _features_copy(cohort: FeatureCohort, tmp_path: Path) -> Path:
    features = tmp_path / "features"
    features.mkdir()
    for path in cohort.features_dir.glob("*.h5"):
        (features / path.name).write_bytes(path.read_bytes())
    return features


def test_evaluate_writes_metrics_and_predictions(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    test_ids = [s.slide_id for s in cohort.split("test")]
    result = evaluate_run("run", cohort.features_dir, cohort.cohort_csv, out=tmp_path / "eval")
    assert result.n == len(test_ids) and not result.failed
    assert sorted(i for batch in stub.seen for i in batch) == sorted(test_ids)

    info = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert info["split"] == "test" and info["n"] == len(test_ids)
    assert info["classes"] == CLASSES and info["classes_source"] == "run"
    assert info["metrics"]["accuracy"]["value"] == result.metrics["accuracy"]["value"]
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["slide_id"] for r in rows] == test_ids
    assert list(rows[0]) == ["slide_id", "label", "predicted", "p_LUAD", "p_LUSC", "error"]
    truth = {s.slide_id: s.label for s in cohort.slides}
    assert all(r["label"] == truth[r["slide_id"]] for r in rows)
    # The metrics are those of the written predictions (argmax, no threshold).
    correct = [r["label"] == CLASSES[int(float(r["p_LUSC"]) > float(r["p_LUAD"]))] for r in rows]
    assert result.metrics["accuracy"]["value"] == pytest.approx(np.mean(correct))
    assert not list((tmp_path / "eval").glob(".*tmp-*"))


def test_missing_broken_and_unlabelled_slides_are_counted(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    features = _features_copy(cohort, tmp_path)
    test_ids = [s.slide_id for s in cohort.split("test")]
    (features / f"{test_ids[0]}.h5").unlink()
    (features / f"{test_ids[1]}.h5").write_bytes(b"not an hdf5 file")

    def unlabel(rows: list[CohortRow]) -> list[CohortRow]:
        for r in rows:
            if r.slide_id == test_ids[2]:
                r.label = None
        return rows

    cohort_csv = _copy_cohort(cohort, tmp_path, unlabel)
    result = evaluate_run("run", features, cohort_csv, out=tmp_path / "eval")
    assert result.n == len(test_ids) - 3
    assert result.n_unlabelled == 1
    assert set(result.failed) == {test_ids[0], test_ids[1]}
    assert result.failed[test_ids[0]] == "no feature file"
    info = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert info["n_failed"] == 2 and info["n_unlabelled"] == 1 and info["n_rows"] == len(test_ids)
    assert "cannot read" in info["failed"][test_ids[1]]
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        rows = {r["slide_id"]: r for r in csv.DictReader(handle)}
    assert rows[test_ids[0]]["predicted"] == "" and rows[test_ids[0]]["error"]
    assert test_ids[2] not in rows


def test_wrong_feature_size_is_a_slide_error(
    cohort: FeatureCohort, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    classifier = StubClassifier(in_dim=32)
    monkeypatch.setattr("fivewsi.runs.classifier.load_model", lambda *a, **k: classifier)
    with pytest.raises(EvaluationError, match="feature size 16, the model expects 32"):
        evaluate_run("run", cohort.features_dir, cohort.cohort_csv)


def test_refuses_labels_outside_the_model_classes(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    def rename(rows: list[CohortRow]) -> list[CohortRow]:
        rows[-1].label = "SCLC"
        return rows

    cohort_csv = _copy_cohort(cohort, tmp_path, rename)
    with pytest.raises(EvaluationError, match=r"'SCLC'.*classes come from run"):
        evaluate_run("run", cohort.features_dir, cohort_csv)
    assert not stub.seen  # refused before predicting anything


def test_cohort_without_splits_evaluates_every_labelled_slide(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def drop_splits(rows: list[CohortRow]) -> list[CohortRow]:
        for r in rows:
            r.split = None
        return rows

    cohort_csv = _copy_cohort(cohort, tmp_path, drop_splits)
    with caplog.at_level(logging.WARNING, logger="fivewsi"):
        result = evaluate_run("run", cohort.features_dir, cohort_csv)
    assert result.n == len(cohort.slides) and result.split is None
    assert "no split column" in caplog.text
    with pytest.raises(EvaluationError, match="no slide in split 'val'; splits present"):
        evaluate_run("run", cohort.features_dir, cohort.cohort_csv, split="val")


def test_markdown_marks_the_best_mean_per_column() -> None:
    cells = [
        FewshotCell(model, k, seed, Path("."), "trained", {"balanced_accuracy": value})
        for model, k, seed, value in [
            ("a", 1, 0, 0.6), ("a", 1, 1, 0.8), ("b", 1, 0, 0.5), ("b", 1, 1, 0.6),
            ("a", 2, 0, 0.7), ("b", 2, 0, 0.9), ("b", 2, 1, None),
        ]
    ]
    cells.append(FewshotCell("b", 2, 2, Path("."), "failed", {"balanced_accuracy": 1.0}))
    table = summarize(cells)
    row = next(r for r in table if (r.model, r.k, r.metric) == ("b", 2, "balanced_accuracy"))
    assert row.n_seeds == 1 and row.sd is None and row.mean == 0.9  # None and failed left out
    text = table_markdown(table, n_seeds=2)
    lines = [line for line in text.splitlines() if line.startswith("| a |")]
    assert lines[0] == "| a | **70.0 ± 14.1** | 70.0 |"


def _cli() -> typer.Typer:
    from fivewsi.cli import app

    return app


def test_evaluate_command_prints_metrics_and_writes_json(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    args = ["evaluate", str(run), "--features", str(cohort.features_dir),
            "--cohort", str(cohort.cohort_csv), "--bootstrap", "50"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "balanced_accuracy" in result.output and "95% CI" in result.output
    info = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    assert info["metrics"]["bootstrap"]["n_bootstrap"] == 50
    assert [f["file"] for f in info["figures"]] == ["roc.png", "confusion.png", "reliability.png"]
    for name in ("roc.png", "confusion.png", "reliability.png"):
        assert (run / "evaluation" / "test" / name).is_file()
    assert "roc.png" in result.output

    bad = _copy_cohort(cohort, tmp_path, lambda rows: [*rows[:-1], CohortRow(
        rows[-1].slide_id, "SCLC", None, "test")])
    args[args.index("--cohort") + 1] = str(bad)
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2 and "SCLC" in result.output


def test_evaluate_command_refuses_a_folder_that_is_not_a_run(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    args = ["evaluate", str(tmp_path), "--features", str(cohort.features_dir),
            "--cohort", str(cohort.cohort_csv)]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 2 and "no run.json" in result.output


# --- with real training (fivewsi.training) ---------------------------------------------------

TINY = {"batch_size": 4, "min_steps": 0}
TINY_FIVE = {"dim": 16, "heads": 2, "n_learnable_prompts": 1}


@pytest.fixture(scope="module")
def grid(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> FewshotConfig:
    return FewshotConfig(
        features=cohort.features_dir, cohort=cohort.cohort_csv, classes=cohort.classes_csv,
        out=tmp_path_factory.mktemp("grid"), models=["abmil"], shots=[1, 2], seeds=[0, 1],
        epochs=2, train_options=TINY, n_bootstrap=50, progress=False,
    )


def test_fewshot_grid_trains_evaluates_and_resumes(
    grid: FewshotConfig, cohort: FeatureCohort, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run_fewshot(grid)
    assert [(c.model, c.k, c.seed, c.status) for c in first.cells] == [
        ("abmil", k, s, "trained") for k in (1, 2) for s in (0, 1)
    ]
    for cell in first.cells:
        info = json.loads((cell.run / "metrics.json").read_text())
        assert info["split"] == "test" and info["n"] == len(cohort.split("test"))
        split = (cell.run / "split.csv").read_text().splitlines()
        assert len(split) == 1 + 2 * cell.k  # k slides per class, nothing from test
    # Same seed → same slides for every k's draw; different seeds → different draws.
    draws = {(c.k, c.seed): (c.run / "split.csv").read_text() for c in first.cells}
    assert draws[1, 0] != draws[1, 1]

    rows = list(csv.DictReader(grid.out.joinpath("fewshot.csv").open()))
    headline = [r for r in rows if r["metric"] == "balanced_accuracy"]
    assert [(r["model"], r["k"], r["n_seeds"]) for r in headline] == [
        ("abmil", "1", "2"), ("abmil", "2", "2")
    ]
    values = [float(v) for v in headline[0]["values"].split(";")]
    assert float(headline[0]["mean"]) == pytest.approx(np.mean(values))
    assert first.mean("abmil", 1) == pytest.approx(np.mean(values))
    markdown = grid.out.joinpath("fewshot.md").read_text()
    assert "## balanced_accuracy (headline)" in markdown and "| abmil |" in markdown
    from fivewsi.evaluation.figures import SHOTS_SIZE

    assert first.figure == grid.out / "fewshot.png"
    assert "](fewshot.png)" in markdown
    assert figure_problems(first.figure, SHOTS_SIZE) == []
    assert len(list(csv.DictReader(grid.out.joinpath("cells.csv").open()))) == 4

    # Resume: nothing is trained or evaluated again, nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for c in first.cells
              for p in (c.run / "metrics.json", c.run / "model.safetensors")}
    calls = []
    monkeypatch.setattr(sys.modules["fivewsi.training.train"], "train",
                        lambda config: calls.append(config))
    second = run_fewshot(grid)
    assert not calls
    assert {c.status for c in second.cells} == {"reused"}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert second.table == first.table


def test_fewshot_tables_cover_models_run_by_another_process(grid: FewshotConfig) -> None:
    if not (grid.out / "runs").exists():
        run_fewshot(grid)
    # A second process fills the same grid with another model, for part of the shots.
    other = grid.model_copy(update={"models": ["mean"], "shots": [1]})
    result = run_fewshot(other)
    assert [c.model for c in result.cells] == ["mean", "mean"]
    assert result.models == ["mean", "abmil"]
    paired = list(csv.DictReader(grid.out.joinpath("fewshot_paired.csv").open()))
    headline = [r for r in paired if (r["k"], r["metric"]) == ("1", "balanced_accuracy")]
    assert len(headline) == 1 and headline[0]["n_pairs"] == "2"  # the worse of the two baselines
    assert {headline[0]["model"], headline[0]["baseline"]} == {"abmil", "mean"}
    rows = {(r.model, r.k) for r in result.table if r.metric == "balanced_accuracy"}
    assert rows == {("mean", 1), ("abmil", 1)}  # abmil k=2 is not a shot of this call
    assert "| abmil |" in result.markdown.read_text()


def test_fewshot_refuses_a_finished_cell_with_other_settings(grid: FewshotConfig) -> None:
    changed = grid.model_copy(update={"epochs": 3})
    if not (grid.out / "runs").exists():
        run_fewshot(grid)
    with pytest.raises(FewshotError, match="other settings"):
        run_fewshot(changed)


def test_evaluate_real_run_and_training_overlap(grid: FewshotConfig, cohort: FeatureCohort,
                                                caplog: pytest.LogCaptureFixture) -> None:
    if not (grid.out / "runs").exists():
        run_fewshot(grid)
    run = grid.out / "runs" / "abmil" / "k2" / "seed0"
    with caplog.at_level(logging.WARNING, logger="fivewsi"):
        result = evaluate_run(run, cohort.features_dir, cohort.cohort_csv, split="train",
                              n_bootstrap=0)
    assert result.info["n_seen_in_training"] == 4
    assert "not held-out" in caplog.text
    assert result.info["model"] == "abmil" and result.classes == CLASSES


def test_fewshot_with_pretrained_run_adds_zero_shot_and_fine_tuned_rows(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    from fivewsi.training import TrainConfig, train

    # Any finished FiVE run can start the five+reports row; a one-epoch classes run stands in
    # for report pretraining (which the training tests cover) to keep this test quick.
    pretrained = tmp_path / "pretrain"
    train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=pretrained,
                      classes=cohort.classes_csv, shots=1, epochs=1, progress=False,
                      model_options=TINY_FIVE, **TINY))
    config = FewshotConfig(
        features=cohort.features_dir, cohort=cohort.cohort_csv, classes=cohort.classes_csv,
        out=tmp_path / "grid", models=["mean"], pretrained=pretrained, shots=[1], seeds=[0],
        epochs=1, train_options=TINY, n_bootstrap=0, progress=False,
    )
    result = run_fewshot(config)
    assert [(c.model, c.k, c.status) for c in result.cells] == [
        ("five+reports", 0, "trained"), ("five+reports", 1, "trained"), ("mean", 1, "trained")
    ]
    zero = json.loads((tmp_path / "grid/runs/five+reports/k0/metrics.json").read_text())
    assert zero["run"] == str(pretrained) and zero["classes_source"] == str(cohort.classes_csv)
    tuned = json.loads((tmp_path / "grid/runs/five+reports/k1/seed0/run.json").read_text())
    assert tuned["init"] == str(pretrained)
    assert result.shots == [0, 1]
    assert "| five+reports |" in result.markdown.read_text()
    from fivewsi.evaluation.figures import SHOTS_SIZE

    assert figure_problems(result.figure, SHOTS_SIZE) == []  # zero-shot drawn as a line


def test_fewshot_command_runs_the_grid(grid: FewshotConfig, cohort: FeatureCohort) -> None:
    args = ["fewshot", "--features", str(cohort.features_dir), "--cohort",
            str(cohort.cohort_csv), "--classes", str(cohort.classes_csv), "--out",
            str(grid.out), "--models", "abmil", "--shots", "1,2", "--seeds", "2",
            "--epochs", "2", "--bootstrap", "50", "--no-progress", "--device", "cpu",
            *[f"-t{k}={v}" for k, v in TINY.items()]]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "balanced accuracy" in result.output and "abmil" in result.output
    assert (grid.out / "fewshot.png").is_file() and "fewshot.png" in result.output
    bad = CliRunner().invoke(_cli(), [*args, "--models", "nosuchmodel"])  # the last one wins
    assert bad.exit_code == 2 and "unknown models" in bad.output


def test_fewshot_config_fails_at_start_up_on_a_misspelt_setting(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    base = {"features": cohort.features_dir, "cohort": cohort.cohort_csv,
            "classes": cohort.classes_csv, "out": tmp_path / "grid", "models": ["five", "abmil"]}
    with pytest.raises(ValidationError, match=r"row 'abmil'.*dimm"):
        FewshotConfig(**base, model_options={"abmil": {"dimm": 8}})
    with pytest.raises(ValidationError, match=r"row 'five'.*attention"):
        FewshotConfig(**base, model_options={"five": {"attention": "fulll"}})
    with pytest.raises(ValidationError, match=r"lrr"):
        FewshotConfig(**base, train_options={"lrr": 0.1})
    with pytest.raises(ValidationError, match=r"row 'abmil'.*batch_size"):
        FewshotConfig(**base, overrides={"abmil": {"batch_size": 0}})
    with pytest.raises(ValidationError, match=r"not rows of the grid"):
        FewshotConfig(**base, model_options={"mean": {"dim": 8}})
    with pytest.raises(ValidationError, match=r"sets \['model_options'\] itself"):
        FewshotConfig(**base, train_options={"model_options": {}})
    assert not (tmp_path / "grid").exists()  # nothing ran
    config = FewshotConfig(**base, model_options={"abmil": {"dim": 8}})
    cell = config.train_config("abmil", k=1, seed=0)
    assert cell.model_options["dim"] == 8 and cell.model_options["attention_dim"] == 256


def test_patient_block_and_patient_predictions(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    def patients(rows: list[CohortRow]) -> list[CohortRow]:
        count: dict[str, int] = {}
        for row in rows:
            if row.split == "test":  # pairs of slides of one label per patient
                n = count.get(str(row.label), 0)
                count[str(row.label)] = n + 1
                row.patient_id = f"{row.label}-{n // 2}"
        return rows

    table = _copy_cohort(cohort, tmp_path, patients)
    out = tmp_path / "eval"
    result = evaluate_run("run", cohort.features_dir, table, out=out, n_bootstrap=200)
    info = json.loads((out / "metrics.json").read_text())
    block = info["patient"]
    assert info["metrics"]["n"] == 12 and block["n"] == 6 and block["n_slides"] == 12
    assert block["bootstrap"]["unit"] == "patient"
    assert info["metrics"]["bootstrap"]["unit"] == "slide"
    assert set(METRIC_NAMES) <= set(block)
    with (out / "predictions.csv").open() as handle:
        slides = list(csv.DictReader(handle))
    with (out / "patient_predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["patient_id", "label", "predicted", "n_slides", "p_LUAD", "p_LUSC"]
    patient_of = {r.slide_id: r.patient_id for r in read_cohort(table)}
    for row in rows:
        mine = [s for s in slides if patient_of[s["slide_id"]] == row["patient_id"]]
        assert int(row["n_slides"]) == len(mine) == 2
        assert float(row["p_LUSC"]) == pytest.approx(np.mean([float(s["p_LUSC"]) for s in mine]),
                                                     abs=1e-5)
        assert row["predicted"] == CLASSES[int(float(row["p_LUSC"]) > float(row["p_LUAD"]))]
    correct = [r["label"] == r["predicted"] for r in rows]
    assert block["accuracy"]["value"] == pytest.approx(np.mean(correct))
    assert len(result.patients) == 6
    from fivewsi.evaluation import figures

    sizes = {"roc": figures.ROC_SIZE, "confusion": figures.CONFUSION_SIZE,
             "reliability": figures.RELIABILITY_SIZE}
    listed = [f["file"] for f in info["figures"]]
    assert listed == [f"{level}{name}.png" for level in ("", "patient_") for name in sizes]
    for level in ("", "patient_"):
        for name, size in sizes.items():
            assert figure_problems(out / f"{level}{name}.png", size) == []
    assert info["figures"][3]["title"].endswith("patients")
    # Without patient ids: no patient block, and old patient files are not left behind.
    evaluate_run("run", cohort.features_dir, cohort.cohort_csv, out=out, n_bootstrap=10)
    info = json.loads((out / "metrics.json").read_text())
    assert "patient" not in info and len(info["figures"]) == 3
    assert not (out / "patient_predictions.csv").exists()
    assert not list(out.glob("patient_*.png"))


def test_evaluate_refuses_a_patient_with_two_labels(
    cohort: FeatureCohort, stub: StubClassifier, tmp_path: Path
) -> None:
    def mixed(rows: list[CohortRow]) -> list[CohortRow]:
        test = [r for r in rows if r.split == "test"]
        a = next(r for r in test if r.label == "LUAD")
        b = next(r for r in test if r.label == "LUSC")
        a.patient_id = b.patient_id = "P-7"
        return rows

    from fivewsi.cohort.table import CohortError

    with pytest.raises(CohortError, match="P-7"):
        evaluate_run("run", cohort.features_dir, _copy_cohort(cohort, tmp_path, mixed))
