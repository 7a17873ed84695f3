"""Patch scores painted over the slide thumbnail: attention and per-question heatmaps.

Every patch is a filled cell of the slide's patch grid, coloured by its (normalised) score and
blended with the thumbnail; pixels outside the patches keep the thumbnail. The mapping from
output pixels to patches is computed once per slide (:class:`HeatmapCanvas`), after which each
heatmap is a colour lookup per patch and one gather per pixel — no Python loop over patches —
so a slide's ~25 heatmaps take a few hundred milliseconds.

Images are RGB ``uint8`` arrays throughout, like :class:`fivewsi.slides.tiling.Tiling`'s
thumbnail; :func:`encode_png` and :func:`save_png` convert to OpenCV's BGR order themselves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)

#: Longer side of rendered heatmaps by default: enough to read a slide's regions, and cheap
#: to blend and encode (a 2048 px thumbnail would make each heatmap four times dearer).
DEFAULT_MAX_SIDE = 1024
#: Colour maps by name; turbo and viridis are close to perceptually ordered, unlike jet.
COLORMAPS: dict[str, int] = {
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "cividis": cv2.COLORMAP_CIVIDIS,
}
NORMALIZATIONS = ("rank", "minmax", "none")
#: Background of :func:`blank_thumbnail`, for slides whose image is not at hand.
_BLANK_RGB = (242, 242, 242)
# Low compression with the run-length strategy: heatmaps are runs of flat background and
# cells, and this encodes them about twice as fast as the default for much the same size.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    3,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
]


class HeatmapCanvas:
    """A slide thumbnail and its patch grid, ready to paint any number of patch-score maps.

    Args:
        thumbnail: RGB ``uint8`` image ``(H, W, 3)`` of the whole slide.
        coords: ``[N, 2]`` level-0 top-left (x, y) of the patches.
        patch_size_level0: patch side in level-0 pixels.
        downsample: level-0 pixels per thumbnail pixel.
        max_side: the thumbnail is shrunk so its longer side is at most this (never enlarged);
            ``None`` keeps its size.

    Patches are expected on a common grid of ``patch_size_level0`` (fivewsi, CLAM and TRIDENT
    all tile that way); a patch off that grid is snapped to the nearest cell, and where two
    patches share a cell the later one is shown.

    Example:
        >>> import numpy as np
        >>> thumb = np.full((40, 60, 3), 255, np.uint8)
        >>> canvas = HeatmapCanvas(thumb, np.array([[0, 0], [100, 0]]), 100, downsample=10.0)
        >>> canvas.render(np.array([0.1, 0.9])).shape
        (40, 60, 3)
    """

    def __init__(
        self,
        thumbnail: np.ndarray,
        coords: np.ndarray,
        patch_size_level0: int,
        downsample: float,
        *,
        max_side: int | None = DEFAULT_MAX_SIDE,
    ) -> None:
        thumbnail = np.asarray(thumbnail)
        if thumbnail.ndim != 3 or thumbnail.shape[2] != 3 or thumbnail.dtype != np.uint8:
            raise ValueError(
                f"thumbnail must be an RGB uint8 array (H, W, 3), got {thumbnail.dtype} "
                f"{thumbnail.shape}"
            )
        coords = np.asarray(coords)
        if coords.ndim != 2 or coords.shape[1] != 2:
            if coords.size != 0:
                raise ValueError(f"coords must have shape [N, 2], got {coords.shape}")
            coords = coords.reshape(0, 2)
        if patch_size_level0 <= 0:
            raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0}")
        if not downsample > 0:
            raise ValueError(f"downsample must be positive, got {downsample}")
        if max_side is not None and max_side < 1:
            raise ValueError(f"max_side must be at least 1, got {max_side}")
        self.n_patches = int(coords.shape[0])
        self.base = _fit(np.ascontiguousarray(thumbnail), max_side)
        height, width = self.base.shape[:2]
        # Level-0 pixels per output pixel, per axis (rounding makes them differ slightly).
        scale_x = downsample * thumbnail.shape[1] / width
        scale_y = downsample * thumbnail.shape[0] / height
        self._pixel_patch = _pixel_to_patch(
            coords.astype(np.float64), float(patch_size_level0), (width, height), scale_x, scale_y
        )
        self._covered = self._pixel_patch < self.n_patches

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of every rendered heatmap, ``(height, width, 3)``."""
        return self.base.shape  # type: ignore[return-value]

    @property
    def coverage(self) -> np.ndarray:
        """Boolean ``(height, width)`` mask of the pixels that lie in some patch."""
        return self._covered

    def render(
        self,
        scores: np.ndarray,
        *,
        alpha: float = 0.5,
        normalize: str = "rank",
        colormap: str = "turbo",
    ) -> np.ndarray:
        """The thumbnail with each patch's cell coloured by its score (RGB ``uint8``).

        Args:
            scores: ``[N]`` one score per patch, in ``coords`` order. NaN and infinite scores
                leave their patch unpainted.
            alpha: opacity of the colour over the thumbnail, within [0, 1].
            normalize: ``"rank"`` (percentile among the slide's patches: every heatmap uses
                the whole colour range, robust to outliers), ``"minmax"`` (linear between the
                slide's lowest and highest score) or ``"none"`` (scores already in [0, 1],
                clipped). Constant scores map to the middle of the colour range.
            colormap: a name from :data:`COLORMAPS`.

        Example:
            >>> import numpy as np
            >>> canvas = HeatmapCanvas(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 2)), 4, 1.0)
            >>> bool((canvas.render(np.zeros(0)) == 0).all())  # no patches: the thumbnail
            True
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be within [0, 1], got {alpha}")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != self.n_patches:
            raise ValueError(f"{scores.shape[0]} scores given for {self.n_patches} patches")
        values = normalize_scores(scores, normalize)
        finite = np.isfinite(values)
        if not finite.any():
            return self.base.copy()
        # One colour per patch plus a last entry for "no patch" (never shown).
        levels = np.zeros((self.n_patches + 1, 1), dtype=np.uint8)
        levels[:-1, 0] = np.round(np.nan_to_num(values, nan=0.0) * 255.0).astype(np.uint8)
        lut = _apply_colormap(levels, colormap)[:, 0, :]
        # np.take and cv2.copyTo are several times faster here than fancy indexing/np.copyto.
        painted = np.take(np.append(finite, False).view(np.uint8), self._pixel_patch)
        colour = np.take(lut, self._pixel_patch, axis=0)
        blended = cv2.addWeighted(colour, alpha, self.base, 1.0 - alpha, 0.0)
        return cv2.copyTo(blended, painted, self.base.copy())


def render_heatmap(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    patch_size_level0: int,
    scores: np.ndarray,
    downsample: float,
    *,
    alpha: float = 0.5,
    normalize: str = "rank",
    colormap: str = "turbo",
    max_side: int | None = DEFAULT_MAX_SIDE,
) -> np.ndarray:
    """One heatmap: patch ``scores`` painted over ``thumbnail`` (RGB ``uint8``).

    For several heatmaps of one slide build a :class:`HeatmapCanvas` once and call its
    ``render``; this function does both for a single map. Arguments as there.

    Example:
        >>> import numpy as np
        >>> thumb = np.full((50, 50, 3), 200, np.uint8)
        >>> coords = np.array([[0, 0], [250, 0]])
        >>> image = render_heatmap(thumb, coords, 250, np.array([0.0, 1.0]), downsample=10.0)
        >>> image.shape, image.dtype
        ((50, 50, 3), dtype('uint8'))
    """
    canvas = HeatmapCanvas(thumbnail, coords, patch_size_level0, downsample, max_side=max_side)
    return canvas.render(scores, alpha=alpha, normalize=normalize, colormap=colormap)


def normalize_scores(scores: np.ndarray, method: str = "rank") -> np.ndarray:
    """Scores mapped to [0, 1] (non-finite ones become NaN); see :meth:`HeatmapCanvas.render`.

    Ties share their average rank, so constant scores all map to 0.5.

    Example:
        >>> import numpy as np
        >>> normalize_scores(np.array([3.0, 1.0, np.nan, 2.0])).tolist()
        [1.0, 0.0, nan, 0.5]
        >>> normalize_scores(np.array([5.0, 5.0]), "minmax").tolist()
        [0.5, 0.5]
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full(scores.shape, np.nan)
    finite = np.isfinite(scores)
    values = scores[finite]
    if values.size == 0:
        return out
    if method == "none":
        out[finite] = np.clip(values, 0.0, 1.0)
    elif method == "minmax":
        low, high = values.min(), values.max()
        out[finite] = 0.5 if high - low <= 0 else (values - low) / (high - low)
    elif values.size == 1:
        out[finite] = 0.5
    else:
        ordered = np.sort(values)
        first = np.searchsorted(ordered, values, side="left")
        last = np.searchsorted(ordered, values, side="right") - 1
        out[finite] = (first + last) / (2.0 * (values.size - 1))
    return out


def blank_thumbnail(
    coords: np.ndarray, patch_size_level0: int, *, max_side: int = DEFAULT_MAX_SIDE
) -> tuple[np.ndarray, float]:
    """A plain light canvas covering the patches, and its downsample, when no slide is at hand.

    Heatmaps can then still be drawn from a bag's coordinates alone.

    Example:
        >>> import numpy as np
        >>> image, downsample = blank_thumbnail(np.array([[0, 0], [512, 1024]]), 512, max_side=64)
        >>> image.shape, downsample
        ((64, 43, 3), 24.0)
    """
    coords = np.asarray(coords).reshape(-1, 2)
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    extent = (
        coords.max(axis=0) + patch_size_level0
        if len(coords)
        else np.array([patch_size_level0, patch_size_level0])
    )
    downsample = float(max(extent) / max_side)
    width = max(1, round(float(extent[0]) / downsample))
    height = max(1, round(float(extent[1]) / downsample))
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = _BLANK_RGB
    return image, downsample


def colorbar(
    width: int = 256, height: int = 12, *, colormap: str = "turbo", vertical: bool = False
) -> np.ndarray:
    """A colour-bar legend (RGB ``uint8``): low scores at the left (or bottom), high at the right.

    Example:
        >>> colorbar(100, 10).shape
        (10, 100, 3)
    """
    if width < 1 or height < 1:
        raise ValueError(f"colour bar size must be positive, got {width}x{height}")
    length = height if vertical else width
    ramp = np.round(np.linspace(0, 255, length)).astype(np.uint8).reshape(-1, 1)
    colours = _apply_colormap(ramp, colormap)  # [length, 1, 3]
    if vertical:
        return np.ascontiguousarray(np.repeat(colours[::-1], width, axis=1))
    return np.ascontiguousarray(np.repeat(colours.transpose(1, 0, 2), height, axis=0))


def attention_label(scores: np.ndarray, *, ascii_only: bool = False) -> str | None:
    """The caption of an attention map in absolute terms (see
    :meth:`fivewsi.predict.attention.AttentionRange.label`); None when ``scores`` are not
    attention weights (negative, non-finite or all zero).

    Example:
        >>> attention_label(np.array([0.25, 0.25, 0.26, 0.24]))
        'near-uniform (max/min 1.08×, entropy 1.00 of max)'
    """
    from fivewsi.predict.attention import attention_range

    try:
        return attention_range(scores).label(ascii_only=ascii_only)
    except ValueError:
        return None


def with_legend(
    image: np.ndarray, scores: np.ndarray, *, normalize: str = "rank", colormap: str = "turbo"
) -> np.ndarray:
    """``image`` with a legend band below it: the colour bar, what its ends mean, and the
    map's range in absolute terms (:func:`attention_label`), so a near-uniform map painted
    in the full colour range says so.

    Example:
        >>> img = np.zeros((60, 200, 3), np.uint8)
        >>> with_legend(img, np.full(10, 0.1)).shape[0] > 60
        True
    """
    width = image.shape[1]
    band_h = 44
    band = np.full((band_h, width, 3), 255, dtype=np.uint8)
    bar_w = max(1, width - 16)
    band[4:14, 8 : 8 + bar_w] = colorbar(bar_w, 10, colormap=colormap)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if normalize == "rank":
        ends = ("lowest", "colour = rank among patches", "highest")
    elif finite.size:
        ends = (f"{finite.min():.3g}", "colour = score", f"{finite.max():.3g}")
    else:
        ends = ("", "", "")
    label = attention_label(values, ascii_only=True) or ""
    font, scale, ink = cv2.FONT_HERSHEY_SIMPLEX, 0.33, (20, 20, 20)
    cv2.putText(band, ends[0], (8, 25), font, scale, ink, 1, cv2.LINE_AA)
    mid = cv2.getTextSize(ends[1], font, scale, 1)[0][0]
    cv2.putText(band, ends[1], (max(8, (width - mid) // 2), 25), font, scale, ink, 1,
                cv2.LINE_AA)
    right = cv2.getTextSize(ends[2], font, scale, 1)[0][0]
    cv2.putText(band, ends[2], (max(8, width - 8 - right), 25), font, scale, ink, 1,
                cv2.LINE_AA)
    colour = (200, 30, 30) if label.startswith("near-uniform") else ink
    cv2.putText(band, label, (8, 39), font, scale, colour, 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([image, band], axis=0))


def colormap_stops(colormap: str = "turbo", n: int = 9) -> list[str]:
    """``n`` evenly spaced colours of ``colormap`` as ``#rrggbb``, low to high (for CSS).

    Example:
        >>> colormap_stops("viridis", 2)
        ['#440154', '#fde725']
    """
    if n < 2:
        raise ValueError(f"need at least 2 stops, got {n}")
    ramp = np.round(np.linspace(0, 255, n)).astype(np.uint8).reshape(-1, 1)
    colours = _apply_colormap(ramp, colormap)[:, 0, :]
    return ["#{:02x}{:02x}{:02x}".format(*map(int, rgb)) for rgb in colours]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or grey) ``uint8`` image.

    Example:
        >>> import numpy as np
        >>> encode_png(np.zeros((2, 2, 3), np.uint8))[:4]
        b'\\x89PNG'
    """
    image = np.asarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise ValueError(f"could not encode a {image.shape} {image.dtype} image as PNG")
    return encoded.tobytes()


def save_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write an RGB ``uint8`` image as PNG atomically; return the path.

    Example:
        >>> save_png("heatmaps/slide-1/attention.png", image)  # doctest: +SKIP
        PosixPath('heatmaps/slide-1/attention.png')
    """
    path = Path(path)
    data = encode_png(image)
    # atomic_path's temporary name has no .png suffix, so encode first and write raw bytes.
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def _fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image.copy()
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _pixel_to_patch(
    coords: np.ndarray,
    size: float,
    shape: tuple[int, int],
    scale_x: float,
    scale_y: float,
) -> np.ndarray:
    """``(height, width)`` int32 index of the patch under each pixel's centre, N where none.

    The pixel → cell map is separable (a cell column per pixel column, a cell row per pixel
    row), so only the cells actually sampled are laid out as a dense table: its size is bounded
    by the image, whatever the slide's extent or the patch size.
    """
    width, height = shape
    n = coords.shape[0]
    if n == 0:
        return np.zeros((height, width), dtype=np.int32)
    # Snap the grid to the patches: its origin is where the first patch column/row starts.
    origin = np.mod(coords.min(axis=0), size)
    cells = np.rint((coords - origin) / size).astype(np.int64)  # [N, 2] (col, row)
    pixel_cols = np.floor(((np.arange(width) + 0.5) * scale_x - origin[0]) / size).astype(
        np.int64
    )
    pixel_rows = np.floor(((np.arange(height) + 0.5) * scale_y - origin[1]) / size).astype(
        np.int64
    )
    used_cols, col_of_pixel = np.unique(pixel_cols, return_inverse=True)
    used_rows, row_of_pixel = np.unique(pixel_rows, return_inverse=True)
    col_pos, col_ok = _positions(used_cols, cells[:, 0])
    row_pos, row_ok = _positions(used_rows, cells[:, 1])
    table = np.full((used_rows.size, used_cols.size), n, dtype=np.int32)
    keep = col_ok & row_ok
    # Fancy assignment keeps the last of repeated indices: a later patch wins a shared cell.
    table[row_pos[keep], col_pos[keep]] = np.flatnonzero(keep).astype(np.int32)
    return table[row_of_pixel.reshape(-1)][:, col_of_pixel.reshape(-1)]


def _positions(sorted_values: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each query in ``sorted_values`` and whether it is there at all."""
    pos = np.searchsorted(sorted_values, queries)
    pos = np.minimum(pos, sorted_values.size - 1)
    return pos, sorted_values[pos] == queries


def _apply_colormap(levels: np.ndarray, colormap: str) -> np.ndarray:
    if colormap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {sorted(COLORMAPS)}, got {colormap!r}")
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
