"""Bad bags (NaN / Inf, wrong shapes, hostile or torn ``.pt`` files) and diverging training:
the slide is skipped (train) or fails alone (evaluate, predict); no NaN run is ever finished."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fivewsi.cohort import read_cohort
from fivewsi.features.bags import BagError, load_bag, save_bag
from fivewsi.runs.classifier import SlidePrediction
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, TrainError, train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"dim": 16}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    return make_feature_cohort(
        tmp_path_factory.mktemp("cohort"), n_train=8, n_test=6, dim=8, n_patches=(30, 40),
        class_strength=12.0, seed=5,
    )


def _ids(cohort: FeatureCohort, split: str) -> list[str]:
    return [r.slide_id for r in read_cohort(cohort.cohort_csv) if r.split == split]


def _poison(path: Path, value: float = float("nan")) -> None:
    with h5py.File(path, "r+") as handle:
        data = handle["features"][()]
        data[3, 1] = value
        handle["features"][...] = data


class _Boom:
    """A pickle payload that would run a shell command if unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class Custom:
    def __init__(self) -> None:
        self.features = [1.0, 2.0]


def _hostile_pt(path: Path, marker: Path) -> None:
    # torch.save pickles the object: an os.system reduce payload inside a zip file.
    torch.save({"features": _Boom(marker)}, path)


def _features_with_faults(cohort: FeatureCohort, tmp_path: Path, split: str) -> tuple[Path, dict]:
    """A copy of the features where three slides of ``split`` are bad: NaN, hostile, torn."""
    features = tmp_path / "features"
    features.mkdir()
    for path in cohort.features_dir.glob("*.h5"):
        (features / path.name).write_bytes(path.read_bytes())
    ids = _ids(cohort, split)
    nan_id, hostile_id, torn_id = ids[0], ids[1], ids[2]
    _poison(features / f"{nan_id}.h5")
    marker = tmp_path / "pwned"
    (features / f"{hostile_id}.h5").unlink()
    _hostile_pt(features / f"{hostile_id}.pt", marker)
    (features / f"{torn_id}.h5").unlink()
    good = torch.from_numpy(load_bag(cohort.features_dir / f"{torn_id}.h5").features)
    torch.save(good, features / f"{torn_id}.pt")
    data = (features / f"{torn_id}.pt").read_bytes()
    (features / f"{torn_id}.pt").write_bytes(data[: len(data) // 2])
    return features, {"nan": nan_id, "hostile": hostile_id, "torn": torn_id, "marker": marker}


# -- load_bag ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("features", "coords", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.zeros((2, 2)), "not finite"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), np.zeros((2, 2)), "not finite"),
        (np.zeros((0, 4)), np.zeros((0, 2)), "no patches"),
    ],
)
def test_load_bag_refuses_bad_arrays_naming_the_file(
    tmp_path: Path, features: np.ndarray, coords: np.ndarray, message: str
) -> None:
    path = save_bag(tmp_path / "case-7.h5", features, coords, {"patch_size": 256})
    with pytest.raises(BagError, match=f"case-7.h5: .*{message}"):
        load_bag(path)


def test_load_bag_refuses_wrong_shapes(tmp_path: Path) -> None:
    one_d = tmp_path / "flat.h5"
    with h5py.File(one_d, "w") as handle:
        handle["features"] = np.ones(8, np.float32)
    with pytest.raises(BagError, match=r"flat.h5: features must be \[N, D\]"):
        load_bag(one_d)
    bad_coords = tmp_path / "coords.h5"
    with h5py.File(bad_coords, "w") as handle:
        handle["features"] = np.ones((4, 3), np.float32)
        handle["coords"] = np.zeros((4, 3), np.int64)
    with pytest.raises(BagError, match=r"coords.h5: coords must be \[N, 2\]"):
        load_bag(bad_coords)
    short = tmp_path / "short.h5"
    with h5py.File(short, "w") as handle:
        handle["features"] = np.ones((4, 3), np.float32)
        handle["coords"] = np.zeros((3, 2), np.int64)
    with pytest.raises(BagError, match="4 features but 3 coords"):
        load_bag(short)
    nan_pt = tmp_path / "nan.pt"
    torch.save(torch.tensor([[1.0, float("nan")]]), nan_pt)
    with pytest.raises(BagError, match=r"nan\.pt: 1 of 2 feature values are not finite"):
        load_bag(nan_pt)


def test_hostile_and_torn_pt_files_are_bag_errors_that_never_advise_unsafe_loading(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pwned"
    _hostile_pt(tmp_path / "hostile.pt", marker)
    custom = tmp_path / "custom.pt"
    torch.save(Custom(), custom)
    raw = tmp_path / "raw.pt"  # a bare pickle, not torch's zip format
    raw.write_bytes(pickle.dumps(_Boom(marker)))
    torn = tmp_path / "torn.pt"
    torch.save(torch.ones(5, 4), torn)
    torn.write_bytes(torn.read_bytes()[:300])
    for path in (tmp_path / "hostile.pt", custom, raw, torn):
        with pytest.raises(BagError) as caught:
            load_bag(path)
        text = str(caught.value)
        assert text.startswith(f"{path.name}: not a plain tensor file")
        assert "weights_only=True" in text and "weights_only=False" not in text
        assert "\n" not in text
    assert not marker.exists()


# -- training ---------------------------------------------------------------------------------


def test_train_skips_nan_hostile_and_torn_bags_by_name_and_weights_stay_finite(
    cohort: FeatureCohort, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features, bad = _features_with_faults(cohort, tmp_path, "train")
    out = tmp_path / "run"
    result = train(TrainConfig(features=features, cohort=cohort.cohort_csv, out=out,
                               model="mean", model_options=SMALL, epochs=2, min_steps=0,
                               batch_size=4, progress=False))
    assert result.n_skipped_slides == 3
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished"
    broken = info["skipped_slides"]["broken"]
    assert set(broken) == {bad["nan"], bad["hostile"], bad["torn"]}
    assert "not finite" in broken[bad["nan"]]
    assert all("weights_only=False" not in why for why in broken.values())
    assert bad["nan"] in caplog.text and bad["hostile"] in caplog.text
    weights = load_file(str(out / "model.safetensors"))
    assert all(bool(t.isfinite().all()) for t in weights.values())
    assert not bad["marker"].exists()


def test_a_non_finite_loss_stops_training_unfinished_without_weights(
    cohort: FeatureCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fivewsi.training.module as module

    real = module.class_loss
    monkeypatch.setattr(module, "class_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    out = tmp_path / "run"
    with pytest.raises(TrainError, match=r"training loss is nan \(not finite\) at epoch 0, step 0"):
        train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                          model="mean", model_options=SMALL, epochs=1, min_steps=0,
                          progress=False))
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not (out / "model.safetensors").exists()


def test_a_diverged_model_is_never_saved(tmp_path: Path) -> None:
    from fivewsi.errors import RunError
    from fivewsi.model.registry import create_model
    from fivewsi.runs.weights import save_weights

    model = create_model("mean", in_dim=4, n_classes=2, dim=8)
    with torch.no_grad():
        next(iter(model.parameters())).fill_(float("inf"))
    with pytest.raises(RunError, match="NaN or Inf"):
        save_weights(model, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- evaluation and prediction ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mean"
    train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                      model="mean", model_options=SMALL, epochs=2, min_steps=0, progress=False))
    return out


def test_evaluate_fails_bad_slides_alone_and_scores_the_others(
    cohort: FeatureCohort, trained: Path, tmp_path: Path
) -> None:
    from fivewsi.cli import app

    features, bad = _features_with_faults(cohort, tmp_path, "test")
    out = tmp_path / "eval"
    done = CliRunner().invoke(app, ["evaluate", str(trained), "--features", str(features),
                                    "--cohort", str(cohort.cohort_csv), "--out", str(out),
                                    "--bootstrap", "10", "-q"])
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    info = json.loads((out / "metrics.json").read_text())
    assert set(info["failed"]) == {bad["nan"], bad["hostile"], bad["torn"]}
    assert "not finite" in info["failed"][bad["nan"]]
    assert info["n"] == len(_ids(cohort, "test")) - 3
    assert "weights_only=False" not in (out / "predictions.csv").read_text()
    assert not bad["marker"].exists()


def test_non_finite_probabilities_fail_the_slide_never_ok(cohort: FeatureCohort) -> None:
    from fivewsi.runs.loop import predict_files

    class NanClassifier:
        in_dim = 8

        def predict_batch(self, bags: list) -> list[SlidePrediction]:
            return [SlidePrediction(b.slide_id, np.array([np.nan, np.nan]) if i == 0
                                    else np.array([0.4, 0.6]), "B", np.zeros(2),
                                    np.zeros(b.n_patches), None, np.zeros(b.n_patches))
                    for i, b in enumerate(bags)]

    ids = _ids(cohort, "test")[:2]
    items = [(i, cohort.features_dir / f"{i}.h5") for i in ids]
    results = list(predict_files(NanClassifier(), items, max_batch_patches=0))  # type: ignore[arg-type]
    assert results[0].prediction is None and "non-finite" in (results[0].error or "")
    assert results[1].prediction is None  # each bag alone: each is the first of its batch
    both = list(predict_files(NanClassifier(), items))  # type: ignore[arg-type]
    assert both[0].error and both[1].error is None and both[1].prediction is not None
