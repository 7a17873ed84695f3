"""Report pretraining's cheap paths stay cheap: each text encoded once, each bag read once.

The speed of a pretraining epoch on CPU (``benchmarks/bench_pretrain.py``, docs/benchmarks.md)
rests on two caches: the frozen text encoder's per-string cache (a step's texts, positives and
every pool negative, are looked up, never re-tokenised or re-encoded) and the LRU cache of
loaded bags (a bag's file is read once per run when the cache holds the cohort).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from conftest import write_tiny_text_model
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    root = tmp_path_factory.mktemp("cohort")
    made = make_feature_cohort(root, n_train=16, n_test=4, dim=16, n_patches=(30, 45), seed=1)
    write_tiny_text_model(root / "tiny-bert")
    return made


class _Watch(L.Callback):
    """The text encoder's counts when training ends (saving the run re-encodes its own texts)."""

    def __init__(self) -> None:
        self.encoder: Any = None
        self.encoded = self.cached = -1

    def on_train_end(self, trainer: Any, module: Any) -> None:
        self.encoder = module.model.text_encoder
        self.encoded, self.cached = self.encoder.n_encoded, len(self.encoder._cache)


def test_pretraining_encodes_each_text_once_and_reads_each_bag_once(
    cohort: FeatureCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fivewsi.training.data as data

    reads: Counter[Path] = Counter()
    original = data.load_bag

    def counting_load_bag(path: Path, *args: Any, **kwargs: Any) -> Any:
        reads[Path(path)] += 1
        return original(path, *args, **kwargs)

    monkeypatch.setattr(data, "load_bag", counting_load_bag)
    watch = _Watch()
    config = TrainConfig(
        features=cohort.features_dir, cohort=cohort.cohort_csv, out=tmp_path / "run",
        epochs=3, min_steps=0, batch_size=4, progress=False, negatives="all",
        model_options={"dim": 32, "heads": 4, "n_learnable_prompts": 2,
                       "text_encoder": str(cohort.root / "tiny-bert")},
    )
    result = train(config, callbacks=[watch])
    assert result.epochs == 3
    # Every training and validation bag went through the cache, and was read from disk once.
    assert len(reads) == result.n_train + result.n_val
    assert set(reads.values()) == {1}
    # Field dropping makes many distinct texts (several per step), yet none is encoded twice.
    encoder = watch.encoder
    assert encoder is not None and not encoder.lora
    assert watch.encoded == watch.cached > 3 * 4


def test_cached_bags_train_exactly_as_bags_read_every_epoch(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    weights = {}
    for cache_gb in (0.0, 1.0):
        out = tmp_path / f"run-{cache_gb}"
        train(TrainConfig(
            features=cohort.features_dir, cohort=cohort.cohort_csv, out=out, epochs=2,
            min_steps=0, batch_size=4, progress=False, negatives="all", cache_gb=cache_gb,
            model_options={"dim": 32, "heads": 4, "n_learnable_prompts": 2,
                           "text_encoder": str(cohort.root / "tiny-bert")},
        ))
        weights[cache_gb] = load_file(str(out / "model.safetensors"))
    assert weights[0.0].keys() == weights[1.0].keys()
    for key, value in weights[0.0].items():
        assert torch.equal(value, weights[1.0][key]), key
