"""`preprocess`: slides → bags, manifest, failures, resume, settings, real slides."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import tifffile

from conftest import SHARED_SLIDES
from fivewsi.features import bags
from fivewsi.features.preprocess import (
    MANIFEST_COLUMNS,
    PreprocessConfig,
    SettingsMismatchError,
    preprocess,
)
from fivewsi.synthetic import write_pixel_slide

FAST = {"workers": 0, "batch_size": 32}


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory):
    """Two synthetic slides, one without mpp metadata, and one broken file."""
    folder = tmp_path_factory.mktemp("slides")
    write_pixel_slide(folder / "alpha.tif", width=2048, height=1536, mpp=0.5, seed=1)
    write_pixel_slide(folder / "beta.tif", width=1536, height=1536, mpp=0.25, seed=2)
    rng = np.random.default_rng(3)
    tissue = np.full((768, 768, 3), 235, np.uint8)
    tissue[100:600, 150:650] = rng.integers(90, 200, (500, 500, 3), dtype=np.uint8)
    tissue[100:600, 150:650, 1] //= 2  # pinkish, saturated enough to count as tissue
    tifffile.imwrite(folder / "no-mpp.tif", tissue, tile=(256, 256), photometric="rgb")
    (folder / "broken.svs").write_bytes(b"not a slide at all" * 20)
    return folder


def read_manifest(out):
    with open(out / "manifest.csv", newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def test_batch_with_failures(slide_dir, tmp_path):
    out = tmp_path / "out"
    result = preprocess([slide_dir], out, PreprocessConfig(**FAST), progress=False)
    manifest = read_manifest(out)
    assert tuple(next(iter(manifest.values())).keys()) == MANIFEST_COLUMNS
    assert set(manifest) == {"alpha", "beta", "no-mpp", "broken"}
    assert manifest["alpha"]["status"] == "done" and int(manifest["alpha"]["n_patches"]) > 0
    assert manifest["beta"]["status"] == "done"
    assert manifest["broken"]["status"] == "failed"
    assert "cannot read broken.svs" in manifest["broken"]["error"]
    assert manifest["no-mpp"]["status"] == "failed"
    assert "--slide-mpp" in manifest["no-mpp"]["error"]
    assert not result.ok and {r.slide_id for r in result.failed} == {"broken", "no-mpp"}
    assert (out / "qc" / "alpha.jpg").exists()
    assert json.loads((out / "preprocess.json").read_text())["encoder"] == "he-handcrafted"


def test_bag_layout_matches_trident(slide_dir, tmp_path):
    out = tmp_path / "out"
    preprocess([slide_dir / "beta.tif"], out, PreprocessConfig(**FAST), progress=False)
    with h5py.File(out / "features" / "beta.h5", "r") as handle:
        features, coords = handle["features"], handle["coords"]
        assert features.dtype == np.float32 and coords.dtype == np.int64
        assert features.shape[0] == coords.shape[0] and coords.shape[1] == 2
        attrs = dict(coords.attrs)
        for key in bags.TRIDENT_COORDS_ATTRS:
            assert key in attrs
        # 0.25 µm/px slide, 0.5 µm/px patches of 256 px: 512 level-0 pixels, 40x → 20x
        assert attrs["patch_size"] == 256 and attrs["patch_size_level0"] == 512
        assert attrs["level0_magnification"] == 40 and attrs["target_magnification"] == 20
        assert (attrs["level0_width"], attrs["level0_height"]) == (1536, 1536)
        assert features.attrs["encoder"] == "he-handcrafted"
        assert np.all(coords[:] % 512 == 0)
    bag = bags.load_bag(out / "features" / "beta.h5")
    assert np.isfinite(bag.features).all() and bag.slide_id == "beta"


def test_slide_mpp_rescues_slides_without_metadata(slide_dir, tmp_path):
    out = tmp_path / "out"
    config = PreprocessConfig(slide_mpp=0.5, **FAST)
    result = preprocess([slide_dir / "no-mpp.tif"], out, config, progress=False)
    assert result.ok
    assert read_manifest(out)["no-mpp"]["mpp_source"] == "user"


def test_rerun_skips_finished_and_retries_failed(slide_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    preprocess([slide_dir], out, PreprocessConfig(**FAST), progress=False)
    before = (out / "features" / "alpha.h5").stat().st_mtime_ns
    calls = []
    real = preprocess.__globals__["_process_slide"]

    def spy(path, *args, **kwargs):
        calls.append(path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setitem(preprocess.__globals__, "_process_slide", spy)
    result = preprocess([slide_dir], out, PreprocessConfig(**FAST), progress=False)
    assert sorted(calls) == ["broken.svs", "no-mpp.tif"]  # failed ones are retried
    assert (out / "features" / "alpha.h5").stat().st_mtime_ns == before
    reused = {r.slide_id for r in result.records if r.reused}
    assert reused == {"alpha", "beta"}
    assert read_manifest(out)["alpha"]["status"] == "done"


def test_feature_file_without_status_counts_as_done(slide_dir, tmp_path):
    out = tmp_path / "out"
    preprocess([slide_dir / "alpha.tif"], out, PreprocessConfig(**FAST), progress=False)
    (out / "status" / "alpha.json").unlink()  # killed between the rename and the status write
    result = preprocess([slide_dir / "alpha.tif"], out, PreprocessConfig(**FAST), progress=False)
    assert result.records[0].reused and result.records[0].n_patches > 0


def test_leftover_temp_file_is_never_done(slide_dir, tmp_path):
    out = tmp_path / "out"
    (out / "features").mkdir(parents=True)
    stale = out / "features" / ".alpha.h5.tmp-999999999"
    stale.write_bytes(b"partial")
    result = preprocess([slide_dir / "alpha.tif"], out, PreprocessConfig(**FAST), progress=False)
    assert not result.records[0].reused and result.ok
    assert not stale.exists()


def test_other_settings_are_refused(slide_dir, tmp_path):
    out = tmp_path / "out"
    preprocess([slide_dir / "alpha.tif"], out, PreprocessConfig(**FAST), progress=False)
    with pytest.raises(SettingsMismatchError, match="patch_size"):
        preprocess([slide_dir / "alpha.tif"], out, PreprocessConfig(patch_size=224, **FAST),
                   progress=False)


def test_workers_give_same_features(slide_dir, tmp_path):
    one = preprocess([slide_dir / "alpha.tif"], tmp_path / "a", PreprocessConfig(**FAST),
                     progress=False)
    two = preprocess([slide_dir / "alpha.tif"], tmp_path / "b",
                     PreprocessConfig(workers=2, batch_size=16), progress=False)
    assert one.ok and two.ok
    a = bags.load_bag(tmp_path / "a" / "features" / "alpha.h5")
    b = bags.load_bag(tmp_path / "b" / "features" / "alpha.h5")
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not SHARED_SLIDES.exists(), reason="../shared/data/slides not available")
def test_real_slides(tmp_path):
    """The shared slides: all finish with --slide-mpp, except the broken one, clearly refused."""
    out = tmp_path / "out"
    names = ["cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs", "tcga-lung-rgb.png",
             "broken.svs"]
    config = PreprocessConfig(slide_mpp=0.5, **FAST)
    result = preprocess([SHARED_SLIDES / n for n in names], out, config, progress=False)
    manifest = read_manifest(out)
    assert [r.slide_id for r in result.failed] == ["broken"]
    assert "cannot read broken.svs" in manifest["broken"]["error"]
    assert manifest["cmu-1-small-region"]["mpp_source"] == "metadata"
    assert manifest["tcga-cr-7395-01a-01-ts1"]["mpp_source"] == "user"
    assert manifest["tcga-lung-rgb"]["backend"] == "pillow"
    for slide_id, row in manifest.items():
        if slide_id != "broken":
            assert int(row["n_patches"]) > 0, slide_id


@pytest.mark.skipif(not SHARED_SLIDES.exists(), reason="../shared/data/slides not available")
def test_real_untiled_tiff(tmp_path):
    """kidney-48-5.tif is a low-magnification overview: its tissue fragment is ~110 px long."""
    config = PreprocessConfig(slide_mpp=4.0, target_mpp=4.0, patch_size=32, **FAST)
    result = preprocess([SHARED_SLIDES / "kidney-48-5.tif"], tmp_path / "out", config,
                        progress=False)
    record = result.records[0]
    assert result.ok and record.backend == "tifffile" and record.n_patches > 0


@pytest.mark.skipif(not SHARED_SLIDES.exists(), reason="../shared/data/slides not available")
def test_real_slide_without_mpp_fails_clearly(tmp_path):
    path = SHARED_SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    result = preprocess([path], tmp_path / "out", PreprocessConfig(**FAST), progress=False)
    assert "--slide-mpp" in result.failed[0].error
