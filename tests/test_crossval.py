"""``fivewsi crossval``: stratified, patient-grouped folds, one run per fold, pooled metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fivewsi.cohort import read_cohort, write_cohort
from fivewsi.evaluation.crossval import CrossvalConfig, CrossvalError, run_crossval
from fivewsi.synthetic import FeatureCohort, make_feature_cohort

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 1, "min_steps": 0, "batch_size": 8, "progress": False, "val_fraction": 0.0}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    made = make_feature_cohort(tmp_path_factory.mktemp("cv"), n_train=24, n_test=4, dim=8,
                               n_patches=(30, 32), class_strength=12.0, seed=5)
    rows = read_cohort(made.cohort_csv)
    count: dict[str, int] = {}
    for row in rows:  # patients of 2 slides of one label (test rows: patients of their own)
        if row.split != "test":
            n = count.get(str(row.label), 0)
            count[str(row.label)] = n + 1
            row.patient_id = f"{row.label}-{n // 2}"
    write_cohort(rows, made.cohort_csv)
    return made


def _config(cohort: FeatureCohort, out: Path, **options: object) -> CrossvalConfig:
    settings: dict[str, object] = {"features": cohort.features_dir, "cohort": cohort.cohort_csv,
                                   "classes": cohort.classes_csv, "out": out, "model": "mean",
                                   "model_options": {"dim": 8}, "folds": 3, "n_bootstrap": 50,
                                   "train_options": FAST}
    settings.update(options)
    return CrossvalConfig(**settings)  # type: ignore[arg-type]


def test_crossval_end_to_end_keeps_patients_whole_and_resumes(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "cv"
    result = run_crossval(_config(cohort, out))
    rows = {r.slide_id: r for r in read_cohort(cohort.cohort_csv)}
    with open(out / "folds.csv", newline="") as handle:
        folds = list(csv.DictReader(handle))
    assert list(folds[0]) == ["slide_id", "patient_id", "fold"]
    assert {f["slide_id"] for f in folds} == {s for s, r in rows.items() if r.split != "test"}
    fold_of_patient: dict[str, set[str]] = {}
    for f in folds:
        fold_of_patient.setdefault(f["patient_id"], set()).add(f["fold"])
    assert all(len(v) == 1 for v in fold_of_patient.values())  # patients whole
    for k in ("0", "1", "2"):  # stratified: both classes in every fold, 8 slides each
        labels = [rows[f["slide_id"]].label for f in folds if f["fold"] == k]
        assert len(labels) == 8 and labels.count("LUAD") == 4
    info = json.loads((out / "metrics.json").read_text())
    assert info["folds"] == 3 and info["grouping"] == "patient_id" and info["n_slides"] == 24
    assert [e["fold"] for e in info["per_fold"]] == [0, 1, 2]
    assert all(e["n_test"] == 8 and e["n_train"] == 16 for e in info["per_fold"])
    assert info["pooled"]["metrics"]["n"] == 24 and info["pooled"]["patient"]["n"] == 12
    assert info["pooled"]["patient"]["bootstrap"]["unit"] == "patient"
    assert info["pooled"]["metrics"]["balanced_accuracy"]["ci_low"] is not None
    assert len(info["fold_summary"]["balanced_accuracy"]["values"]) == 3
    assert "balanced_accuracy" in info["fold_summary_patient"]
    for f in range(3):  # each fold's run never saw its held-out fold
        with open(out / "folds" / f"fold{f}" / "run" / "split.csv", newline="") as handle:
            trained = {r["slide_id"] for r in csv.DictReader(handle)}
        held = {x["slide_id"] for x in folds if x["fold"] == str(f)}
        assert trained and not trained & held and not trained & {
            s for s, r in rows.items() if r.split == "test"}
        assert (out / "folds" / f"fold{f}" / "eval" / "patient_predictions.csv").is_file()
    assert result.n_failed == 0
    # A rerun reuses every finished fold (runs and evaluations untouched).
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
              and p.name in ("model.safetensors", "predictions.csv", "cohort.csv")}
    again = run_crossval(_config(cohort, out))
    assert again.metrics["pooled"] == result.metrics["pooled"]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(CrossvalError, match="other folds"):
        run_crossval(_config(cohort, out, seed=1))


def test_crossval_shots_and_bad_settings(cohort: FeatureCohort, tmp_path: Path) -> None:
    result = run_crossval(_config(cohort, tmp_path / "k1", shots=1, folds=2))
    assert all(e["n_train"] == 4 for e in result.metrics["per_fold"])  # 1 patient × 2 slides
    with pytest.raises(CrossvalError, match="at least 30 patients"):
        run_crossval(_config(cohort, tmp_path / "many", folds=30))
    with pytest.raises(ValueError, match="lrr"):
        _config(cohort, tmp_path / "x", train_options={**FAST, "lrr": 1})


def test_crossval_command(cohort: FeatureCohort, tmp_path: Path) -> None:
    from fivewsi.cli import app

    config = tmp_path / "cv.yaml"
    config.write_text("train_options:\n  epochs: 1\n  min_steps: 0\n  progress: false\n"
                      "model_options:\n  dim: 8\n")
    args = ["crossval", "--features", str(cohort.features_dir), "--cohort",
            str(cohort.cohort_csv), "--classes", str(cohort.classes_csv), "--model", "mean",
            "--folds", "2", "--bootstrap", "20", "--config", str(config), "-q"]
    ok = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "cli")])
    assert ok.exit_code == 0, ok.output
    assert "pooled balanced accuracy over 12 patients" in ok.output
    assert (tmp_path / "cli" / "config.yaml").is_file()
    from fivewsi.evaluation.figures import CROSSVAL_SIZE
    from test_figures import figure_problems

    assert figure_problems(tmp_path / "cli" / "crossval.png", CROSSVAL_SIZE) == []
    assert "crossval.png" in ok.output
    assert (tmp_path / "cli" / "folds" / "fold0" / "eval" / "roc.png").is_file()
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--folds", "1"])
    assert bad.exit_code == 2 and "folds" in bad.output
