"""Bag files: fivewsi's own, TRIDENT's and CLAM's layouts all load through one function."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from fivewsi.features.bags import TRIDENT_COORDS_ATTRS, BagError, load_bag, save_bag


def test_roundtrip_keeps_attrs(tmp_path):
    features = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    coords = np.arange(10).reshape(5, 2) * 256
    attrs = dict.fromkeys(TRIDENT_COORDS_ATTRS, 1) | {"name": "s1", "patch_size_level0": 512}
    path = save_bag(tmp_path / "s1.h5", features, coords, attrs, {"encoder": "he-handcrafted"})
    bag = load_bag(path)
    np.testing.assert_array_equal(bag.features, features)
    assert bag.coords.dtype == np.int64 and bag.coords.shape == (5, 2)
    assert bag.attrs["encoder"] == "he-handcrafted" and bag.slide_id == "s1"
    assert bag.patch_size_level0 == 512
    assert not list(tmp_path.glob(".*tmp-*"))


def test_trident_file(tmp_path):
    path = tmp_path / "TCGA-XX.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.ones((3, 1024), np.float32))
        coords = handle.create_dataset("coords", data=np.zeros((3, 2), np.int32))
        coords.attrs.update(patch_size=256, patch_size_level0=512, level0_magnification=40,
                            target_magnification=20, name=np.bytes_(b"TCGA-XX"))
    bag = load_bag(path)
    assert bag.slide_id == "TCGA-XX" and bag.dim == 1024 and bag.coords.dtype == np.int64
    assert bag.patch_size_level0 == 512


def test_clam_file_with_batch_axis(tmp_path):
    path = tmp_path / "slide_7.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.ones((1, 4, 16), np.float32))
        coords = handle.create_dataset("coords", data=np.zeros((4, 2), np.int64))
        coords.attrs.update(patch_level=0, patch_size=256)
    bag = load_bag(path)
    assert bag.features.shape == (4, 16) and bag.slide_id == "slide_7"
    assert bag.patch_size_level0 == 256


def test_clam_pt_file_is_loaded_safely(tmp_path):
    path = tmp_path / "slide_8.pt"
    torch.save(torch.ones(6, 32), path)
    bag = load_bag(path)
    assert bag.features.shape == (6, 32) and bag.coords is None


class Payload:
    """An arbitrary object: unpickling it would run code from the file."""


def test_pt_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_bag(path)


def test_mismatched_lengths(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("features", data=np.ones((3, 4), np.float32))
        handle.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(BagError, match="3 features but 2 coords"):
        load_bag(path)
    with pytest.raises(BagError):
        save_bag(tmp_path / "x.h5", np.ones((3, 4)), np.zeros((2, 2)), {})


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_text("no")
    with pytest.raises(BagError, match="cannot read"):
        load_bag(path)
