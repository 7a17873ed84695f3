"""Deep-zoom tiles: the slide's own (OpenSlide's ``DeepZoomGenerator``) and the layers drawn
from patch scores over the same image size, so OpenSeadragon stacks them exactly.

Slide tiles are JPEG, from ``DeepZoomGenerator(tile_size=254, overlap=1)``; layer tiles are
RGBA PNG of :data:`LAYER_TILE` px without overlap, transparent where no patch lies. Both follow
the Deep Zoom level scheme (level ``L`` is the image shrunk by ``2**(max_level - L)``), so in
OpenSeadragon's coordinates (image width = 1) a pixel of either is the same place on the slide.
Open slides and encoded tiles are kept in thread-safe LRU caches.

Example:
    >>> g = LayerGeometry(1000, 600)
    >>> g.max_level, g.level_size(g.max_level), g.level_size(0)
    (10, (1000, 600), (1, 1))
    >>> g.tiles(9)
    (2, 2)
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fivewsi.predict.heatmaps import COLORMAPS, normalize_scores

#: Side of a layer tile in pixels.
LAYER_TILE = 256
#: Slide tiles: DeepZoomGenerator's defaults (254 + 2 × 1 overlap = 256 px JPEGs).
SLIDE_TILE, SLIDE_OVERLAP = 254, 1
JPEG_QUALITY = 80
#: Layer colour map (predict's heatmaps use the same) and the opacity drawn into the tile.
COLORMAP = "turbo"
#: Colours of the outline and grid layers (RGBA) and the plain canvas of image-less slides.
OUTLINE_RGBA = (0, 200, 80, 255)
GRID_RGBA = (40, 40, 40, 160)
CANVAS_RGBA = (225, 225, 225, 255)
BACKGROUND_RGBA = (250, 250, 250, 255)


class LRUCache:
    """A thread-safe least-recently-used cache of at most ``size`` entries.

    Example:
        >>> c = LRUCache(2)
        >>> c.get("a", lambda: 1), c.get("b", lambda: 2), c.get("a", lambda: 9)
        (1, 2, 1)
        >>> _ = c.get("c", lambda: 3); "b" in c, "a" in c
        (False, True)
        >>> import concurrent.futures, time
        >>> made = []
        >>> once = LRUCache(2, once=True)
        >>> def slow():
        ...     made.append(1); time.sleep(0.05); return "mask"
        >>> with concurrent.futures.ThreadPoolExecutor(4) as pool:
        ...     got = list(pool.map(lambda _: once.get("k", slow), range(4)))
        >>> got, len(made)
        (['mask', 'mask', 'mask', 'mask'], 1)
    """

    def __init__(self, size: int, on_evict: Callable[[Any], None] | None = None, *,
                 once: bool = False) -> None:
        """``once``: callers asking for a missing key together wait for one ``make`` (for
        costly entries: an open slide, a tissue mask); else each makes its own."""
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._on_evict = on_evict
        self._once = once
        self._making: dict[Any, threading.Lock] = {}

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock()) if self._once else None
        if making is None:
            return self._put(key, make())  # two threads may make one tile, both correct
        try:
            with making:
                with self._lock:
                    if key in self._items:
                        self._items.move_to_end(key)
                        return self._items[key]
                return self._put(key, make())
        finally:
            with self._lock:
                self._making.pop(key, None)

    def _put(self, key: Any, value: Any) -> Any:
        evicted = []
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                evicted.append(self._items.popitem(last=False)[1])
        if self._on_evict is not None:
            for old in evicted:
                self._on_evict(old)
        return value

    def clear(self) -> None:
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        if self._on_evict is not None:
            for old in items:
                self._on_evict(old)


@dataclass(frozen=True)
class LayerGeometry:
    """Deep Zoom levels of an image ``width`` × ``height`` (level-0 pixels), tiles of
    ``tile`` px without overlap."""

    width: int
    height: int
    tile: int = LAYER_TILE

    @property
    def max_level(self) -> int:
        return max(0, math.ceil(math.log2(max(self.width, self.height, 1))))

    def scale(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level``."""
        return float(2 ** (self.max_level - level))

    def level_size(self, level: int) -> tuple[int, int]:
        s = self.scale(level)
        return max(1, math.ceil(self.width / s)), max(1, math.ceil(self.height / s))

    def tiles(self, level: int) -> tuple[int, int]:
        w, h = self.level_size(level)
        return math.ceil(w / self.tile), math.ceil(h / self.tile)

    def dzi(self, fmt: str = "png", overlap: int = 0) -> str:
        """The ``.dzi`` XML describing these tiles."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" '
                f'Format="{fmt}" Overlap="{overlap}" TileSize="{self.tile}">'
                f'<Size Width="{self.width}" Height="{self.height}"/></Image>')

    def check(self, level: int, col: int, row: int) -> tuple[int, int, int, int]:
        """The tile's pixel box ``(x0, y0, x1, y1)`` in its level; KeyError when outside."""
        if not 0 <= level <= self.max_level:
            raise KeyError(level)
        cols, rows = self.tiles(level)
        if not (0 <= col < cols and 0 <= row < rows):
            raise KeyError((col, row))
        w, h = self.level_size(level)
        x0, y0 = col * self.tile, row * self.tile
        return x0, y0, min(w, x0 + self.tile), min(h, y0 + self.tile)


class PatchGrid:
    """Patches on their common grid: which patch (if any) covers each pixel of a layer tile.

    Example:
        >>> grid = PatchGrid(np.array([[0, 0], [256, 0]]), 256)
        >>> geometry = LayerGeometry(768, 256)  # level 9: half size, two 256 px tiles wide
        >>> grid.tile_index(geometry, 9, 0, 0)[0, ::64].tolist()
        [0, 0, 1, 1]
        >>> grid.tile_index(geometry, 9, 1, 0)[0, ::64].tolist()
        [-1, -1]
    """

    def __init__(self, coords: np.ndarray, size: int) -> None:
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.size = int(size)
        self.n = len(coords)
        if self.n == 0:
            self.origin = np.zeros(2, np.int64)
            self.table = np.full((1, 1), -1, np.int32)
            return
        self.origin = coords.min(axis=0)
        cells = np.rint((coords - self.origin) / self.size).astype(np.int64)
        cols, rows = cells.max(axis=0) + 1
        self.table = np.full((rows, cols), -1, np.int32)
        self.table[cells[:, 1], cells[:, 0]] = np.arange(self.n, dtype=np.int32)

    def tile_index(self, geometry: LayerGeometry, level: int, col: int, row: int) -> np.ndarray:
        """``(h, w)`` patch index under each pixel centre of a layer tile (-1 where none)."""
        x0, y0, x1, y1 = geometry.check(level, col, row)
        scale = geometry.scale(level)
        xs = (np.arange(x0, x1) + 0.5) * scale
        ys = (np.arange(y0, y1) + 0.5) * scale
        cells_x = np.floor((xs - self.origin[0]) / self.size).astype(np.int64)
        cells_y = np.floor((ys - self.origin[1]) / self.size).astype(np.int64)
        rows, cols = self.table.shape
        ok_x = (cells_x >= 0) & (cells_x < cols)
        ok_y = (cells_y >= 0) & (cells_y < rows)
        index = self.table[np.clip(cells_y, 0, rows - 1)][:, np.clip(cells_x, 0, cols - 1)]
        return np.where(ok_y[:, None] & ok_x[None, :], index, -1)


def score_colours(scores: np.ndarray, colormap: str = COLORMAP) -> np.ndarray:
    """``[N + 1, 4]`` RGBA per patch by rank among the slide's patches (as predict's heatmaps),
    the last row transparent (no patch); NaN scores transparent too.

    Example:
        >>> score_colours(np.array([0.1, np.nan]))[:, 3].tolist()
        [255, 0, 0]
    """
    values = normalize_scores(np.asarray(scores, dtype=np.float64), "rank")
    finite = np.isfinite(values)
    levels = np.round(np.nan_to_num(values, nan=0.0) * 255).astype(np.uint8).reshape(-1, 1)
    rgb = cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)
    lut = np.zeros((len(values) + 1, 4), np.uint8)
    lut[:-1, :3] = rgb[:, 0, :]
    lut[:-1, 3] = np.where(finite, 255, 0)
    return lut


def render_layer_tile(index: np.ndarray, kind: str, lut: np.ndarray | None = None) -> np.ndarray:
    """RGBA tile of one layer from the patch index of its pixels (:meth:`PatchGrid.tile_index`).

    ``kind``: ``"scores"`` (colours from ``lut``), ``"outline"`` (edge of the patched area),
    ``"grid"`` (patch borders), ``"canvas"`` (patches grey on a light background: the base of
    a slide whose image is not at hand).
    """
    h, w = index.shape
    covered = index >= 0
    if kind == "scores":
        assert lut is not None
        return np.take(lut, np.where(covered, index, len(lut) - 1), axis=0)
    tile = np.zeros((h, w, 4), np.uint8)
    if kind == "canvas":
        tile[:] = BACKGROUND_RGBA
        tile[covered] = CANVAS_RGBA
        return tile
    padded = np.pad(index, 1, mode="edge")
    if kind == "outline":
        return outline_tile(covered)
    if kind == "grid":
        centre = padded[1:-1, 1:-1]
        edge = covered & ((padded[:-2, 1:-1] != centre) | (padded[1:-1, :-2] != centre))
        tile[edge] = GRID_RGBA
        return tile
    raise ValueError(f"unknown layer kind {kind!r}")


def outline_tile(mask: np.ndarray) -> np.ndarray:
    """RGBA tile drawing the edge of ``mask`` (a boolean area sampled at the tile's pixels),
    2 px wide just inside it, transparent elsewhere.

    Example:
        >>> m = np.zeros((8, 8), bool); m[2:6, 2:6] = True
        >>> int((outline_tile(m)[:, :, 3] > 0).sum()) > 0, bool(outline_tile(m)[0, 0, 3])
        (True, False)
    """
    padded = np.pad(mask, 1, mode="edge")
    edge = mask & ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    edge = (cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0) & mask
    tile = np.zeros((*mask.shape, 4), np.uint8)
    tile[edge] = OUTLINE_RGBA
    return tile


def mask_tile(mask: np.ndarray, downsample: float, geometry: LayerGeometry, level: int,
              col: int, row: int) -> np.ndarray:
    """``mask`` (drawn at ``downsample`` level-0 pixels per pixel) sampled at the pixel centres
    of a layer tile.

    Example:
        >>> m = np.zeros((4, 4), bool); m[:, 2:] = True
        >>> mask_tile(m, 4.0, LayerGeometry(16, 16), 3, 0, 0)[0].tolist()  # 2 px per mask px
        [False, False, False, False, True, True, True, True]
    """
    x0, y0, x1, y1 = geometry.check(level, col, row)
    scale = geometry.scale(level) / downsample
    h, w = mask.shape
    xs = np.clip(((np.arange(x0, x1) + 0.5) * scale).astype(np.int64), 0, w - 1)
    ys = np.clip(((np.arange(y0, y1) + 0.5) * scale).astype(np.int64), 0, h - 1)
    return mask[ys][:, xs]


def encode_png_rgba(tile: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(tile, cv2.COLOR_RGBA2BGRA),
                            [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("tile not encodable")
    return data.tobytes()


class SlideTiles:
    """Deep-zoom JPEG tiles of the slides named by DIR, with LRU caches of open slides and of
    encoded tiles (thread-safe: OpenSlide reads from several threads at once)."""

    def __init__(self, slides: int = 8, tiles: int = 2048) -> None:
        self._slides = LRUCache(slides, on_evict=lambda item: item[0].close(), once=True)
        self.tiles = LRUCache(tiles)

    def _open(self, path: Path) -> tuple[Any, Any, threading.Lock | None]:
        def make() -> tuple[Any, Any, threading.Lock | None]:
            import openslide
            from openslide.deepzoom import DeepZoomGenerator

            slide = openslide.open_slide(str(path))
            generator = DeepZoomGenerator(slide, tile_size=SLIDE_TILE, overlap=SLIDE_OVERLAP,
                                          limit_bounds=False)
            # OpenSlide reads from many threads at once; Pillow's fallback (ImageSlide) is
            # one file object, so its reads take turns.
            lock = threading.Lock() if isinstance(slide, openslide.ImageSlide) else None
            return slide, generator, lock

        return self._slides.get(str(path), make)

    def info(self, path: Path) -> dict[str, Any]:
        """Size, level count and the DZI XML of the slide at ``path``."""
        slide, generator, _ = self._open(path)
        return {"width": slide.dimensions[0], "height": slide.dimensions[1],
                "dzi": generator.get_dzi("jpeg"), "levels": generator.level_count}

    def tile(self, path: Path, level: int, col: int, row: int) -> bytes:
        """JPEG bytes of one tile; KeyError when it does not exist."""

        def make() -> bytes:
            _, generator, lock = self._open(path)
            if not 0 <= level < generator.level_count:
                raise KeyError(level)
            cols, rows = generator.level_tiles[level]
            if not (0 <= col < cols and 0 <= row < rows):
                raise KeyError((col, row))
            if lock is None:
                image = generator.get_tile(level, (col, row))
            else:
                with lock:
                    image = generator.get_tile(level, (col, row))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
            return buffer.getvalue()

        return self.tiles.get((str(path), level, col, row), make)

    def close(self) -> None:
        self._slides.clear()
        self.tiles.clear()
