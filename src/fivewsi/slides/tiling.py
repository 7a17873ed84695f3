"""Patch coordinates at a target magnification, kept where the tissue mask covers them.

The grid is non-overlapping, starts at the slide's top-left corner and holds only patches that
lie entirely inside the slide (as CLAM and TRIDENT do), so every patch is real tissue-scale
image data and never padding. Tissue fractions come from an integral image of the thumbnail
mask, interpolated so that patch borders falling between thumbnail pixels are weighted
exactly: the cost is a few vectorised lookups per patch, whatever the number of patches.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import cv2
import numpy as np

from fivewsi.slides.readers import SlideError, SlideReader
from fivewsi.slides.tissue import TissueParams, detect_tissue

log = logging.getLogger(__name__)

#: Thumbnail resolution aimed at for tissue detection (about a 2.5x objective).
DEFAULT_THUMB_MPP = 4.0
#: A patch should cover at least this many thumbnail pixels per side where the size allows.
_PREFERRED_PX_PER_PATCH = 4
#: ... and never fewer than this, or its tissue fraction is meaningless.
_MIN_PX_PER_PATCH = 2
#: A pyramid level this much finer than the wanted thumbnail is still used at its own size.
_SNAP_FINER = 1.5
#: Target resolutions finer than level 0 by more than this factor upsample the slide.
_UPSAMPLE_TOLERANCE = 1.1


@dataclass
class Tiling:
    """Patch grid of one slide, with the thumbnail and mask it was derived from.

    Example:
        >>> import numpy as np
        >>> t = Tiling(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 256, 512, 0.5,
        ...            0.25, np.zeros((4, 4), bool), np.zeros((4, 4, 3), np.uint8), 128.0)
        >>> len(t)
        0
    """

    coords: np.ndarray  # [N, 2] int64 level-0 top-left (x, y), row-major order
    tissue_fraction: np.ndarray  # [N] float32
    patch_size: int  # pixels at the target mpp
    patch_size_level0: int  # pixels at level 0 (rounded)
    target_mpp: float
    slide_mpp: float  # level-0 mpp used
    mask: np.ndarray  # bool tissue mask at thumbnail scale
    thumbnail: np.ndarray  # RGB uint8
    thumb_downsample: float  # level-0 pixels per thumbnail pixel

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def tissue_area_mm2(self) -> float:
        """Area of the tissue mask in mm²."""
        um_per_px = self.slide_mpp * self.thumb_downsample
        return float(self.mask.sum()) * um_per_px**2 / 1e6


def tile_slide(
    slide: SlideReader,
    *,
    target_mpp: float = 0.5,
    patch_size: int = 256,
    min_tissue: float = 0.25,
    thumb_max_side: int = 2048,
    thumb_mpp: float = DEFAULT_THUMB_MPP,
    tissue_params: TissueParams | None = None,
) -> Tiling:
    """Detect tissue on a thumbnail and list the grid patches that are mostly tissue.

    Args:
        slide: an open slide whose ``mpp`` is known (from metadata or given by the user).
        target_mpp: microns per pixel of the patches fed to the encoder (0.5 is 20x).
        patch_size: patch side in pixels at ``target_mpp``.
        min_tissue: fraction of a patch's area that must be tissue for it to be kept.
        thumb_max_side: upper bound of the thumbnail's longer side.
        thumb_mpp: thumbnail resolution aimed at; a pyramid level close to it is preferred.
        tissue_params: tissue detection settings.

    Raises:
        SlideError: the slide's microns per pixel are unknown.

    Example:
        >>> from fivewsi.slides import open_slide  # doctest: +SKIP
        >>> tiling = tile_slide(open_slide("slide.svs"), target_mpp=0.5)  # doctest: +SKIP
        >>> tiling.coords.shape, tiling.patch_size_level0  # doctest: +SKIP
        ((1234, 2), 512)
    """
    _check_args(target_mpp, patch_size, min_tissue, thumb_max_side)
    start = time.perf_counter()
    slide_mpp = _slide_mpp(slide, target_mpp)
    size0 = patch_size_at_level0(patch_size, target_mpp, slide_mpp)
    side = choose_thumbnail_side(
        slide, size0, slide_mpp, max_side=thumb_max_side, thumb_mpp=thumb_mpp
    )
    thumbnail, thumb_ds = slide.read_thumbnail(side)
    mask = detect_tissue(thumbnail, params=tissue_params, mpp=slide_mpp * thumb_ds)
    width, height = slide.dimensions
    grid = grid_coords(width, height, size0)
    scale = (mask.shape[1] / width, mask.shape[0] / height)
    fraction = tissue_fractions(mask, grid, size0, scale)
    # A small tolerance so that min_tissue=1.0 keeps fully covered patches despite rounding.
    keep = fraction >= min_tissue - 1e-6
    tiling = Tiling(
        coords=grid[keep],
        tissue_fraction=fraction[keep],
        patch_size=patch_size,
        patch_size_level0=size0,
        target_mpp=float(target_mpp),
        slide_mpp=float(slide_mpp),
        mask=mask,
        thumbnail=thumbnail,
        thumb_downsample=float(thumb_ds),
    )
    log.debug(
        "%s: %d of %d grid patches kept (%d px at %.3g mpp = %d px at level 0), "
        "tissue %.2f mm², thumbnail %dx%d, %.2f s",
        slide.slide_id,
        len(tiling),
        len(grid),
        patch_size,
        target_mpp,
        size0,
        tiling.tissue_area_mm2,
        mask.shape[1],
        mask.shape[0],
        time.perf_counter() - start,
    )
    return tiling


def patch_size_at_level0(patch_size: int, target_mpp: float, slide_mpp: float) -> int:
    """Side in level-0 pixels of a ``patch_size`` patch at ``target_mpp``.

    Example:
        >>> patch_size_at_level0(256, target_mpp=0.5, slide_mpp=0.25)
        512
    """
    return max(1, round(patch_size * target_mpp / slide_mpp))


def grid_coords(width: int, height: int, size0: int) -> np.ndarray:
    """Top-left corners of the non-overlapping ``size0`` patches inside the slide, row-major.

    Example:
        >>> grid_coords(1000, 800, 400).tolist()
        [[0, 0], [400, 0], [0, 400], [400, 400]]
    """
    xs = np.arange(width // size0, dtype=np.int64) * size0
    ys = np.arange(height // size0, dtype=np.int64) * size0
    grid_x, grid_y = np.meshgrid(xs, ys)  # rows follow y, so ravel is row-major
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def tissue_fractions(
    mask: np.ndarray, coords: np.ndarray, size0: int, scale: tuple[float, float]
) -> np.ndarray:
    """Fraction of each level-0 square patch covered by ``mask``.

    ``scale`` is (mask pixels per level-0 pixel along x, along y). The mask's integral image is
    interpolated bilinearly, which is exact for a pixel-wise constant mask, so a patch border
    that falls inside a thumbnail pixel counts that pixel in proportion.

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((2, 4), bool); mask[:, :2] = True
        >>> tissue_fractions(mask, np.array([[0, 0], [100, 0], [200, 0]]), 200, (0.01, 0.01))
        array([1. , 0.5, 0. ], dtype=float32)
    """
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    integral = cv2.integral(mask.astype(np.uint8)).astype(np.float64)
    x0 = coords[:, 0] * scale[0]
    y0 = coords[:, 1] * scale[1]
    x1 = (coords[:, 0] + size0) * scale[0]
    y1 = (coords[:, 1] + size0) * scale[1]
    covered = (
        _integral_at(integral, x1, y1)
        - _integral_at(integral, x0, y1)
        - _integral_at(integral, x1, y0)
        + _integral_at(integral, x0, y0)
    )
    area = (x1 - x0) * (y1 - y0)
    return np.clip(covered / area, 0.0, 1.0).astype(np.float32)


def choose_thumbnail_side(
    slide: SlideReader,
    size0: int,
    slide_mpp: float,
    *,
    max_side: int = 2048,
    thumb_mpp: float = DEFAULT_THUMB_MPP,
) -> int:
    """Longer side of the thumbnail used for tissue detection.

    Aims at ``thumb_mpp`` with a patch spanning a few thumbnail pixels and the thumbnail at
    most ``max_side``; within those bounds a pyramid level's own size is preferred, coarser
    ones included, because reading a finer level and shrinking it costs far more than the
    detection itself.

    Example:
        >>> class Flat:
        ...     dimensions, level_downsamples = (40_000, 30_000), [1.0, 4.0, 16.0, 64.0]
        >>> choose_thumbnail_side(Flat(), 512, 0.25)  # level 3; level 1 would be 75 MP
        625
    """
    longest = max(slide.dimensions)
    ds_min = max(1.0, longest / max_side)
    ds_max = max(ds_min, size0 / _MIN_PX_PER_PATCH)
    ds_fine = max(ds_min, size0 / _PREFERRED_PX_PER_PATCH)
    ds_want = float(np.clip(thumb_mpp / slide_mpp, ds_min, ds_fine))
    # A much finer level would be read anyway (read_thumbnail takes the finest level not
    # coarser than asked) and would only make the thumbnail bigger, so it is no candidate.
    low = max(ds_min / 1.01, ds_want / _SNAP_FINER)
    levels = [ds for ds in slide.level_downsamples if low <= ds <= ds_max * 1.01]
    if levels:
        # Nearest in log scale; on a tie the coarser level, which is cheaper to read.
        ds_want = min(levels, key=lambda ds: (abs(math.log(ds / ds_want)), -ds))
    return max(1, min(max_side, round(longest / ds_want)))


def _integral_at(integral: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an integral image at fractional (x, y) positions."""
    height, width = integral.shape[0] - 1, integral.shape[1] - 1
    x = np.clip(x, 0, width)
    y = np.clip(y, 0, height)
    col = np.minimum(np.floor(x).astype(np.int64), width - 1)
    row = np.minimum(np.floor(y).astype(np.int64), height - 1)
    fx, fy = x - col, y - row
    top = integral[row, col] * (1 - fx) + integral[row, col + 1] * fx
    bottom = integral[row + 1, col] * (1 - fx) + integral[row + 1, col + 1] * fx
    return top * (1 - fy) + bottom * fy


def _slide_mpp(slide: SlideReader, target_mpp: float) -> float:
    slide_mpp = slide.mpp
    if slide_mpp is None:
        raise SlideError(
            f"slide {slide.slide_id} has no microns-per-pixel in its metadata; pass "
            "--slide-mpp MPP (e.g. 0.25 for 40x, 0.5 for 20x), or list it in --slide-mpp-csv"
        )
    if target_mpp * _UPSAMPLE_TOLERANCE < slide_mpp:
        log.warning(
            "%s: target %.3g mpp is finer than the slide's %.3g mpp; patches will be upsampled",
            slide.slide_id,
            target_mpp,
            slide_mpp,
        )
    return float(slide_mpp)


def _check_args(target_mpp: float, patch_size: int, min_tissue: float, max_side: int) -> None:
    if not target_mpp > 0:
        raise ValueError(f"target_mpp must be positive, got {target_mpp}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be at least 1, got {patch_size}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be within [0, 1], got {min_tissue}")
    if max_side < 1:
        raise ValueError(f"thumb_max_side must be at least 1, got {max_side}")
