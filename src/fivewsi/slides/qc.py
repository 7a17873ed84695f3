"""Quality-control thumbnail: the tissue outline and the kept patches drawn on the slide."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from fivewsi.slides.tiling import Tiling
from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)

# Colours are BGR, the order cv2.imencode expects.
_OUTLINE_BGR = (0, 200, 0)
_PATCH_BGR = (255, 80, 0)
_TEXT_BGR = (0, 0, 0)
#: Patches smaller than this on the QC image are shown as a tinted area, not as squares.
_MIN_GRID_PX = 8
_TINT_ALPHA = 0.3
_ENCODINGS = {
    ".jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]),
    ".jpeg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 85]),
    # Low PNG compression: the file is a little larger but encoding stays in milliseconds.
    ".png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, 3]),
}


def save_qc_image(path: str | os.PathLike[str], tiling: Tiling, *, max_side: int = 1024) -> Path:
    """Write the QC thumbnail (``.jpg``/``.jpeg``/``.png`` by suffix) atomically; return its path.

    The thumbnail is scaled so its longer side is ``max_side``; the tissue outline is green
    and every kept patch a thin blue square, or, where patches would be under 8 px, the kept
    area is tinted blue and outlined.

    Example:
        >>> save_qc_image("qc/slide.jpg", tiling)  # doctest: +SKIP
        PosixPath('qc/slide.jpg')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _ENCODINGS:
        raise ValueError(f"QC image must be .jpg, .jpeg or .png, not {path.name!r}")
    image = render_qc_image(tiling, max_side=max_side)
    ext, params = _ENCODINGS[suffix]
    ok, encoded = cv2.imencode(ext, image, params)
    if not ok:
        raise OSError(f"could not encode QC image {path}")
    # atomic_path yields a name without the real suffix, so encode here and write raw bytes.
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
    log.debug("QC image %s (%dx%d)", path, image.shape[1], image.shape[0])
    return path


def render_qc_image(tiling: Tiling, *, max_side: int = 1024) -> np.ndarray:
    """The QC drawing as a BGR ``uint8`` array whose longer side is ``max_side``.

    Example:
        >>> render_qc_image(tiling, max_side=512).shape  # doctest: +SKIP
        (384, 512, 3)
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    thumb_h, thumb_w = tiling.thumbnail.shape[:2]
    scale = max_side / max(thumb_h, thumb_w)
    size = (max(1, round(thumb_w * scale)), max(1, round(thumb_h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.cvtColor(
        cv2.resize(tiling.thumbnail, size, interpolation=interp), cv2.COLOR_RGB2BGR
    )
    _draw_outline(image, tiling.mask, size)
    _draw_patches(image, tiling, scale / tiling.thumb_downsample)
    label = f"{len(tiling)} patches, {tiling.patch_size} px @ {tiling.target_mpp:g} mpp"
    cv2.putText(image, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _TEXT_BGR, 1, cv2.LINE_AA)
    return image


def _draw_outline(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> None:
    resized = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(resized, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, _OUTLINE_BGR, 1)


def _draw_patches(image: np.ndarray, tiling: Tiling, level0_to_image: float) -> None:
    if len(tiling) == 0:
        return
    side = tiling.patch_size_level0
    corners = np.array([[0, 0], [side, 0], [side, side], [0, side]], dtype=np.float64)
    squares = list(
        np.round((tiling.coords[:, None, :] + corners) * level0_to_image).astype(np.int32)
    )
    if side * level0_to_image >= _MIN_GRID_PX:
        # One polylines call for all patches rather than a Python loop of cv2.rectangle calls.
        cv2.polylines(image, squares, True, _PATCH_BGR, 1)
        return
    # Squares this small would hide the slide under their lines: tint the kept area instead
    # and outline it.
    kept = np.zeros(image.shape[:2], dtype=np.uint8)
    cv2.fillPoly(kept, squares, 255)
    tinted = image.copy()
    tinted[kept > 0] = _PATCH_BGR
    cv2.addWeighted(tinted, _TINT_ALPHA, image, 1.0 - _TINT_ALPHA, 0.0, dst=image)
    contours, _ = cv2.findContours(kept, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, _PATCH_BGR, 1)
