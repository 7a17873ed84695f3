"""Calibration: temperature fitting, ECE / Brier / log-loss, the reliability diagram, and a
fine-tuned run that stores its temperature and applies it when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

from fivewsi.evaluation.calibration import (
    brier_score,
    expected_calibration_error,
    log_loss,
)
from fivewsi.evaluation.figures import reliability_figure
from fivewsi.evaluation.metrics import classification_metrics
from fivewsi.runs.calibration import fit_temperature, nll

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_fitting_recovers_a_known_temperature(true_t: float) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6000, 3)) * 4
    probs = _softmax(logits / true_t)
    y = (rng.random((len(probs), 1)) > probs.cumsum(axis=1)).sum(axis=1)
    found = fit_temperature(logits, y)
    assert found.fitted and found.temperature == pytest.approx(true_t, rel=0.06)
    assert found.nll_after <= found.nll_before
    assert found.nll_after == pytest.approx(nll(logits, y, found.temperature))
    assert fit_temperature(logits, y) == found  # deterministic


def test_too_few_slides_or_one_class_keep_t_1() -> None:
    logits = np.array([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0], [1.0, 2.0]])
    assert fit_temperature(logits[:3], np.array([0, 1, 0])).temperature == 1.0
    one = fit_temperature(logits, np.zeros(4, dtype=int))
    assert one.temperature == 1.0 and not one.fitted
    # Fitted on training data (min_temperature=1): never sharper than the softmax.
    sharp = fit_temperature(logits, np.array([0, 1, 0, 1]), min_temperature=1.0)
    assert sharp.temperature >= 1.0
    assert fit_temperature(logits, np.array([0, 1, 0, 1])).temperature < 1.0


def test_metrics_against_hand_computed_values() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 0])
    # Brier: 0.02 + 0.08 + 0.32 + 0.98 over 4.
    assert brier_score(y, probs) == pytest.approx(0.35)
    assert log_loss(y, probs) == pytest.approx(
        -np.mean(np.log([0.9, 0.8, 0.6, 0.3]))
    )
    # Every slide in its own bin: |1-.9| + |1-.8| + |1-.6| + |0-.7| over 4.
    assert expected_calibration_error(y, probs) == pytest.approx(0.35)
    # Two slides in one bin (0.8 and 0.8, one right one wrong): the gaps cancel within it.
    same = np.array([[0.8, 0.2], [0.8, 0.2]])
    assert expected_calibration_error(np.array([0, 1]), same) == pytest.approx(0.3)
    m = classification_metrics(["a", "b", "a", "a"], probs, ["a", "b"], n_bootstrap=300)
    for name, value in (("ece", 0.35), ("brier", 0.35)):
        assert m[name]["value"] == pytest.approx(value)
        assert m[name]["ci_low"] <= m[name]["value"] + 1e-9 <= m[name]["ci_high"] + 2e-9
        assert m[name]["n_resamples"] == 300
    assert m["log_loss"]["ci_low"] is not None
    scores = classification_metrics(["a", "b"], np.array([[3.0, -1.0], [0.0, 2.0]]), ["a", "b"],
                                    n_bootstrap=10)
    assert scores["ece"]["value"] is None and scores["brier"]["value"] is None


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 30), st.integers(0, 10_000))
def test_brier_and_log_loss_match_sklearn(n_classes: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = _softmax(rng.normal(size=(n, n_classes)) * 3)
    y = rng.integers(0, n_classes, size=n)
    labels = list(range(n_classes))
    assert log_loss(y, probs) == pytest.approx(sk_log_loss(y, probs, labels=labels), rel=1e-9)
    if n_classes == 2:  # scikit-learn's binary Brier score is half the multi-class one
        assert brier_score(y, probs) == pytest.approx(2 * brier_score_loss(y, probs[:, 1]))
    onehot = np.eye(n_classes)[y]
    assert brier_score(y, probs) == pytest.approx(np.mean(((probs - onehot) ** 2).sum(1)))


def test_reliability_diagram_is_a_valid_png(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    probs = _softmax(rng.normal(size=(50, 3)) * 2)
    y = rng.integers(0, 3, size=50)
    path = reliability_figure(tmp_path / "reliability.png", y, probs, title="run")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    assert not list(tmp_path.glob(".*tmp*"))


# --- runs: a fine-tuned run stores its temperature; load_model applies it -------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory):
    from fivewsi.cohort import read_cohort, write_cohort
    from fivewsi.synthetic import make_feature_cohort

    root = tmp_path_factory.mktemp("cohort")
    made = make_feature_cohort(root, n_train=16, n_test=6, dim=16, n_patches=(30, 45), seed=0)
    rows = read_cohort(made.cohort_csv)
    seen: dict[str, int] = {}
    for row in rows:
        if row.split == "train" and seen.get(row.label or "", 0) < 3:
            seen[row.label or ""] = seen.get(row.label or "", 0) + 1
            row.split = "val"
    write_cohort(rows, made.cohort_csv)
    return made


@pytest.fixture(scope="module")
def abmil_run(cohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fivewsi.training import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "abmil"
    train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                      model="abmil", model_options={"dim": 16}, epochs=3, min_steps=0,
                      batch_size=4, progress=False, val_fraction=0.0))
    return out


@pytest.mark.usefixtures("one_thread")
def test_fine_tuned_run_stores_its_temperature_and_load_model_applies_it(
    abmil_run: Path, cohort
) -> None:
    from fivewsi.features.bags import load_bag
    from fivewsi.runs import load_model, read_record

    stored = json.loads((abmil_run / "run.json").read_text())["calibration"]
    assert stored["fitted_on"] == "val" and stored["n_slides"] == 6
    assert stored["temperature"] > 0 and stored["nll_after"] <= stored["nll_before"]
    record = read_record(abmil_run)
    assert record.temperature == stored["temperature"]
    classifier = load_model(abmil_run)
    assert classifier.temperature == stored["temperature"]
    assert classifier.calibration.startswith("calibrated: temperature")
    t = classifier.temperature
    bag = load_bag(next(iter(sorted(cohort.features_dir.glob("*.h5")))))
    p = classifier.predict(bag)
    assert p.logits is not None
    np.testing.assert_allclose(p.probabilities, _softmax(p.logits[None] / t)[0], rtol=1e-5)
    # Exactly T: log-probability differences are the raw score differences divided by T.
    np.testing.assert_allclose(
        np.diff(np.log(p.probabilities)), np.diff(p.logits) / t, rtol=1e-4, atol=1e-6
    )
    if t != 1.0:
        assert not np.allclose(p.probabilities, _softmax(p.logits[None])[0])


@pytest.mark.usefixtures("one_thread")
def test_old_run_without_calibration_loads_with_t_1(
    abmil_run: Path, cohort, tmp_path: Path
) -> None:
    import shutil

    from fivewsi.features.bags import load_bag
    from fivewsi.runs import load_model

    old = tmp_path / "old"
    shutil.copytree(abmil_run, old)
    data = json.loads((old / "run.json").read_text())
    del data["calibration"]
    (old / "run.json").write_text(json.dumps(data))
    classifier = load_model(old)
    assert classifier.temperature == 1.0 and classifier.record.calibration is None
    assert classifier.calibration.startswith("uncalibrated")
    bag = load_bag(next(iter(sorted(cohort.features_dir.glob("*.h5")))))
    p = classifier.predict(bag)
    np.testing.assert_allclose(p.probabilities, _softmax(p.logits[None])[0], rtol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_evaluate_writes_calibration_metrics_and_reliability_png(
    abmil_run: Path, cohort, tmp_path: Path
) -> None:
    from fivewsi.evaluation.evaluate import evaluate_run

    out = tmp_path / "eval"
    evaluate_run(abmil_run, cohort.features_dir, cohort.cohort_csv, out=out, n_bootstrap=50)
    info = json.loads((out / "metrics.json").read_text())
    for name in ("ece", "brier", "log_loss"):
        assert info["metrics"][name]["value"] is not None
        assert info["metrics"][name]["ci_low"] is not None
    assert info["calibration"]["temperature"] == load_t(abmil_run)
    assert info["calibration"]["fitted"]["fitted_on"] == "val"
    assert (out / "reliability.png").read_bytes()[:8] == PNG_SIGNATURE


def load_t(run: Path) -> float:
    return json.loads((run / "run.json").read_text())["calibration"]["temperature"]


@pytest.mark.usefixtures("one_thread")
def test_run_without_validation_fits_on_training_slides_never_sharper(
    cohort, tmp_path: Path
) -> None:
    from fivewsi.cohort import read_cohort, write_cohort
    from fivewsi.training import TrainConfig, train

    rows = read_cohort(cohort.cohort_csv)
    for row in rows:
        if row.split == "val":
            row.split = "train"
    table = tmp_path / "cohort.csv"
    write_cohort(rows, table)
    out = tmp_path / "noval"
    train(TrainConfig(features=cohort.features_dir, cohort=table, out=out, model="abmil",
                      model_options={"dim": 16}, epochs=2, min_steps=0, batch_size=4,
                      progress=False, val_fraction=0.0))
    stored = json.loads((out / "run.json").read_text())["calibration"]
    assert stored["fitted_on"] == "train" and stored["temperature"] >= 1.0
    assert stored["n_slides"] == 16


def test_calibration_words() -> None:
    from fivewsi.runs.classifier import calibration_words
    from fivewsi.runs.record import CalibrationRecord

    fitted = CalibrationRecord(temperature=2.0, fitted_on="train", n_slides=8)
    assert calibration_words(fitted, 2.0) == (
        "calibrated: temperature 2 fitted on 8 training slides"
    )
    assert calibration_words(fitted, 1.0).startswith("uncalibrated")  # not applied
    none = CalibrationRecord(temperature=1.0, fitted_on="none", n_slides=2)
    assert calibration_words(none, 1.0).startswith("uncalibrated")
