"""Feature files of other pipelines (issue 12, item 5): STAMP's HDF5 bags and slideflow's .pt
bags with their .index.npz locations, written here exactly as those tools write them."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fivewsi.features.bags import BagError, load_bag, save_bag
from fivewsi.training.items import find_feature_files


def _stamp(path: Path, n: int = 5, dim: int = 8, **attrs: object) -> tuple[np.ndarray, np.ndarray]:
    """A STAMP 2 bag as ``stamp.preprocessing.extract_`` writes it (KatherLab/STAMP)."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, dim)).astype(np.float16)
    coords = (np.stack([np.arange(n) % 3, np.arange(n) // 3], 1) * 256.0).astype(np.float32)
    with h5py.File(path, "w") as h5:
        h5["coords"] = coords
        h5["feats"] = feats
        defaults = {"stamp_version": "2.3.0", "extractor": "uni-1a2b3c4d", "unit": "um",
                    "tile_size_um": 256.0, "tile_size_px": 224, "code_hash": "1a2b3c4d"}
        for key, value in {**defaults, **attrs}.items():
            if value is not None:
                h5.attrs[key] = value
    return feats, coords


def test_stamp_bag(tmp_path: Path) -> None:
    feats, coords = _stamp(tmp_path / "TCGA-AA-0001.h5")
    bag = load_bag(tmp_path / "TCGA-AA-0001.h5")
    assert bag.slide_id == "TCGA-AA-0001"
    np.testing.assert_array_equal(bag.features, feats.astype(np.float32))
    assert bag.features.dtype == np.float32
    np.testing.assert_array_equal(bag.coords, coords.astype(np.int64))
    assert bag.attrs["coords_unit"] == "um" and bag.attrs["patch_size_um"] == 256.0
    assert bag.attrs["encoder"] == "uni-1a2b3c4d" and bag.attrs["format"] == "stamp"
    assert bag.attrs["target_mpp"] == pytest.approx(256 / 224)
    assert bag.patch_size_level0 is None  # µm, not level-0 pixels


def test_stamp_2_0_tile_size_with_unit(tmp_path: Path) -> None:
    _stamp(tmp_path / "s.h5", tile_size_um=None, tile_size_px=None, tile_size=112.0)
    bag = load_bag(tmp_path / "s.h5")
    assert bag.attrs["patch_size_um"] == 112.0 and "target_mpp" not in bag.attrs


def test_historic_stamp_coordinates_become_microns(tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as h5:
        h5["feats"] = np.ones((4, 3), np.float32)
        h5["coords"] = np.array([[0, 0], [224, 0], [0, 224], [448, 224]], np.int64)
    bag = load_bag(path)
    np.testing.assert_array_equal(bag.coords, [[0, 0], [256, 0], [0, 256], [512, 256]])
    assert bag.attrs["coords_unit"] == "um" and bag.attrs["tile_size_px"] == 224


def test_stamp_without_a_unit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as h5:
        h5["feats"] = np.ones((2, 3), np.float32)
        h5["coords"] = np.array([[0, 0], [100, 0]], np.float32)
    with pytest.raises(BagError, match="no unit"):
        load_bag(path)


def test_stamp_faults(tmp_path: Path) -> None:
    _stamp(tmp_path / "nan.h5")
    with h5py.File(tmp_path / "nan.h5", "r+") as h5:
        h5["feats"][0, 0] = np.nan
    with pytest.raises(BagError, match="not finite"):
        load_bag(tmp_path / "nan.h5")
    with h5py.File(tmp_path / "short.h5", "w") as h5:
        h5["feats"] = np.ones((3, 2), np.float16)
        h5["coords"] = np.zeros((2, 2), np.float32)
        h5.attrs["tile_size_um"] = 256.0
    with pytest.raises(BagError, match="3 features but 2 coords"):
        load_bag(tmp_path / "short.h5")


def _slideflow(folder: Path, slide: str, n: int = 6, dim: int = 4, npy: bool = False):
    """A slideflow bag: ``torch.save`` of the [N, D] tensor, locations via ``np.savez``."""
    features = torch.randn(n, dim)
    locations = np.stack([np.arange(n) * 302 + 151, np.full(n, 151)], 1)
    torch.save(features, folder / f"{slide}.pt")
    if npy:
        np.save(folder / f"{slide}.index.npy", locations)
    else:
        np.savez(folder / f"{slide}.index.npz", locations)
    return features, locations


@pytest.mark.parametrize("npy", [False, True])
def test_slideflow_bag(tmp_path: Path, npy: bool) -> None:
    features, locations = _slideflow(tmp_path, "TCGA-BB-0002", npy=npy)
    bag = load_bag(tmp_path / "TCGA-BB-0002.pt")
    assert bag.slide_id == "TCGA-BB-0002"
    np.testing.assert_array_equal(bag.features, features.numpy())
    np.testing.assert_array_equal(bag.coords, locations)
    assert bag.attrs["coords_source"] == "slideflow"


def test_slideflow_bag_without_index_has_no_coords(tmp_path: Path) -> None:
    torch.save(torch.ones(3, 2), tmp_path / "s.pt")
    assert load_bag(tmp_path / "s.pt").coords is None


def test_slideflow_index_of_the_wrong_length_or_pickled_is_refused(tmp_path: Path) -> None:
    torch.save(torch.ones(3, 2), tmp_path / "s.pt")
    np.savez(tmp_path / "s.index.npz", np.zeros((4, 2)))
    with pytest.raises(BagError, match=r"s\.index\.npz.*expected \[3, 2\]"):
        load_bag(tmp_path / "s.pt")
    np.savez(tmp_path / "s.index.npz", np.array([{"x": 1}], dtype=object))
    with pytest.raises(BagError, match="cannot read tile locations"):
        load_bag(tmp_path / "s.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pt_bags_load_with_weights_only(tmp_path: Path) -> None:
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump(_Evil(), handle)
    with pytest.raises(BagError, match="weights_only=True"):
        load_bag(tmp_path / "evil.pt")


def test_a_folder_of_foreign_bags_is_found_and_fivewsi_still_writes_trident(tmp_path: Path) -> None:
    _stamp(tmp_path / "a.h5")
    _slideflow(tmp_path, "b")
    found = find_feature_files(tmp_path)
    assert sorted(found) == ["a", "b"]
    out = save_bag(tmp_path / "out" / "c.h5", np.ones((2, 3)), np.zeros((2, 2)),
                   {"patch_size": 256, "patch_size_level0": 512})
    with h5py.File(out, "r") as h5:
        assert set(h5) == {"features", "coords"} and "feats" not in h5


def test_stamp_coords_give_patch_grid_positions(tmp_path: Path) -> None:
    from fivewsi.model.outputs import grid_coords

    _stamp(tmp_path / "s.h5", tile_size_um=112.0)
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        h5["coords"][...] = h5["coords"][()] / 256 * 112  # a 112 µm grid
    grid = grid_coords(load_bag(tmp_path / "s.h5"))
    np.testing.assert_allclose(grid.numpy(), [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1]])
