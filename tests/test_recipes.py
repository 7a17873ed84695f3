"""Few-shot recipes (issue 11, item 2): settings, the Tip-Adapter cache stored in a run and
applied by load_model, the partial recipe (aggregator only, L2-SP, WiSE-FT), and the default
recipe of ``train --init`` on classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from conftest import write_tiny_text_model
from fivewsi import load_model
from fivewsi.cohort import ClassDescription
from fivewsi.cohort.table import read_classes
from fivewsi.errors import RunError
from fivewsi.features.bags import load_bag
from fivewsi.runs.adapter import ADAPTER_FILE, TipAdapter, load_adapter, save_adapter
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, train
from fivewsi.training.recipes import DEFAULT_INIT_RECIPE, Recipe, l2sp_penalty

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"dim": 32, "heads": 4, "n_learnable_prompts": 3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    root = tmp_path_factory.mktemp("cohort")
    made = make_feature_cohort(root, n_train=16, n_test=4, dim=16, n_patches=(30, 45), seed=3)
    write_tiny_text_model(root / "tiny-bert")
    return made


def _config(cohort: FeatureCohort, out: Path, **options: object) -> TrainConfig:
    settings: dict[str, object] = {
        "epochs": 1, "min_steps": 0, "batch_size": 4, "progress": False, "negatives": "batch",
        "model_options": {**TINY, "text_encoder": str(cohort.root / "tiny-bert")},
    }
    settings.update(options)
    return TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
                       **settings)


@pytest.fixture(scope="module")
def runs(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    pretrained = root / "pretrain"
    train(_config(cohort, pretrained, epochs=2))
    made = {"pretrained": pretrained}
    for name, recipe in [("default", None), ("tip", {"name": "tip-adapter"}),
                         ("full", {"name": "full"}),
                         ("partial", {"name": "partial", "steps_per_shot": 3}),
                         ("wise0", {"name": "partial", "steps_per_shot": 3, "wise_ft": 0.0})]:
        extra = {} if recipe is None else {"recipe": recipe}
        made[name] = root / name
        train(_config(cohort, made[name], classes=cohort.classes_csv, init=pretrained,
                      shots=2, seed=5, **extra))
    return made


def _shot_bags(run: Path, cohort: FeatureCohort) -> list[tuple[object, str]]:
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    return [(load_bag(cohort.features_dir / f"{r[0]}.h5"), r[2]) for r in rows if r[1] == "train"]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"name": "tip"}, {"alpha": -1.0}, {"beta": 0.0}, {"reduce": "max"}, {"steps_per_shot": 0},
    {"wise_ft": 1.5}, {"name": "tip-adapter", "wise_ft": 0.5}, {"lr": 0.0}, {"alpah": 1.0},
])
def test_recipe_settings_are_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Recipe(**bad)


@pytest.mark.parametrize("options", [
    {"recipe": {"name": "tip-adapter"}, "classes": "c.csv"},  # no --init
    {"recipe": {"name": "partial"}, "classes": "c.csv", "init": "run"},  # not text-aligned
    {"recipe": {"name": "tip-adapter"}, "init": "run", "objective": "reports"},
])
def test_training_recipes_need_a_text_aligned_init_on_classes(options: dict[str, object]) -> None:
    if options.get("init") and "partial" in json.dumps(options):
        options = {**options, "model": "abmil"}
    with pytest.raises(ValidationError, match="recipe"):
        TrainConfig(features="f", cohort="c.csv", out="r", **options)


# -- the cache ---------------------------------------------------------------------------------


def test_tip_adapter_with_alpha_zero_is_zero_shot_and_moves_shots_to_their_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    values = torch.nn.functional.one_hot(labels, 3).float()
    zero = torch.randn(6, 3, generator=gen) * 3
    off = TipAdapter(keys, values, alpha=0.0, beta=5.5).logits(keys, zero, scale=30.0)
    assert torch.equal(off, zero)
    on = TipAdapter(keys, values, alpha=1.0, beta=5.5).logits(keys, zero, scale=30.0)
    gain = on.softmax(1) - zero.softmax(1)
    assert bool((gain[torch.arange(6), labels] > 0).all())


def test_tip_adapter_is_recorded_and_trains_nothing(runs: dict[str, Path]) -> None:
    record = json.loads((runs["tip"] / "run.json").read_text())
    assert record["config"]["recipe"]["name"] == "tip-adapter"
    assert record["result"]["recipe"] == "tip-adapter" and record["result"]["epochs"] == 0
    assert record["adapter_file"] == ADAPTER_FILE
    assert not (runs["tip"] / "checkpoints").exists()
    start = load_file(str(runs["pretrained"] / "model.safetensors"))
    kept = load_file(str(runs["tip"] / "model.safetensors"))
    assert all(torch.equal(start[k], kept[k]) for k in start)
    cache = load_adapter(runs["tip"] / ADAPTER_FILE)
    assert cache.keys.shape[0] == 4 and cache.values.sum(0).tolist() == [2.0, 2.0]
    assert torch.allclose(cache.keys.norm(dim=1), torch.ones(4), atol=1e-5)


def test_init_on_classes_takes_the_default_recipe(runs: dict[str, Path]) -> None:
    assert DEFAULT_INIT_RECIPE == "partial"
    default = json.loads((runs["default"] / "run.json").read_text())
    assert default["config"]["recipe"]["name"] == "auto"
    assert default["result"]["recipe"] == DEFAULT_INIT_RECIPE
    assert default.get("adapter_file") is None
    # steps scaled with k: 10 steps per shot, 2 shots -> 20 steps (one batch per epoch)
    assert default["result"]["epochs"] == 20
    full = json.loads((runs["full"] / "run.json").read_text())
    assert full["result"]["recipe"] == "full"
    scratch = TrainConfig(features="f", cohort="c.csv", out="r", classes="c.csv")
    assert scratch.recipe.name == "auto"  # resolves to full without --init (resolve_recipe)


def test_the_stored_cache_moves_the_shots_toward_their_labels(
    runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    adapted = load_model(runs["tip"])
    zero = load_model(runs["pretrained"], classes=cohort.classes_csv)
    assert adapted.adapter is not None and zero.adapter is None
    for bag, label in _shot_bags(runs["tip"], cohort):
        c = adapted.classes.index(label)
        assert adapted.predict(bag).probabilities[c] > zero.predict(bag).probabilities[c]


def test_the_cache_reloads_to_identical_probabilities(
    runs: dict[str, Path], cohort: FeatureCohort, tmp_path: Path
) -> None:
    bags = [load_bag(p) for p in sorted(cohort.features_dir.glob("*.h5"))[:3]]
    first = [p.probabilities for p in load_model(runs["tip"]).predict_batch(bags)]
    again = [p.probabilities for p in load_model(runs["tip"]).predict_batch(bags)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    cache = load_adapter(runs["tip"] / ADAPTER_FILE)
    save_adapter(cache, tmp_path / "copy.safetensors")
    copy = load_adapter(tmp_path / "copy.safetensors")
    assert torch.equal(copy.keys, cache.keys) and (copy.alpha, copy.beta) == (1.0, 5.5)


def test_other_descriptions_get_no_cache(runs: dict[str, Path], cohort: FeatureCohort) -> None:
    other = [ClassDescription(c.name, c.description + " tissue")
             for c in read_classes(cohort.classes_csv)]
    assert load_model(runs["tip"], classes=other).adapter is None


def test_a_broken_cache_is_a_run_error(tmp_path: Path) -> None:
    (tmp_path / ADAPTER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(RunError, match="not an adapter cache"):
        load_adapter(tmp_path / ADAPTER_FILE)


_NO_TRAINING_STACK = """
import sys, fivewsi
m = fivewsi.load_model(sys.argv[1])
assert m.adapter is not None
m.predict(fivewsi.load_bag(sys.argv[2]))
heavy = [n for n in ("lightning", "pytorch_lightning", "transformers") if n in sys.modules]
assert not heavy, heavy
"""


def test_a_tip_adapter_run_predicts_without_lightning_nor_text_model(
    runs: dict[str, Path], cohort: FeatureCohort
) -> None:
    bag = sorted(cohort.features_dir.glob("*.h5"))[0]
    done = subprocess.run(
        [sys.executable, "-c", _NO_TRAINING_STACK, str(runs["tip"]), str(bag)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]


# -- partial, L2-SP, WiSE-FT -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "partial"])
def test_partial_trains_only_the_aggregator(name: str, runs: dict[str, Path]) -> None:
    start = load_file(str(runs["pretrained"] / "model.safetensors"))
    tuned = load_file(str(runs[name] / "model.safetensors"))
    changed = {k for k in start if not torch.equal(start[k], tuned[k])}
    assert changed and all(k.startswith("aggregator.") for k in changed)
    record = json.loads((runs[name] / "run.json").read_text())
    assert record["result"]["epochs"] >= 1 and record.get("adapter_file") is None


def test_wise_ft_zero_gives_back_the_start(runs: dict[str, Path]) -> None:
    start = load_file(str(runs["pretrained"] / "model.safetensors"))
    mixed = load_file(str(runs["wise0"] / "model.safetensors"))
    assert all(torch.allclose(start[k], mixed[k]) for k in start)


def test_l2sp_penalty_is_zero_at_the_start_and_grows_away_from_it() -> None:
    layer = torch.nn.Linear(3, 2)
    anchor = {n: p.detach().clone() for n, p in layer.named_parameters()}
    assert float(l2sp_penalty(layer, anchor).detach()) == 0.0
    with torch.no_grad():
        layer.weight.add_(0.5)
    assert float(l2sp_penalty(layer, anchor).detach()) == pytest.approx(6 * 0.25)


# -- the command line --------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fivewsi", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_train_init_on_classes_takes_the_default_recipe(
    runs: dict[str, Path], cohort: FeatureCohort, tmp_path: Path
) -> None:
    options = tmp_path / "options.json"  # YAML reads JSON
    options.write_text(json.dumps({"model_options": {
        **TINY, "text_encoder": str(cohort.root / "tiny-bert")}}))
    common = ["train", "--config", str(options), "--features", str(cohort.features_dir), "--cohort",
              str(cohort.cohort_csv), "--classes", str(cohort.classes_csv), "--init",
              str(runs["pretrained"]), "--shots", "1", "--no-progress"]
    bad = _cli(*common, "--out", str(tmp_path / "bad"), "--recipe", "tip")
    assert bad.returncode == 2 and "recipe" in bad.stderr and "Traceback" not in bad.stderr
    done = _cli(*common, "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["result"]["recipe"] == DEFAULT_INIT_RECIPE
    tip = _cli(*common, "--out", str(tmp_path / "tip"), "--recipe", "tip-adapter")
    assert tip.returncode == 0, tip.stderr[-2000:]
    assert (tmp_path / "tip" / ADAPTER_FILE).is_file()


def test_partial_says_which_explicit_settings_it_replaces(
    cohort: FeatureCohort, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    from fivewsi.training.recipes import partial_config

    plan = SimpleNamespace(classes=["a", "b"], train=[1, 2, 3, 4])
    recipe = Recipe(name="partial")
    config = _config(cohort, tmp_path / "x", lr=1e-3, shots=2)
    with caplog.at_level("WARNING", logger="fivewsi.training.recipes"):
        changed = partial_config(config, recipe, plan)  # type: ignore[arg-type]
    assert (changed.lr, changed.min_steps) == (recipe.lr, 2 * recipe.steps_per_shot)
    assert "lr=0.001" in caplog.text and "--recipe full" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fivewsi.training.recipes"):
        bare = TrainConfig(features=cohort.features_dir, cohort=cohort.cohort_csv,
                           out=tmp_path / "y", shots=2)
        partial_config(bare, recipe, plan)  # type: ignore[arg-type]
    assert caplog.text == ""  # nothing set by hand, nothing to say
