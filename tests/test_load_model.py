"""load_model: zero-shot from a pretrained run, class runs, baselines, predictions, and the
run's stored text features (no text model, no Lightning when predicting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_tiny_text_model
from fivewsi import load_model
from fivewsi.cohort import ClassDescription
from fivewsi.errors import RunError
from fivewsi.features.bags import Bag, load_bag
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    root = tmp_path_factory.mktemp("cohort")
    made = make_feature_cohort(root, n_train=12, n_test=4, dim=16, n_patches=(30, 45), seed=1)
    write_tiny_text_model(root / "tiny-bert")
    return made


def _train(
    cohort: FeatureCohort, out: Path, model_options: dict[str, object] | None = None,
    **options: object,
) -> Path:
    settings: dict[str, object] = {
        "epochs": 1, "min_steps": 0, "batch_size": 4, "progress": False, "negatives": "batch",
    }
    chosen = dict(model_options or {})
    if options.get("model", "five") == "five":
        tiny = {"dim": 32, "heads": 4, "n_learnable_prompts": 3}
        chosen = {**tiny, "text_encoder": str(cohort.root / "tiny-bert"), **chosen}
    settings.update(options)
    train(TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                      model_options=chosen, **settings))
    return out


@pytest.fixture(scope="module")
def runs(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    pretrained = _train(cohort, root / "pretrain")
    return {
        "pretrained": pretrained,
        "classes": _train(cohort, root / "classes", classes=cohort.classes_csv, init=pretrained),
        "abmil": _train(cohort, root / "abmil", model="abmil", model_options={"dim": 16}),
        "lora": _train(cohort, root / "lora", classes=cohort.classes_csv,
                       model_options={"lora": True}),
    }


def _bags(cohort: FeatureCohort, n: int = 2) -> list[Bag]:
    return [load_bag(p) for p in sorted(cohort.features_dir.glob("*.h5"))[:n]]


def test_zero_shot_from_a_pretrained_run(runs: dict[str, Path], cohort: FeatureCohort) -> None:
    with pytest.raises(RunError, match="give --classes"):
        load_model(runs["pretrained"])
    classifier = load_model(runs["pretrained"], classes=cohort.classes_csv)
    assert classifier.classes == ["LUAD", "LUSC"] and classifier.kind == "text"
    assert len(classifier.prompt_names) == 6 + 3
    assert classifier.prompt_names[-1] == "learnable-3"
    bag = _bags(cohort, 1)[0]
    prediction = classifier.predict(bag)
    n = bag.n_patches
    assert prediction.slide_id == bag.slide_id
    assert prediction.probabilities.shape == (2,)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert prediction.predicted == classifier.classes[int(prediction.probabilities.argmax())]
    assert prediction.embedding.shape == (32,)
    assert prediction.prompt_attention is not None
    assert prediction.prompt_attention.shape == (9, n)
    assert prediction.patch_attention.shape == (n,)
    assert prediction.patch_attention.sum() == pytest.approx(1.0, abs=1e-4)
    # A convex combination of the prompts' attention maps, renormalised.
    attention = prediction.class_attention
    assert attention.shape == (n,) and attention.sum() == pytest.approx(1.0, abs=1e-4)
    rows = prediction.prompt_attention / prediction.prompt_attention.sum(1, keepdims=True)
    assert (attention >= rows.min(0) - 1e-6).all() and (attention <= rows.max(0) + 1e-6).all()
    scores = classifier.similarities(bag, classifier.descriptions)
    expected = torch.softmax(torch.from_numpy(scores), 0).numpy()
    assert np.allclose(expected, prediction.probabilities, atol=1e-5)


def test_other_descriptions_change_a_text_model_but_not_a_label_model(
    runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    bag = _bags(cohort, 1)[0]
    stored = load_model(runs["classes"])
    assert stored.descriptions == [c.description for c in cohort.classes]
    other = [ClassDescription("A", "acinar growth pattern"), ClassDescription("B", "keratin")]
    swapped = load_model(runs["classes"], classes=other)
    assert swapped.classes == ["A", "B"]
    assert not np.allclose(stored.predict(bag).probabilities, swapped.predict(bag).probabilities)
    with pytest.raises(RunError, match="label model"):
        load_model(runs["abmil"], classes=other)
    baseline = load_model(runs["abmil"], classes=cohort.classes)
    with pytest.raises(TypeError, match="no text side"):
        baseline.embed_texts(["x"])


def test_text_embeddings_are_normalised(runs: dict[str, Path], cohort: FeatureCohort) -> None:
    classifier = load_model(runs["classes"])
    embedded = classifier.embed_texts(["poorly differentiated", "margins clear"])
    assert embedded.shape == (2, 32)
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["classes", "abmil"])
def test_batched_predictions_match_single_ones(
    name: str, runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    classifier = load_model(runs[name])
    bags = _bags(cohort, 3)
    together = classifier.predict_batch(bags)
    for bag, joint in zip(bags, together, strict=True):
        alone = classifier.predict(bag)
        assert joint.slide_id == alone.slide_id and joint.predicted == alone.predicted
        assert np.allclose(joint.probabilities, alone.probabilities, atol=1e-5)
        assert np.allclose(joint.class_attention, alone.class_attention, atol=1e-5)
    assert classifier.predict_batch([]) == []


def test_an_unfinished_or_foreign_folder_is_refused(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(RunError, match="not a fivewsi run"):
        load_model(tmp_path)
    info = json.loads((runs["abmil"] / "run.json").read_text())
    info["status"] = "running"
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="has not finished"):
        load_model(tmp_path)


@pytest.mark.parametrize(("name", "classes"), [("classes", False), ("pretrained", True),
                                               ("lora", False)])
def test_stored_text_features_give_exactly_the_same_predictions(
    name: str, classes: bool, runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    given = {"classes": cohort.classes_csv} if classes else {}
    stored = load_model(runs[name], **given)
    fresh = load_model(runs[name], stored_texts=False, **given)
    bags = _bags(cohort, 3)
    for a, b in zip(stored.predict_batch(bags), fresh.predict_batch(bags), strict=True):
        assert np.array_equal(a.probabilities, b.probabilities)
        assert np.array_equal(a.embedding, b.embedding)
        assert np.array_equal(a.class_attention, b.class_attention)
        assert stored.attributes(a) == fresh.attributes(b)
    # The run's own texts never needed the text model (zero-shot descriptions are new texts).
    encoder = stored.model.text_encoder
    assert encoder.loaded == classes and fresh.model.text_encoder.loaded
    new = stored.similarities(bags[0], ["a text the run never saw"])
    assert encoder.loaded
    assert np.array_equal(new, fresh.similarities(bags[0], ["a text the run never saw"]))


def test_other_descriptions_load_the_text_model_only_for_themselves(
    runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    other = [ClassDescription("A", "acinar growth pattern"), ClassDescription("B", "keratin")]
    lazy = load_model(runs["classes"], classes=other)
    assert not lazy.model.text_encoder.loaded
    prediction = lazy.predict(_bags(cohort, 1)[0])
    assert lazy.model.text_encoder.loaded
    fresh = load_model(runs["classes"], classes=other, stored_texts=False)
    assert np.array_equal(prediction.probabilities,
                          fresh.predict(_bags(cohort, 1)[0]).probabilities)


_NO_TRAINING_STACK = """
import sys, fivewsi
m = fivewsi.load_model(sys.argv[1])
m.predict(fivewsi.load_bag(sys.argv[2]))
heavy = [n for n in ("lightning", "pytorch_lightning") if n in sys.modules]
assert not heavy, heavy
if sys.argv[3] == "text":
    assert "transformers" not in sys.modules, "the text model was loaded"
"""


@pytest.mark.parametrize("name", ["classes", "abmil", "lora"])
def test_loading_and_predicting_imports_no_lightning_nor_text_model(
    name: str, runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    bag = sorted(cohort.features_dir.glob("*.h5"))[0]
    kind = "label" if name == "abmil" else "text"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _NO_TRAINING_STACK, str(runs[name]), str(bag), kind],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
