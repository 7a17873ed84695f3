"""The synthetic H&E pixel slide generator and its bounded-memory pyramidal TIFF writer."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fivewsi.slides import OpenSlideReader, open_slide
from fivewsi.synthetic import (
    PixelSlideSpec,
    SignalRegion,
    pyramid_sizes,
    render_region,
    write_pixel_slide,
    write_pyramid_tiff,
)

SIZE = {"width": 2048, "height": 1536}
REGION = (1024, 768, 260)  # centre and radius of the tumour-like focus, level-0 px

# Ruifrok & Johnston's H&E(+DAB) stain matrix: an independent colour deconvolution.
_STAINS = np.array([[0.650, 0.704, 0.286], [0.072, 0.990, 0.105], [0.268, 0.570, 0.776]])
_UNMIX = np.linalg.inv(_STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True))


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin concentration per pixel by colour deconvolution."""
    od = -np.log((rgb.reshape(-1, 3).astype(np.float32) + 1.0) / 256.0)
    return (od @ _UNMIX[:, :1].astype(np.float32)).reshape(rgb.shape[:2])


def read_level(path: Path, level: int = 0) -> np.ndarray:
    with open_slide(path) as slide:
        w, h = slide.level_dimensions[level]
        return slide.read_region(0, 0, level, w, h)


def saturation(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]


def disk(shape: tuple[int, ...], x: float, y: float, radius: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (xx - x) ** 2 + (yy - y) ** 2 <= radius**2


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def plain(folder: Path) -> Path:
    return write_pixel_slide(folder / "plain.tif", seed=3, **SIZE)


@pytest.fixture(scope="module")
def marked(folder: Path) -> Path:
    return write_pixel_slide(
        folder / "marked.tif", seed=3, pen_mark="green", regions=[(*REGION, "tumour")], **SIZE
    )


def test_opens_as_generic_tiff_with_mpp_and_pyramid(plain: Path) -> None:
    with open_slide(plain) as slide:
        assert isinstance(slide, OpenSlideReader)
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (2048, 1536)
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        assert list(slide.level_dimensions) == [(2048, 1536), (1024, 768), (512, 384)]
        assert slide.level_downsamples == pytest.approx([1.0, 2.0, 4.0])


def test_reduced_levels_are_downsampled_level0(plain: Path) -> None:
    level0 = read_level(plain).astype(np.float32)
    with open_slide(plain) as slide:
        for level in (1, 2):
            ds = 2**level
            w, h = slide.level_dimensions[level]
            stored = slide.read_region(0, 0, level, w, h).astype(np.float32)
            expected = cv2.resize(level0, (w, h), interpolation=cv2.INTER_AREA)
            assert np.abs(stored - expected).mean() < 3.0, f"level {level} (downsample {ds})"


def test_mpp_none_leaves_resolution_to_the_user(folder: Path) -> None:
    path = write_pixel_slide(folder / "no-mpp.tif", width=640, height=512, mpp=None)
    with open_slide(path) as slide:
        assert slide.mpp is None
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == 0.25 and slide.mpp_source == "user"


def test_same_seed_same_bytes_other_seed_other_pixels(folder: Path, plain: Path) -> None:
    again = write_pixel_slide(folder / "again.tif", seed=3, **SIZE)
    other = write_pixel_slide(folder / "other.tif", seed=4, **SIZE)
    assert again.read_bytes() == plain.read_bytes()
    assert np.abs(read_level(other, 1).astype(int) - read_level(plain, 1)).mean() > 5


def test_pixels_do_not_depend_on_how_the_slide_is_cut() -> None:
    """Tiles are seamless: a region equals its pieces rendered separately (any tile size)."""
    options = {"width": 1024, "height": 768, "seed": 5, "regions": [(850, 400, 100)]}

    def piece(x: int, y: int, w: int, h: int, **extra: int) -> np.ndarray:
        return render_region(x, y, w, h, **options, **extra)

    whole = piece(700, 300, 300, 200)
    left, right = piece(700, 300, 137, 200), piece(837, 300, 163, 200)
    top, bottom = piece(700, 300, 300, 77), piece(700, 377, 300, 123)
    assert np.array_equal(whole, np.concatenate([left, right], axis=1))
    assert np.array_equal(whole, np.concatenate([top, bottom], axis=0))
    assert np.array_equal(whole, piece(700, 300, 300, 200, tile=512))
    # a glass-only piece (fast path) next to one with tissue
    edge = piece(300, 380, 400, 60)
    assert np.array_equal(edge, np.hstack([piece(300, 380, 200, 60), piece(500, 380, 200, 60)]))


def test_glass_is_near_white_and_tissue_is_pink_and_found_by_otsu(plain: Path) -> None:
    rgb = read_level(plain, 1)
    sat = saturation(rgb)
    threshold, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    tissue = sat > threshold
    assert 0.1 < tissue.mean() < 0.6
    near_tissue = cv2.dilate(tissue.astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    glass = rgb[~near_tissue].astype(np.float32)
    assert len(glass) > 0.2 * tissue.size
    assert np.abs(np.median(glass, axis=0) - (240, 238, 242)).max() <= 3
    assert glass.std(axis=0).max() < 3  # slight noise only
    pink = np.median(rgb[tissue].astype(np.float32), axis=0)
    assert pink[0] > pink[1] + 40 and pink[2] > pink[1] + 20  # red and blue over green
    assert pink.mean() < 200  # clearly darker than glass


def test_nuclei_carry_the_hematoxylin_signal(plain: Path) -> None:
    rgb = read_level(plain)
    h = hematoxylin(rgb)
    dark = rgb.sum(axis=2) < 330  # nucleus-like pixels
    sat = saturation(rgb)
    stroma = (sat > 40) & ~dark
    assert dark.mean() > 0.005
    assert np.median(h[dark]) > np.median(h[stroma]) + 0.3
    assert np.median(h[stroma]) > np.median(h[sat < 15]) + 0.05


def test_pen_mark_adds_ink_pixels(folder: Path, plain: Path, marked: Path) -> None:
    def green(rgb: np.ndarray) -> float:
        r, g, b = (rgb[..., i].astype(int) for i in range(3))
        return float(np.mean((g > r + 40) & (g > b + 15)))

    def blue(rgb: np.ndarray) -> float:
        r, g, b = (rgb[..., i].astype(int) for i in range(3))
        return float(np.mean((b > r + 70) & (b > g + 40)))

    blue_path = write_pixel_slide(folder / "blue.tif", seed=3, pen_mark="blue", **SIZE)
    plain_rgb, marked_rgb, blue_rgb = (read_level(p, 1) for p in (plain, marked, blue_path))
    assert green(plain_rgb) == 0.0 and blue(plain_rgb) < 1e-4
    assert green(marked_rgb) > 0.005
    assert blue(blue_rgb) > 0.005


def test_signal_region_has_denser_darker_nuclei(marked: Path) -> None:
    rgb = read_level(marked)
    x, y, radius = REGION
    inside = disk(rgb.shape, x, y, radius * 0.6)
    sat = saturation(rgb)
    ink = rgb[..., 1].astype(int) > rgb[..., 0]  # the green pen also absorbs red light
    elsewhere = (sat > 40) & ~ink & ~disk(rgb.shape, x, y, radius * 1.3)
    nuclei = (hematoxylin(rgb) > 0.9) & ~ink
    assert elsewhere.sum() > 50_000
    # the region is tissue, and nuclei cover a far larger share of it than of other tissue
    assert sat[inside].mean() > 40
    assert nuclei[inside].mean() > 2.5 * nuclei[elsewhere].mean()


def test_region_tuples_and_presets() -> None:
    spec = PixelSlideSpec(regions=[(10, 20, 30), (1, 2, 3, "lymphocytic")])
    assert spec.regions[0] == SignalRegion.styled(10, 20, 30, "tumour")
    assert spec.regions[1].size < 1 < spec.regions[1].density
    with pytest.raises(ValueError, match="unknown region style"):
        SignalRegion.styled(0, 0, 1, "necrosis")


@pytest.mark.parametrize(
    "options", [{"tile": 100}, {"width": 10}, {"pen_mark": "red"}, {"mpp": -1.0}]
)
def test_invalid_options_are_refused(folder: Path, options: dict) -> None:
    with pytest.raises(ValueError):
        write_pixel_slide(folder / "bad.tif", **options)
    assert not (folder / "bad.tif").exists()


def test_unknown_option_is_refused(folder: Path) -> None:
    with pytest.raises(TypeError, match="unknown synthetic slide option"):
        write_pixel_slide(folder / "bad.tif", colour="blue")


def test_pyramid_sizes() -> None:
    assert pyramid_sizes(4096, 3072) == [(4096, 3072), (2048, 1536), (1024, 768), (512, 384)]
    assert pyramid_sizes(60000, 60000, min_level_side=1000)[-1] == (937, 937)
    assert pyramid_sizes(1001, 999, levels=2) == [(1001, 999), (500, 499)]


def test_writer_handles_odd_sizes_and_partial_tiles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(0, 255, (20, 25, 3), dtype=np.uint8), (1001, 777))
    rows = (image[y : y + 256] for y in range(0, 777, 256))
    path = write_pyramid_tiff(
        tmp_path / "odd.tif", rows, width=1001, height=777, mpp=0.25, min_level_side=200
    )
    with open_slide(path) as slide:
        assert slide.vendor == "generic-tiff" and slide.mpp == pytest.approx(0.25)
        assert list(slide.level_dimensions) == [(1001, 777), (500, 388), (250, 194)]
        full = slide.read_region(0, 0, 0, 1001, 777).astype(np.float32)
        assert np.abs(full - image).mean() < 4
        half = slide.read_region(0, 0, 1, 500, 388).astype(np.float32)
        expected = cv2.resize(image[:776, :1000], (500, 388), interpolation=cv2.INTER_AREA)
        assert np.abs(half - expected).mean() < 4


def test_failed_write_leaves_no_files(tmp_path: Path) -> None:
    def rows():
        yield np.zeros((256, 512, 3), np.uint8)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_pyramid_tiff(tmp_path / "broken.tif", rows(), width=512, height=512)
    with pytest.raises(ValueError, match="before the slide height"):
        write_pyramid_tiff(
            tmp_path / "short.tif", iter([np.zeros((256, 512, 3), np.uint8)]), width=512, height=512
        )
    assert list(tmp_path.iterdir()) == []


def test_no_temporary_files_remain(folder: Path, plain: Path, marked: Path) -> None:
    leftovers = [p.name for p in folder.iterdir() if p.suffix != ".tif" or p.name.startswith(".")]
    assert leftovers == []
