"""Tissue detection, patch tiling at a target magnification and the QC thumbnail."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SHARED_SLIDES
from fivewsi.slides.qc import render_qc_image, save_qc_image
from fivewsi.slides.readers import SlideError, SlideReader, open_slide
from fivewsi.slides.tiling import (
    Tiling,
    choose_thumbnail_side,
    grid_coords,
    patch_size_at_level0,
    tile_slide,
    tissue_fractions,
)
from fivewsi.slides.tissue import TissueParams, detect_tissue, otsu_threshold

SLIDES = SHARED_SLIDES
needs_slides = pytest.mark.skipif(not SLIDES.is_dir(), reason=f"no real slides at {SLIDES}")

GLASS = (240, 238, 242)
PINK = (225, 140, 190)  # eosin
PURPLE = (135, 75, 165)  # hematoxylin
PALE_BLUE = (130, 135, 175)  # hematoxylin-only tissue, bluish but weakly saturated
GREEN_PEN = (40, 150, 80)
BLUE_PEN = (30, 60, 200)


class ArraySlide(SlideReader):
    """A one-level slide held in memory; ``mpp`` plays the user's --slide-mpp."""

    backend = "array"

    def __init__(self, image: np.ndarray, mpp: float | None, name: str = "synthetic") -> None:
        super().__init__(f"{name}.png", mpp)
        self._image = image

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]:
        return [(self._image.shape[1], self._image.shape[0])]

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        return self._image[y : y + height, x : x + width]


class PyramidShape:
    """Only what :func:`choose_thumbnail_side` looks at."""

    def __init__(self, size: int, levels: int) -> None:
        self.dimensions = (size, size)
        self.level_downsamples = [2.0**k for k in range(levels)]


def glass(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Empty glass: near-white with scanner noise."""
    return add_noise(np.full((height, width, 3), GLASS, np.uint8), seed, sigma=3)


def add_noise(image: np.ndarray, seed: int = 1, sigma: float = 6) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + sigma * noise, 0, 255).astype(np.uint8)


def h_and_e_slide(seed: int = 0) -> np.ndarray:
    """3000x2000 px at 1 mpp: a pink and a purple piece of tissue, a green pen line under them
    and a blue pen line across the pink piece."""
    image = glass(2000, 3000, seed)
    cv2.ellipse(image, (800, 800), (550, 450), 0, 0, 360, PINK, -1)
    cv2.circle(image, (2200, 800), 400, PURPLE, -1)
    cv2.line(image, (300, 1700), (2700, 1650), GREEN_PEN, 150)
    cv2.line(image, (800, 250), (800, 1350), BLUE_PEN, 60)
    return add_noise(image, seed + 1)


@pytest.fixture(scope="module")
def he_image() -> np.ndarray:
    return h_and_e_slide()


@pytest.fixture(scope="module")
def he_thumb(he_image: np.ndarray) -> np.ndarray:
    """The H&E slide at 4 µm per pixel."""
    return cv2.resize(he_image, (750, 500), interpolation=cv2.INTER_AREA)


# -- tissue detection -----------------------------------------------------------------------
def test_tissue_found_and_background_rejected(he_thumb: np.ndarray) -> None:
    mask = detect_tissue(he_thumb, mpp=4.0)
    assert mask.dtype == bool and mask.shape == he_thumb.shape[:2]
    assert mask[200, 120] and mask[200, 550]  # inside the pink and the purple piece
    assert not mask[:40].any() and not mask[:, -60:].any()  # glass
    ellipse_area = np.pi * (550 / 4) * (450 / 4) + np.pi * (400 / 4) ** 2
    assert 0.85 < mask.sum() / ellipse_area < 1.05


def test_pen_marks_rejected(he_thumb: np.ndarray) -> None:
    mask = detect_tissue(he_thumb, mpp=4.0)
    green_line = mask[405:430, 100:650]
    assert not green_line.any()
    # The blue line crosses the pink tissue: it is cut out although tissue surrounds it.
    assert not mask[100:300, 198:202].any()
    assert mask[100:300, 160:180].all()


def test_weakly_saturated_blue_tissue_is_not_pen() -> None:
    image = glass(400, 400)
    cv2.circle(image, (200, 200), 120, PALE_BLUE, -1)
    mask = detect_tissue(add_noise(image), mpp=4.0)
    assert mask[200, 200] and 0.9 < mask.sum() / (np.pi * 120**2) < 1.1


@pytest.mark.parametrize("sigma", [0.0, 3.0, 8.0])
def test_blank_slide_has_no_tissue(sigma: float) -> None:
    blank = add_noise(np.full((300, 400, 3), GLASS, np.uint8), sigma=sigma)
    assert not detect_tissue(blank, mpp=4.0).any()
    assert not detect_tissue(blank).any()  # unknown mpp


def test_all_tissue_gives_full_mask() -> None:
    image = np.empty((256, 256, 3), np.uint8)
    image[:] = PINK
    image[::2, ::3] = PURPLE  # mixed stains; Otsu splits them, the ceiling keeps both
    image[64:192, 64:192] = (230, 185, 215)  # pale stroma, saturation ~50
    assert detect_tissue(add_noise(image), mpp=4.0).all()


def test_mask_does_not_depend_on_thumbnail_size(he_image: np.ndarray) -> None:
    masks = []
    for um_per_px in (1.0, 4.0, 8.0):  # 1 µm/px is reduced to TissueParams.work_mpp first
        size = (round(3000 / um_per_px), round(2000 / um_per_px))
        thumb = cv2.resize(he_image, size, interpolation=cv2.INTER_AREA)
        mask = detect_tissue(thumb, mpp=um_per_px).astype(np.uint8)
        masks.append(cv2.resize(mask, (375, 250), interpolation=cv2.INTER_AREA) > 0)
    for other in masks[1:]:
        iou = (masks[0] & other).sum() / (masks[0] | other).sum()
        assert iou > 0.95


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (7, 1), (3, 3)])
def test_tiny_images(shape: tuple[int, int]) -> None:
    for colour in (GLASS, PURPLE):
        mask = detect_tissue(np.full((*shape, 3), colour, np.uint8))
        assert mask.shape == shape and mask.dtype == bool


def test_empty_image_and_bad_input() -> None:
    assert detect_tissue(np.zeros((0, 5, 3), np.uint8)).shape == (0, 5)
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_tissue(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        detect_tissue(np.zeros((4, 4, 3), np.float32))


def test_small_objects_removed_by_micron_area() -> None:
    image = glass(400, 400)
    cv2.circle(image, (100, 100), 6, PURPLE, -1)  # ~113 px
    cv2.circle(image, (300, 300), 60, PURPLE, -1)
    params = TissueParams(min_object_um2=1000.0)
    # At 4 µm/px the speck is ~1800 µm² and kept; at 1 µm/px it is ~113 µm² and dropped.
    assert detect_tissue(image, mpp=4.0, params=params)[100, 100]
    assert not detect_tissue(image, mpp=1.0, params=params)[100, 100]
    assert detect_tissue(image, mpp=1.0, params=params)[300, 300]


def test_small_holes_filled_large_kept() -> None:
    image = np.full((400, 400, 3), PINK, np.uint8)
    cv2.circle(image, (100, 100), 8, GLASS, -1)  # fat cell
    cv2.circle(image, (280, 280), 80, GLASS, -1)  # large lumen
    mask = detect_tissue(add_noise(image), mpp=4.0)
    assert mask[100, 100]
    assert not mask[280, 280]


def test_otsu_threshold_splits_two_modes() -> None:
    values = np.r_[np.full(100, 10), np.full(50, 200)]
    threshold = otsu_threshold(np.bincount(values, minlength=256))
    assert 10 <= threshold < 200
    assert otsu_threshold(np.zeros(256)) == 0
    assert otsu_threshold(np.bincount([7, 7], minlength=256)) == 7


# -- coordinates ------------------------------------------------------------------------------
def test_patch_size_level0_math() -> None:
    assert patch_size_at_level0(256, 0.5, 0.25) == 512
    assert patch_size_at_level0(256, 0.5, 0.5) == 256
    assert patch_size_at_level0(224, 1.0, 0.25) == 896
    assert patch_size_at_level0(256, 0.5, 0.499) == 257
    assert patch_size_at_level0(1, 0.01, 10.0) == 1


def test_tile_slide_grid(he_image: np.ndarray) -> None:
    tiling = tile_slide(ArraySlide(he_image, mpp=1.0), target_mpp=0.5, patch_size=256)
    size0 = tiling.patch_size_level0
    assert size0 == 128 and tiling.slide_mpp == 1.0 and tiling.patch_size == 256
    coords = tiling.coords
    assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2
    assert len(tiling) > 50
    assert (coords % size0 == 0).all()
    assert (coords >= 0).all()
    assert (coords[:, 0] + size0 <= 3000).all() and (coords[:, 1] + size0 <= 2000).all()
    order = np.lexsort((coords[:, 0], coords[:, 1]))  # y first, then x
    assert (order == np.arange(len(coords))).all()
    assert tiling.tissue_fraction.dtype == np.float32
    assert (tiling.tissue_fraction >= 0.25).all() and (tiling.tissue_fraction <= 1).all()
    # No patch on the green pen line (y 1575-1775) and none on bare glass.
    on_pen = (coords[:, 1] > 1550) & (coords[:, 1] < 1750)
    assert not on_pen.any()
    assert not ((coords[:, 0] > 2650) | (coords[:, 1] < 300)).any()
    assert tiling.mask.shape == tiling.thumbnail.shape[:2]


def test_min_tissue_threshold(he_image: np.ndarray) -> None:
    slide = ArraySlide(he_image, mpp=1.0)
    tilings = {m: tile_slide(slide, min_tissue=m) for m in (0.0, 0.25, 0.75, 1.0)}
    assert len(tilings[0.0]) == (3000 // 128) * (2000 // 128)  # every grid position
    sizes = [len(tilings[m]) for m in (0.0, 0.25, 0.75, 1.0)]
    assert sizes == sorted(sizes, reverse=True) and sizes[3] > 0
    strict = {tuple(c) for c in tilings[0.75].coords}
    assert strict <= {tuple(c) for c in tilings[0.25].coords}
    assert (tilings[1.0].tissue_fraction >= 0.999).all()


def test_tissue_fraction_at_an_edge() -> None:
    # Tissue on the left 1088 px with 128 px patches: the patch at x=896 is all tissue, the
    # border runs through the middle of the one at x=1024, the one at x=1280 has none.
    image = glass(512, 2048)
    image[:, :1088] = PURPLE
    tiling = tile_slide(ArraySlide(add_noise(image), mpp=1.0), patch_size=256, min_tissue=0.0)
    frac = dict(zip(map(tuple, tiling.coords.tolist()), tiling.tissue_fraction, strict=True))
    assert frac[(896, 128)] > 0.95
    assert 0.4 < frac[(1024, 128)] < 0.6
    assert frac[(1280, 128)] < 0.05


def test_blank_slide_gives_no_patches() -> None:
    tiling = tile_slide(ArraySlide(glass(1500, 2000), mpp=0.5))
    assert len(tiling) == 0 and tiling.coords.shape == (0, 2)
    assert tiling.tissue_fraction.shape == (0,)


def test_slide_smaller_than_a_patch() -> None:
    image = np.full((100, 100, 3), PURPLE, np.uint8)
    tiling = tile_slide(ArraySlide(image, mpp=0.5), patch_size=256)
    assert len(tiling) == 0


def test_missing_mpp_raises() -> None:
    with pytest.raises(SlideError, match="slide-mpp") as info:
        tile_slide(ArraySlide(glass(100, 100), mpp=None, name="no-mpp"))
    assert "no-mpp" in str(info.value)


def test_upsampling_warns(caplog: pytest.LogCaptureFixture) -> None:
    image = glass(600, 600)
    with caplog.at_level(logging.WARNING, logger="fivewsi.slides.tiling"):
        tile_slide(ArraySlide(image, mpp=0.5), target_mpp=0.5)
        assert not caplog.records
        tiling = tile_slide(ArraySlide(image, mpp=0.5), target_mpp=0.25)
    assert "upsampled" in caplog.text
    assert tiling.patch_size_level0 == 128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_mpp": 0}, "target_mpp"),
        ({"patch_size": 0}, "patch_size"),
        ({"min_tissue": 1.5}, "min_tissue"),
        ({"thumb_max_side": 0}, "thumb_max_side"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tile_slide(ArraySlide(glass(10, 10), mpp=0.5), **kwargs)


def test_grid_coords_row_major() -> None:
    assert grid_coords(1000, 800, 400).tolist() == [[0, 0], [400, 0], [0, 400], [400, 400]]
    assert grid_coords(100, 100, 400).shape == (0, 2)


def test_thumbnail_side_prefers_pyramid_levels() -> None:
    # 60000 px at 0.25 mpp, levels down to 937 px: the 1875 px level is read as is.
    assert choose_thumbnail_side(PyramidShape(60_000, 7), 512, 0.25) == 1875
    # Without a usable level, aim at ~4 µm/px within the maximum side.
    assert choose_thumbnail_side(PyramidShape(60_000, 1), 512, 0.25) == 2048
    assert choose_thumbnail_side(PyramidShape(2000, 1), 256, 0.5) == 250
    # A patch keeps a few thumbnail pixels: 32 px patches at level 0 need ds <= 8, not 16.
    assert choose_thumbnail_side(PyramidShape(8000, 1), 32, 0.25) == 1000
    # Never larger than the slide.
    assert choose_thumbnail_side(PyramidShape(300, 1), 2, 1.0) == 300


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    size0=st.integers(1, 40),
    scale=st.tuples(st.floats(0.05, 1.5), st.floats(0.05, 1.5)),
)
def test_tissue_fractions_exact(
    seed: int, shape: tuple[int, int], size0: int, scale: tuple[float, float]
) -> None:
    """The interpolated integral image equals the area-weighted pixel overlap."""
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < 0.5
    width, height = shape[1] / scale[0], shape[0] / scale[1]
    coords = np.stack([rng.integers(0, int(width) + 1, 5), rng.integers(0, int(height) + 1, 5)], 1)
    got = tissue_fractions(mask, coords, size0, scale)
    for (x, y), value in zip(coords, got, strict=True):
        ox = _overlap(x * scale[0], (x + size0) * scale[0], shape[1])
        oy = _overlap(y * scale[1], (y + size0) * scale[1], shape[0])
        area = size0 * scale[0] * size0 * scale[1]
        expected = (oy[:, None] * ox[None, :] * mask).sum() / area
        assert value == pytest.approx(expected, abs=1e-5)


def _overlap(start: float, stop: float, n: int) -> np.ndarray:
    """Length of [start, stop) inside each unit pixel [i, i + 1), i < n."""
    edges = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(stop, edges + 1) - np.maximum(start, edges), 0, None)


# -- QC image ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def he_tiling(he_image: np.ndarray) -> Tiling:
    return tile_slide(ArraySlide(he_image, mpp=1.0))


@pytest.mark.parametrize("name", ["qc.jpg", "qc.png", "QC.JPEG"])
def test_qc_image_written(tmp_path: Path, he_tiling: Tiling, name: str) -> None:
    out = save_qc_image(tmp_path / "sub" / name, he_tiling, max_side=512)
    assert out == tmp_path / "sub" / name and out.is_file()
    image = cv2.imread(str(out))
    assert image is not None and max(image.shape[:2]) == 512
    assert [p.name for p in out.parent.iterdir()] == [name]  # no temporary file left


def test_qc_image_draws_patches(he_tiling: Tiling) -> None:
    drawn = render_qc_image(he_tiling, max_side=750)  # the thumbnail's own size
    plain = cv2.cvtColor(he_tiling.thumbnail, cv2.COLOR_RGB2BGR)
    x, y = he_tiling.coords[0] * 750 // 3000
    assert (drawn[y + 5, x] != plain[y + 5, x]).any()  # left edge of the first patch


def test_qc_image_tints_tiny_patches(he_tiling: Tiling) -> None:
    drawn = render_qc_image(he_tiling, max_side=120)  # 128 px patches become 5 px
    plain = cv2.resize(he_tiling.thumbnail, (120, 80), interpolation=cv2.INTER_AREA)
    x, y = (he_tiling.coords[len(he_tiling) // 2] + 64) * 120 // 3000  # a patch centre
    assert (drawn[y, x] != plain[y, x, ::-1]).any()
    assert drawn.shape == (80, 120, 3)


def test_qc_image_empty_tiling_and_bad_suffix(tmp_path: Path) -> None:
    tiling = tile_slide(ArraySlide(glass(500, 700), mpp=0.5))
    assert cv2.imread(str(save_qc_image(tmp_path / "blank.png", tiling))) is not None
    with pytest.raises(ValueError, match="jpg"):
        save_qc_image(tmp_path / "qc.gif", tiling)


# -- real slides ------------------------------------------------------------------------------
@needs_slides
@pytest.mark.shared
def test_cmu_small_region(tmp_path: Path) -> None:
    with open_slide(SLIDES / "cmu-1-small-region.svs") as slide:
        tiling = tile_slide(slide, target_mpp=0.5, patch_size=256)
    assert tiling.slide_mpp == pytest.approx(0.499)
    assert tiling.patch_size_level0 == 257
    # 8 x 11 grid positions; the tissue strip covers roughly a third to two thirds of them.
    assert 20 <= len(tiling) <= 70
    assert 0.6 < float(tiling.tissue_fraction.mean()) <= 1.0
    assert 0.2 < tiling.mask.mean() < 0.7
    assert cv2.imread(str(save_qc_image(tmp_path / "cmu.jpg", tiling))) is not None


@needs_slides
@pytest.mark.shared
def test_tcga_jpeg2000_with_explicit_mpp() -> None:
    path = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as slide, pytest.raises(SlideError, match="slide-mpp"):
        tile_slide(slide)
    with open_slide(path, mpp=0.25) as slide:
        tiling = tile_slide(slide, target_mpp=0.5, patch_size=256)
    assert tiling.patch_size_level0 == 512
    assert 20 <= len(tiling) <= 4443 // 512 * (3567 // 512)
    assert float(tiling.tissue_fraction.mean()) > 0.7


@needs_slides
@pytest.mark.shared
def test_kidney_tiff_fallback() -> None:
    # A low-power image: the biopsy is ~110 x 50 px, so about 10 µm per pixel.
    with open_slide(SLIDES / "kidney-48-5.tif", mpp=10.0) as slide:
        assert slide.backend == "tifffile"
        tiling = tile_slide(slide, target_mpp=10.0, patch_size=16)
    assert 3 <= len(tiling) <= 40
    assert tiling.mask.mean() < 0.01  # a small fragment on a large empty slide


@needs_slides
@pytest.mark.shared
def test_png_with_explicit_mpp() -> None:
    with open_slide(SLIDES / "tcga-lung-rgb.png", mpp=0.5) as slide:
        tiling = tile_slide(slide, target_mpp=0.5, patch_size=128)
    assert tiling.patch_size_level0 == 128
    assert 8 <= len(tiling) <= 16
