"""Pyramidal JPEG TIFFs written with bounded memory, which OpenSlide opens as ``generic-tiff``.

:func:`write_pyramid_tiff` takes level 0 as tile rows (top to bottom), encodes each row and
downsamples it into the next level on the fly; encoded lower levels wait in an anonymous
temporary file until level 0 is written, so only a few tile rows are ever in memory. Tile rows
may carry tiles already JPEG-encoded (:class:`TileRow`), which lets a benchmark repeat a few
encoded tiles over a huge slide cheaply.

Example:
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from fivewsi.slides import open_slide
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "grey.tif"
    >>> rows = (np.full((min(256, 600 - y), 800, 3), 200, np.uint8) for y in range(0, 600, 256))
    >>> _ = write_pyramid_tiff(path, rows, width=800, height=600, mpp=0.25)
    >>> with open_slide(path) as slide:
    ...     slide.dimensions, slide.level_count, slide.mpp
    ((800, 600), 2, 0.25)
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any, NamedTuple

import cv2
import numpy as np

from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)


class TileRow(NamedTuple):
    """A level-0 tile row with some tiles already JPEG-encoded (None: encode from pixels).

    Pre-encoded tiles must be full tile x tile JPEGs made by :func:`encode_jpeg_tile` with the
    same quality; the pixels are still needed to build the lower levels.
    """

    pixels: np.ndarray
    encoded: Sequence[bytes | None]


def pyramid_sizes(
    width: int, height: int, levels: int | None = None, min_level_side: int = 512
) -> list[tuple[int, int]]:
    """(width, height) of each level, halving (rounding down) from level 0.

    With ``levels=None``, levels are added until the smaller side of the last is below
    ``min_level_side``.

    Example:
        >>> pyramid_sizes(4096, 3072)
        [(4096, 3072), (2048, 1536), (1024, 768), (512, 384)]
    """
    sizes = [(width, height)]
    while True:
        w, h = sizes[-1]
        if levels is not None and len(sizes) >= levels:
            break
        if levels is None and min(w, h) < min_level_side:
            break
        if min(w, h) < 2:
            break
        sizes.append((w // 2, h // 2))
    return sizes


def encode_jpeg_tile(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB tile, as stored in the TIFF (YCbCr, 4:2:0 chroma subsampling)."""
    import imagecodecs

    return bytes(
        imagecodecs.jpeg_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )
    )


def _pad_tile(tile: np.ndarray, side: int) -> np.ndarray:
    """Pad an edge tile to side x side by repeating its last row/column (compresses well)."""
    h, w = tile.shape[:2]
    if h == side and w == side:
        return tile
    return np.pad(tile, ((0, side - h), (0, side - w), (0, 0)), mode="edge")


def _halve(pixels: np.ndarray) -> np.ndarray:
    """2x2 box average, dropping an odd last row/column (level sizes round down)."""
    h, w = pixels.shape[0] // 2, pixels.shape[1] // 2
    if h == 0 or w == 0:
        return pixels[:h, :w]
    return cv2.resize(pixels[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)


class _Encoder:
    """Encodes the tiles of a tile row, in a thread pool when workers > 1."""

    def __init__(self, tile: int, quality: int, pool: ThreadPoolExecutor | None) -> None:
        self.tile, self.quality, self.pool = tile, quality, pool

    def row(self, pixels: np.ndarray, done: Sequence[bytes | None] | None = None) -> list[bytes]:
        t = self.tile
        n = math.ceil(pixels.shape[1] / t)
        done = done if done is not None else [None] * n
        if len(done) != n:
            raise ValueError(f"tile row has {len(done)} encoded entries, expected {n}")

        def encode(i: int) -> bytes:
            ready = done[i]
            if ready is not None:
                return ready
            return encode_jpeg_tile(_pad_tile(pixels[:, i * t : (i + 1) * t], t), self.quality)

        if self.pool is None:
            return [encode(i) for i in range(n)]
        return list(self.pool.map(encode, range(n)))


class _Spool:
    """Encoded tiles of one reduced level, kept in an anonymous temporary file until written."""

    def __init__(self, folder: Path) -> None:
        # unnamed on disk, so nothing is left behind even if the process is killed
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - see close()
        self._sizes: list[int] = []

    def add(self, tiles: Iterable[bytes]) -> None:
        for data in tiles:
            self._file.write(data)
            self._sizes.append(len(data))

    def replay(self) -> Iterator[bytes]:
        self._file.seek(0)
        for size in self._sizes:
            yield self._file.read(size)

    def close(self) -> None:
        self._file.close()


class _Cascade:
    """Collects downsampled strips for each reduced level and encodes full tile rows."""

    def __init__(self, sizes: list[tuple[int, int]], encoder: _Encoder, spools: list[_Spool]):
        self.sizes, self.encoder, self.spools = sizes, encoder, spools
        t = encoder.tile
        self._buffers = [np.empty((t, w, 3), np.uint8) for w, _ in sizes]
        self._filled = [0] * len(sizes)

    def push(self, level: int, strip: np.ndarray) -> None:
        """Add rows (already at ``level``'s resolution) to that level's buffer."""
        if level >= len(self.sizes) or strip.shape[0] == 0:
            return
        t, buffer = self.encoder.tile, self._buffers[level]
        done = 0
        while done < strip.shape[0]:
            take = min(t - self._filled[level], strip.shape[0] - done)
            buffer[self._filled[level] : self._filled[level] + take] = strip[done : done + take]
            self._filled[level] += take
            done += take
            if self._filled[level] == t:
                self._emit(level)

    def _emit(self, level: int) -> None:
        rows = self._buffers[level][: self._filled[level]]
        self._filled[level] = 0
        self.push(level + 1, _halve(rows))
        self.spools[level - 1].add(self.encoder.row(rows))

    def finish(self) -> None:
        """Flush the partial last tile row of each level, coarsest last."""
        for level in range(1, len(self.sizes)):
            if self._filled[level]:
                self._emit(level)


def _level0_tiles(
    rows: Iterable[np.ndarray | TileRow],
    width: int,
    height: int,
    encoder: _Encoder,
    cascade: _Cascade,
) -> Iterator[bytes]:
    """Encoded level-0 tiles in TIFF order; feeds every row to the cascade before yielding.

    The downsampled row is pushed before its tiles are yielded, because tifffile stops
    iterating right after the last tile.
    """
    t, y = encoder.tile, 0
    for item in rows:
        pixels, done = (item.pixels, item.encoded) if isinstance(item, TileRow) else (item, None)
        expected = (min(t, height - y), width, 3)
        if pixels.shape != expected or pixels.dtype != np.uint8:
            raise ValueError(f"tile row at y={y} is {pixels.shape} {pixels.dtype}, not {expected}")
        cascade.push(1, _halve(pixels))
        yield from encoder.row(pixels, done)
        y += expected[0]
        if y >= height:
            return
    raise ValueError(f"row source ended at y={y}, before the slide height {height}")


def write_pyramid_tiff(
    path: str | os.PathLike[str],
    rows: Iterable[np.ndarray | TileRow],
    *,
    width: int,
    height: int,
    mpp: float | None = None,
    tile: int = 256,
    levels: int | None = None,
    min_level_side: int = 512,
    jpeg_quality: int = 85,
    description: str | None = None,
    bigtiff: bool | None = None,
    workers: int = 1,
) -> Path:
    """Write a tiled, JPEG-compressed pyramidal TIFF that OpenSlide reads as ``generic-tiff``.

    Level 0 comes from ``rows``: tile rows top to bottom, each ``min(tile, rows left)`` px high
    and ``width`` px wide (RGB uint8), or :class:`TileRow` with pre-encoded tiles. Reduced levels
    (subfiletype 1, in the main IFD chain) are 2x2 box averages built on the fly. Resolution is
    written in pixels per centimetre, which OpenSlide reports as ``openslide.mpp-x``. The file
    appears atomically; memory holds a few tile rows per level.

    Args:
        bigtiff: None chooses BigTIFF when the raw level 0 exceeds 2 GiB.
        workers: threads encoding JPEG tiles.
    """
    import tifffile

    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 for 4:2:0 JPEG, got {tile}")
    path = Path(path)
    sizes = pyramid_sizes(width, height, levels, min_level_side)
    if bigtiff is None:
        bigtiff = width * height * 3 > 2**31
    start = time.perf_counter()
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path))
        pool = stack.enter_context(ThreadPoolExecutor(workers)) if workers > 1 else None
        encoder = _Encoder(tile, jpeg_quality, pool)
        spools = [_Spool(path.parent) for _ in sizes[1:]]
        for spool in spools:
            stack.callback(spool.close)
        cascade = _Cascade(sizes, encoder, spools)
        writer = stack.enter_context(tifffile.TiffWriter(tmp, bigtiff=bigtiff))
        tiles = _level0_tiles(rows, width, height, encoder, cascade)
        _write_level(writer, tiles, sizes[0], tile, mpp, 1.0, description)
        cascade.finish()
        for (w, h), spool in zip(sizes[1:], spools, strict=True):
            _write_level(writer, spool.replay(), (w, h), tile, mpp, width / w, None)
    log.debug(
        "wrote %s: %dx%d, %d levels, %.1f MB in %.2f s",
        path.name,
        width,
        height,
        len(sizes),
        path.stat().st_size / 1e6,
        time.perf_counter() - start,
    )
    return path


def _write_level(
    writer: Any,
    tiles: Iterator[bytes],
    size: tuple[int, int],
    tile: int,
    mpp: float | None,
    downsample: float,
    description: str | None,
) -> None:
    """Append one level as a page of pre-encoded JPEG tiles."""
    w, h = size
    extra: dict[str, Any] = {}
    if mpp is not None:
        per_cm = 1e4 / (mpp * downsample)
        extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
    writer.write(
        tiles,
        shape=(h, w, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        subsampling=(2, 2),
        subfiletype=0 if downsample == 1.0 else 1,  # 1 marks a reduced-resolution image
        description=description,
        metadata=None,
        software="fivewsi",
        **extra,
    )
