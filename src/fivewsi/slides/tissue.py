"""Tissue detection on a slide thumbnail: saturation + Otsu, pen-mark and artefact rejection.

Stained tissue is coloured while the glass around it is near-white and grey, so the HSV
saturation separates the two. Otsu picks the split per slide, clamped so that a blank slide
gives no tissue (Otsu would otherwise split the background noise) and an all-tissue image
keeps its pale parts. Pen marks (green, blue, black ink) are hues H&E never produces and are
removed, then morphology cleans the mask. Every size is given in microns, so the result does
not depend on the thumbnail's resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

log = logging.getLogger(__name__)


#: Thumbnails finer than ``work_mpp`` by more than this factor are reduced before detection.
_REDUCE_FROM = 1.5


@dataclass(frozen=True)
class TissueParams:
    """Settings of :func:`detect_tissue`; saturation and value are on OpenCV's 0-255 scale.

    Attributes:
        min_saturation: floor of the Otsu threshold; a blank slide then has no tissue.
        max_saturation: ceiling of the Otsu threshold; an all-tissue image keeps pale stroma.
        white_value: pixels at least this bright ...
        white_saturation: ... and less saturated than this are glass, whatever Otsu says.
        black_value: pixels darker than this are ink, folds or scanner borders.
        pen_hues: hue range in degrees (green to blue) that H&E (pink to purple) never has.
        pen_saturation: saturation from which a pixel of a pen hue is ink; hematoxylin-only
            tissue can be bluish but is far less saturated than a marker.
        blur_um: median-blur size, to remove scanner noise before thresholding.
        close_um: closing size, joining loose tissue into one region.
        open_um: opening size, removing specks and thin debris.
        max_hole_um2: holes (fat, small lumens) up to this area are filled; larger ones stay.
        min_object_um2: tissue pieces smaller than this are dropped as dust.
        assumed_field_um: width the thumbnail's longer side is taken to span when its
            microns per pixel are unknown (a typical scanned area), to convert the sizes above.
        work_mpp: finest resolution detection runs at; a finer thumbnail is reduced first,
            as the cost of the morphology grows with the square of its kernel sizes.

    Example:
        >>> TissueParams(min_object_um2=5_000).min_object_um2
        5000
    """

    min_saturation: int = 20
    max_saturation: int = 40
    white_value: int = 215
    white_saturation: int = 30
    black_value: int = 40
    pen_hues: tuple[float, float] = (40.0, 250.0)
    pen_saturation: int = 90
    blur_um: float = 8.0
    close_um: float = 32.0
    open_um: float = 12.0
    max_hole_um2: float = 50_000.0
    min_object_um2: float = 20_000.0
    assumed_field_um: float = 20_000.0
    work_mpp: float = 2.0


def detect_tissue(
    thumbnail: np.ndarray, *, params: TissueParams | None = None, mpp: float | None = None
) -> np.ndarray:
    """Boolean tissue mask (height, width) of an RGB ``uint8`` thumbnail.

    Args:
        thumbnail: (height, width, 3) RGB image.
        params: detection settings; defaults suit H&E.
        mpp: microns per *thumbnail* pixel; when None, sizes are taken as fractions of the
            thumbnail via :attr:`TissueParams.assumed_field_um`.

    Example:
        >>> import numpy as np
        >>> bool(detect_tissue(np.full((64, 64, 3), 245, np.uint8)).any())
        False
    """
    params = params or TissueParams()
    _check_image(thumbnail)
    height, width = thumbnail.shape[:2]
    if height == 0 or width == 0:
        return np.zeros((height, width), dtype=bool)
    um_per_px = _thumb_mpp((height, width), mpp, params)
    factor = params.work_mpp / um_per_px
    if factor <= _REDUCE_FROM:
        return _detect(np.ascontiguousarray(thumbnail), um_per_px, params)
    # Kernel costs grow with their area in pixels: detect on a reduced copy, scale the mask up.
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    small = cv2.resize(thumbnail, size, interpolation=cv2.INTER_AREA)
    mask = _detect(small, um_per_px * width / size[0], params).astype(np.uint8) * 255
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR) > 127


def _detect(thumbnail: np.ndarray, um_per_px: float, params: TissueParams) -> np.ndarray:
    """:func:`detect_tissue` at the thumbnail's own resolution."""
    blur = _odd(params.blur_um / um_per_px)
    image = cv2.medianBlur(thumbnail, blur) if blur >= 3 else thumbnail
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    sat, val = hsv[..., 1], hsv[..., 2]
    ink = pen_mask(hsv, params) | (val < params.black_value)
    white = _in_range(hsv, (0, 0, params.white_value), (255, params.white_saturation - 1, 255))
    threshold = saturation_threshold(sat, ~ink, params)
    mask = (sat > threshold) & ~white & ~ink
    mask = _morph(mask, cv2.MORPH_CLOSE, _odd(params.close_um / um_per_px))
    mask = fill_holes(mask, params.max_hole_um2 / um_per_px**2)
    # Closing and hole filling bridge thin pen strokes across tissue: cut the ink out again,
    # with a margin for the blended, less saturated edge of the stroke.
    mask &= ~_morph(ink, cv2.MORPH_DILATE, _odd(params.open_um / um_per_px))
    mask = _morph(mask, cv2.MORPH_OPEN, _odd(params.open_um / um_per_px))
    mask = remove_small_objects(mask, params.min_object_um2 / um_per_px**2)
    log.debug(
        "tissue: saturation threshold %d, %.1f%% of %dx%d thumbnail",
        threshold,
        100.0 * mask.mean(),
        mask.shape[1],
        mask.shape[0],
    )
    return mask


def pen_mask(hsv: np.ndarray, params: TissueParams) -> np.ndarray:
    """Pixels of an OpenCV HSV image (hue 0-179 for 0-358 degrees) with a marker's colour.

    Example:
        >>> import numpy as np
        >>> green, purple = (60, 200, 150), (140, 200, 150)  # hue 120 and 280 degrees
        >>> pen_mask(np.array([[green, purple]], np.uint8), TissueParams()).tolist()
        [[True, False]]
    """
    low, high = (round(h / 2.0) for h in params.pen_hues)
    return _in_range(hsv, (low, params.pen_saturation, 0), (high, 255, 255))


def saturation_threshold(sat: np.ndarray, valid: np.ndarray, params: TissueParams) -> int:
    """Otsu threshold of ``sat`` over ``valid`` pixels, clamped to the params' floor/ceiling.

    Example:
        >>> import numpy as np
        >>> sat = np.array([[2, 3, 150, 160]], np.uint8)
        >>> saturation_threshold(sat, np.ones_like(sat, bool), TissueParams())  # Otsu says 3
        20
    """
    hist = cv2.calcHist([sat], [0], valid.astype(np.uint8), [256], [0, 256]).ravel()
    otsu = otsu_threshold(hist)
    return int(np.clip(otsu, params.min_saturation, params.max_saturation))


def otsu_threshold(hist: np.ndarray) -> int:
    """Otsu's threshold of a histogram: class 0 is ``<= t``; 0 for an empty histogram.

    Example:
        >>> import numpy as np
        >>> otsu_threshold(np.bincount([10, 11, 12, 200, 201], minlength=256))
        12
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return 0
    levels = np.arange(hist.size, dtype=np.float64)
    weight0 = np.cumsum(hist)
    weight1 = total - weight0
    cum_mean = np.cumsum(hist * levels)
    mean_all = cum_mean[-1]
    valid = (weight0 > 0) & (weight1 > 0)
    if not valid.any():  # a single grey level: nothing to split
        return int(np.argmax(hist))
    between = np.zeros_like(hist)
    w0, w1, cm = weight0[valid], weight1[valid], cum_mean[valid]
    between[valid] = (mean_all * w0 / total - cm) ** 2 / (w0 * w1)
    return int(np.argmax(between))


def fill_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill background regions enclosed by ``mask`` whose area is at most ``max_area`` pixels.

    Example:
        >>> import numpy as np
        >>> ring = np.ones((5, 5), bool); ring[2, 2] = False
        >>> bool(fill_holes(ring, max_area=4)[2, 2])
        True
    """
    count, labels = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    if count <= 1:
        return mask
    # Areas by bincount: several times faster than connectedComponentsWithStats.
    areas = np.bincount(labels.ravel(), minlength=count)
    # Background touching the border is the glass around the tissue, not a hole.
    border = np.zeros(count, dtype=bool)
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        border[edge] = True
    fill = ~border & (areas <= max_area)
    fill[0] = False  # label 0 is the tissue itself
    return mask | np.take(fill, labels) if fill.any() else mask


def remove_small_objects(mask: np.ndarray, min_area: float) -> np.ndarray:
    """Drop 8-connected pieces of ``mask`` smaller than ``min_area`` pixels.

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((6, 6), bool); mask[0, 0] = True; mask[2:6, 2:6] = True
        >>> int(remove_small_objects(mask, min_area=4).sum())
        16
    """
    if min_area <= 1 or not mask.any():
        return mask
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.bincount(labels.ravel(), minlength=count) >= min_area
    keep[0] = False  # label 0 is the background
    return np.take(keep, labels)


def _check_image(thumbnail: np.ndarray) -> None:
    if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
        raise ValueError(
            f"expected an RGB uint8 image (height, width, 3), got {thumbnail.dtype} "
            f"{thumbnail.shape}"
        )


def _in_range(hsv: np.ndarray, low: tuple[int, ...], high: tuple[int, ...]) -> np.ndarray:
    """Pixels whose every channel lies in [low, high] (inclusive); cv2.inRange is fastest."""
    return cv2.inRange(hsv, low, high).astype(bool)


def _thumb_mpp(shape: tuple[int, int], mpp: float | None, params: TissueParams) -> float:
    if mpp is not None and mpp > 0:
        return float(mpp)
    return params.assumed_field_um / max(shape)


def _odd(size_px: float) -> int:
    """Nearest odd kernel size, at least 1 (a centred kernel needs an odd side)."""
    size = max(1, round(size_px))
    return size if size % 2 else size + 1


def _morph(mask: np.ndarray, op: int, size: int) -> np.ndarray:
    if size < 3:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    # OpenCV's default border is neutral for erosion and dilation alike, so tissue that
    # touches the image edge is neither eaten nor extended there.
    return cv2.morphologyEx(mask.astype(np.uint8), op, kernel).astype(bool)
