"""Slide readers on real slides (when ../shared is present) and on files written here."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import shared_slide
from fivewsi.slides.readers import (
    FallbackTiffReader,
    OpenSlideReader,
    PillowReader,
    SlideError,
    find_slides,
    open_slide,
    slide_id_from_path,
)


def test_slide_id_strips_double_suffix():
    assert slide_id_from_path("/x/a.ome.tiff") == "a"
    assert slide_id_from_path("b.svs") == "b"
    assert slide_id_from_path("c.d.tif") == "c.d"


def test_aperio_svs_metadata():
    with open_slide(shared_slide("cmu-1-small-region.svs")) as slide:
        assert isinstance(slide, OpenSlideReader)
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.mpp_source == "metadata"
        assert slide.objective_power == 20
        patch = slide.read_scaled(1000, 1000, size0=512, out_px=256)
        assert patch.shape == (256, 256, 3) and patch.dtype == np.uint8


def test_jpeg2000_svs_has_no_mpp_until_given():
    path = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    with open_slide(path) as slide:
        assert slide.mpp is None and slide.mpp_source is None
        assert slide.level_count == 2
        region = slide.read_region(2000, 1500, 1, 64, 64)
        assert region.std() > 0  # J2K tiles really decode
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "user"


def test_untiled_tiff_uses_fallback():
    with open_slide(shared_slide("kidney-48-5.tif")) as slide:
        assert isinstance(slide, FallbackTiffReader)
        assert slide.dimensions == (1493, 901)
        region = slide.read_region(100, 100, 0, 50, 40)
        assert region.shape == (40, 50, 3)


def test_png_uses_pillow():
    with open_slide(shared_slide("tcga-lung-rgb.png")) as slide:
        assert isinstance(slide, PillowReader)
        assert slide.mpp is None


def test_broken_file_is_refused_with_reasons():
    with pytest.raises(SlideError) as info:
        open_slide(shared_slide("broken.svs"))
    message = str(info.value)
    assert "broken.svs" in message and "OpenSlide" in message and "Pillow" in message


def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")


def test_garbage_file_written_here(tmp_path):
    path = tmp_path / "junk.svs"
    path.write_bytes(b"II*\x00" + b"\x00" * 200)  # TIFF magic, nothing behind it
    with pytest.raises(SlideError, match=r"cannot read junk\.svs"):
        open_slide(path)


def test_ome_tiff_pyramid_with_physical_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
    path = tmp_path / "sample.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(image, subifds=1, tile=(128, 128), photometric="rgb",
                 metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tw.write(image[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
    with open_slide(path) as slide:
        assert slide.slide_id == "sample"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_count == 2
        np.testing.assert_array_equal(slide.read_region(16, 32, 0, 40, 30), image[32:62, 16:56])


def test_region_off_slide_is_white(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    with open_slide(path, mpp=0.5) as slide:
        region = slide.read_region(20, 10, 0, 20, 20)
        assert (region[:10, :10] == 0).all() and (region[10:, :] == 255).all()


def test_thumbnail_bounded_and_scaled(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((300, 1200, 3), 128, np.uint8)).save(path)
    with open_slide(path, mpp=0.5) as slide:
        thumb, downsample = slide.read_thumbnail(max_side=400)
    assert thumb.shape == (100, 400, 3)
    assert downsample == pytest.approx(3.0)


def test_rgba_transparency_becomes_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with open_slide(path, mpp=1.0) as slide:
        assert (slide.read_region(0, 0, 0, 10, 10) == 255).all()


def test_find_slides_folders_and_files(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.svs", "a/y.txt", "z.tif"):
        (tmp_path / name).write_bytes(b"0")
    found = [p.name for p in find_slides([tmp_path / "a", tmp_path / "z.tif"])]
    assert found == ["x.svs", "z.tif"]
    with pytest.raises(SlideError, match="not found"):
        find_slides([tmp_path / "missing"])
