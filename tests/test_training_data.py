"""Training data: feature discovery, grid coords, spread-out patch sampling, caching, sampler."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.features.bags import Bag, save_bag
from fivewsi.model.outputs import grid_coords
from fivewsi.training.data import (
    BagCache,
    BagDataset,
    EpochSampler,
    collate_bags,
    hilbert_index,
    sample_patches,
)
from fivewsi.training.items import SlideItem, check_feature_files, find_feature_files


def _grid(side: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _bag(path: Path, n: int, dim: int = 4, step: int = 256, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    coords = _grid(math.ceil(n**0.5))[:n] * step
    return save_bag(path, rng.normal(size=(n, dim)), coords, {"patch_size_level0": step})


def test_hilbert_index_walks_the_grid_one_step_at_a_time() -> None:
    grid = _grid(16)
    d = hilbert_index(grid)
    assert sorted(d.tolist()) == list(range(256))
    walk = grid[np.argsort(d)]
    steps = np.abs(np.diff(walk, axis=0)).sum(1)
    assert (steps == 1).all()


def test_sampling_takes_one_patch_per_block_of_the_slide() -> None:
    # 32×32 patches, 1/16 of them: each Hilbert interval of 16 is one 4×4 block of the grid.
    grid = _grid(32)
    picked = sample_patches(grid, np.random.default_rng(3), ratio=1 / 16, max_patches=10_000)
    assert len(picked) == 64
    blocks = {(int(x) // 4, int(y) // 4) for x, y in grid[picked]}
    assert len(blocks) == 64


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    grid = _grid(20)
    a = sample_patches(grid, np.random.default_rng(1), ratio=0.25, max_patches=1000)
    b = sample_patches(grid, np.random.default_rng(1), ratio=0.25, max_patches=1000)
    c = sample_patches(grid, np.random.default_rng(2), ratio=0.25, max_patches=1000)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    ratio=st.floats(0.01, 1.0),
    cap=st.integers(1, 500),
    seed=st.integers(0, 2**32 - 1),
)
def test_sample_size_ratio_and_cap(n: int, ratio: float, cap: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 60, size=(n, 2)).astype(float)
    picked = sample_patches(grid, rng, ratio=ratio, max_patches=cap)
    assert len(picked) == min(max(1, math.ceil(n * ratio)), cap, n)
    assert len(set(picked.tolist())) == len(picked)
    assert (np.diff(picked) > 0).all() and picked.min() >= 0 and picked.max() < n


def test_grid_coords_from_level0_coords_step_guess_and_raster() -> None:
    feats = np.zeros((3, 2), np.float32)
    coords = np.array([[0, 0], [512, 0], [512, 1024]])
    with_size = Bag("a", feats, coords, {"patch_size_level0": 512})
    assert grid_coords(with_size).tolist() == [[0, 0], [1, 0], [1, 2]]
    guessed = Bag("b", feats, coords, {})
    assert grid_coords(guessed).tolist() == [[0, 0], [1, 0], [1, 2]]
    clam_level0 = Bag("c", feats, coords, {"patch_level": 0, "patch_size": 256})
    assert grid_coords(clam_level0).tolist() == [[0, 0], [2, 0], [2, 4]]
    raster = Bag("d", np.zeros((5, 2), np.float32), None, {})
    assert grid_coords(raster).shape == (5, 2)


def test_dataset_samples_in_training_and_keeps_every_patch_in_evaluation(tmp_path: Path) -> None:
    path = _bag(tmp_path / "s1.h5", 100)
    items = [SlideItem("s1", path)]
    train = BagDataset(items, train=True, sample_ratio=0.2, max_patches=15, seed=5)
    first = train[0]
    assert first["features"].shape == (15, 4) and first["coords"].shape == (15, 2)
    assert torch.equal(train[0]["features"], first["features"])  # same epoch, same sample
    train.epoch = 1
    assert not torch.equal(train[0]["features"], first["features"])
    evaluation = BagDataset(items, train=False)
    assert evaluation[0]["features"].shape == (100, 4)
    batch = collate_bags([evaluation[0], first])
    assert batch.bags.features.shape == (2, 100, 4)
    assert batch.bags.mask.sum(1).tolist() == [100, 15]
    assert batch.index.tolist() == [0, 0] and batch.target.tolist() == [-1, -1]


def test_bag_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    paths = [_bag(tmp_path / f"s{i}.h5", 50, dim=8, seed=i) for i in range(4)]
    one = 50 * 8 * 4 + 50 * 2 * 4  # features + grid coords, float32
    cache = BagCache(max_bytes=2 * one)
    for path in paths:
        cache.get(path)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    features, _ = cache.get(paths[0])  # evicted earlier, loaded again
    assert features.shape == (50, 8)
    assert BagCache(0).get(paths[1])[0].shape == (50, 8)  # a zero budget still loads


def test_find_feature_files_in_nested_layouts(tmp_path: Path) -> None:
    trident = tmp_path / "20x_256px_0px_overlap" / "features_uni"
    _bag(trident / "a.h5", 4)
    _bag(tmp_path / "pt_files" / "a.pt", 4)  # same slide as .pt: the .h5 wins
    torch.save(torch.ones(3, 4), tmp_path / "b.pt")
    (tmp_path / ".c.h5.tmp-123").write_bytes(b"partial")
    found = find_feature_files(tmp_path)
    assert found == {"a": trident / "a.h5", "b": tmp_path / "b.pt"}
    with pytest.raises(FileNotFoundError, match="features folder not found"):
        find_feature_files(tmp_path / "nowhere")


def test_check_feature_files_sorts_out_missing_broken_and_odd_sized(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = {f"s{i}": _bag(tmp_path / f"s{i}.h5", 10, dim=4, seed=i) for i in range(3)}
    files["wide"] = _bag(tmp_path / "wide.h5", 10, dim=6)
    (tmp_path / "torn.h5").write_bytes(b"not hdf5")
    files["torn"] = tmp_path / "torn.h5"
    with h5py.File(tmp_path / "nofeat.h5", "w") as handle:
        handle["coords"] = np.zeros((2, 2))
    files["nofeat"] = tmp_path / "nofeat.h5"
    ids = ["s0", "s1", "s2", "wide", "torn", "nofeat", "gone"]
    check = check_feature_files(ids, files)
    assert sorted(check.ok) == ["s0", "s1", "s2"]
    assert check.missing == ["gone"]
    assert sorted(check.broken) == ["nofeat", "torn", "wide"]
    assert check.dim == 4 and check.ok["s0"][1] == 10
    assert "1 slides have no feature file" in caplog.text


def test_epoch_sampler_shares_and_reshuffles(tmp_path: Path) -> None:
    items = [SlideItem(f"s{i}", tmp_path / f"s{i}.h5") for i in range(7)]
    dataset = BagDataset(items, train=True)
    shares = [
        EpochSampler(dataset, shuffle=True, seed=4, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for sampler in shares:
        sampler.set_epoch(3)
    first, second = (list(s) for s in shares)
    assert len(first) == len(second) == 4
    assert set(first) | set(second) == set(range(7))
    assert dataset.epoch == 3
    shares[0].set_epoch(4)
    assert list(shares[0]) != first


def test_small_training_sets_get_enough_steps(tmp_path) -> None:
    from fivewsi.training.config import TrainConfig
    from fivewsi.training.fit import epochs_for as _epochs

    def config(**kw):
        return TrainConfig(features=tmp_path, cohort=tmp_path / "c.csv", out=tmp_path / "r", **kw)

    assert _epochs(config(epochs=3, min_steps=10), batches_per_epoch=2) == 5
    assert _epochs(config(epochs=30, min_steps=10), batches_per_epoch=2) == 30
    assert _epochs(config(epochs=3, min_steps=10, accumulate=2), batches_per_epoch=2) == 10
    assert _epochs(config(epochs=3, min_steps=0), batches_per_epoch=1) == 3


def test_the_data_plan_needs_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, fivewsi.training.plan, fivewsi.training.items; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
