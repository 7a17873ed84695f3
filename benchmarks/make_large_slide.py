"""Build a large pyramidal TIFF (default 60000 x 60000 px at 0.5 mpp) from real H&E tiles.

Benchmarks need a slide of realistic size and layout without downloading one. This script cuts
256 px tiles from the small real slides in ``../shared/data/slides`` and lays them out in a few
large, irregular tissue regions (about 27% of the area, ~15k tissue tiles) on near-white glass:

- each region copies one source slide contiguously: the source's tissue core (edge rows and
  columns that are mostly glass trimmed off), mirrored at its borders so that wrapping around
  has no seams, then rotated / flipped and offset per region; glass tiles inside the core are
  replaced by their nearest tissue tile, so neighbouring tiles stay alike;
- tiles on a region border are blended with glass along a smooth curve;
- every distinct tile (source tile x one of 8 orientations, glass variants) is JPEG-encoded
  once and reused; only border tiles and the reduced levels are encoded per position.

The TIFF is written by :func:`fivewsi.synthetic.tiff.write_pyramid_tiff`: JPEG tiles, BigTIFF,
levels halved down to < 1000 px, resolution in pixels/cm so OpenSlide reports the mpp. Memory
holds a level-0 tile row (~46 MB), the reduced levels' row buffers and the tile pools (~60 MB
of pixels, ~12 MB encoded); peak RSS was 0.7 GB, ~0.25 GB of it imports (torch).
Measured on 2 cores: ~25 s, 0.48 GB, 14042 tissue + 1619 border tiles of 55225.

The TCGA source has no mpp in its metadata; its tiles are used as if scanned at ``--mpp``.

Usage:
    python benchmarks/make_large_slide.py --out benchmarks/data/large.tif [--size 60000]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fivewsi.slides.readers import open_slide
from fivewsi.synthetic.tiff import TileRow, encode_jpeg_tile, pyramid_sizes, write_pyramid_tiff

log = logging.getLogger("make_large_slide")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ("cmu-1-small-region.svs", "tcga-cr-7395-01a-01-ts1.svs")
GLASS = (241.0, 240.0, 243.0)
N_GLASS_VARIANTS = 8
LAYOUT_SCALE = 32  # level-0 px per layout-map pixel


@dataclass
class Source:
    """The 256 px tiles of one real slide, on its tile grid."""

    name: str
    tiles: np.ndarray  # (n, tile, tile, 3) uint8, row-major over the grid
    grid: tuple[int, int]  # (rows, cols)
    tissue: np.ndarray  # (n,) fraction of tissue pixels per tile

    def usable(self, minimum: float) -> np.ndarray:
        return np.flatnonzero(self.tissue >= minimum)


def tissue_fraction(tile: np.ndarray) -> float:
    """Share of pixels that look stained: saturated and not bright glass."""
    hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV)
    return float(np.mean((hsv[..., 1] > 25) & (hsv[..., 2] < 235)))


def load_source(path: Path, tile: int) -> Source:
    """Cut the whole-tile part of a slide's level 0 into tiles."""
    with open_slide(path) as slide:
        w, h = slide.dimensions
        rows, cols = h // tile, w // tile
        image = slide.read_region(0, 0, 0, cols * tile, rows * tile)
    tiles = image.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)
    tissue = np.array([tissue_fraction(t) for t in tiles])
    log.info(
        "%s: %d x %d tiles, %d with >= 50%% tissue",
        path.name,
        cols,
        rows,
        int((tissue >= 0.5).sum()),
    )
    return Source(path.name, np.ascontiguousarray(tiles), (rows, cols), tissue)


def core_box(usable: np.ndarray, min_share: float = 0.6) -> tuple[slice, slice]:
    """Trim edge rows / columns of a tile grid while they are mostly glass."""
    r0, c0, (r1, c1) = 0, 0, usable.shape
    while r1 - r0 > 2 and c1 - c0 > 2:
        box = usable[r0:r1, c0:c1]
        shares = [box[0].mean(), box[-1].mean(), box[:, 0].mean(), box[:, -1].mean()]
        worst = int(np.argmin(shares))
        if shares[worst] >= min_share:
            break
        r0, r1, c0, c1 = (
            r0 + (worst == 0),
            r1 - (worst == 1),
            c0 + (worst == 2),
            c1 - (worst == 3),
        )
    return slice(r0, r1), slice(c0, c1)


def source_grid(source: Source, minimum: float = 0.5) -> np.ndarray:
    """Tile index grid of a source's tissue core, mostly-glass tiles replaced by nearest tissue.

    Filling glass with the nearest tissue tile (rather than random ones) keeps neighbouring
    tiles alike instead of making a checkerboard.
    """
    usable = (source.tissue >= minimum).reshape(source.grid)
    rows, cols = core_box(usable)
    index = np.arange(len(source.tiles)).reshape(source.grid)[rows, cols]
    glass = (~usable[rows, cols]).astype(np.uint8)
    if not glass.any():
        return index
    _, labels = cv2.distanceTransformWithLabels(
        glass, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    # labels number the zero (tissue) cells; map each label back to its tile index
    tissue_cells = np.flatnonzero(glass.ravel() == 0)
    lookup = np.zeros(int(labels.max()) + 1, np.int64)
    lookup[labels.ravel()[tissue_cells]] = index.ravel()[tissue_cells]
    return lookup[labels]


def mirrored(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The grid extended by its mirror images (2x each way) and each cell's flip code.

    Wrapping this periodic extension has no seams: at a mirror edge the tiles are flipped too.
    Flip code bit 1 mirrors a tile left-right, bit 2 top-bottom.
    """
    index = np.block([[grid, grid[:, ::-1]], [grid[::-1], grid[::-1, ::-1]]])
    rows, cols = grid.shape
    flips = np.zeros(index.shape, np.uint8)
    flips[:, cols:] |= 1
    flips[rows:, :] |= 2
    return index, flips


def orient(pixels: np.ndarray, d: int) -> np.ndarray:
    """One of the 8 rotations / mirror images of a square array (d in 0..7)."""
    if d >= 4:
        pixels = pixels[:, ::-1]
    return np.rot90(pixels, d % 4)


def flip(pixels: np.ndarray, code: int) -> np.ndarray:
    if code & 1:
        pixels = pixels[:, ::-1]
    if code & 2:
        pixels = pixels[::-1]
    return pixels


_PROBE = np.arange(4).reshape(2, 2)


def transform_key(code: int, d: int) -> int:
    """Canonical id of flip-then-orient: the 32 combinations are only 8 distinct transforms."""
    return int(np.dot(orient(flip(_PROBE, code), d).ravel(), (64, 16, 4, 1)))


def glass_tiles(rng: np.random.Generator, tile: int) -> list[np.ndarray]:
    """Near-white glass with faint noise and a gentle illumination gradient."""
    out = []
    for _ in range(N_GLASS_VARIANTS):
        noise = cv2.GaussianBlur(rng.standard_normal((tile, tile)).astype(np.float32), (0, 0), 1.2)
        shade = rng.uniform(-1.5, 1.5) * np.linspace(-1, 1, tile, dtype=np.float32)[None, :]
        level = (noise * 1.6 + shade)[..., None] + np.array(GLASS, np.float32)
        out.append(np.clip(np.rint(level), 0, 255).astype(np.uint8))
    return out


def layout_field(size: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Low-resolution tissue field, positive on tissue, shifted so ``fraction`` of it is."""
    n = math.ceil(size / LAYOUT_SCALE) + 1
    yy, xx = np.indices((n, n), dtype=np.float32)
    field = np.full((n, n), -1.0, np.float32)
    n_regions = 5
    radius = n * math.sqrt(fraction / (n_regions * math.pi)) * 1.15
    for _ in range(n_regions):
        cx, cy = rng.uniform(0.15, 0.85, 2) * n
        r, aspect, angle = (
            radius * rng.uniform(0.7, 1.3),
            rng.uniform(0.5, 1.0),
            rng.uniform(0, 3.2),
        )
        u = ((xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)) / r
        v = (-(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)) / (r * aspect)
        np.maximum(field, 1.0 - np.sqrt(u * u + v * v), out=field)
    for sigma, weight in ((radius / 3, 0.35), (radius / 12, 0.12)):
        noise = cv2.GaussianBlur(rng.standard_normal((n, n)).astype(np.float32), (0, 0), sigma)
        field += weight * noise / max(float(noise.std()), 1e-6)
    return field - float(np.quantile(field, 1.0 - fraction))


class Layout:
    """Which content goes into each level-0 tile: glass, a pooled tissue tile or a blend."""

    def __init__(self, size: int, tile: int, fraction: float, sources: list[Source], seed: int):
        rng = np.random.default_rng(seed)
        self.size, self.tile, self.sources = size, tile, sources
        self.field = layout_field(size, fraction, rng)
        self.n = math.ceil(size / tile)
        self.kind, self.label = self._classify()
        n_labels = int(self.label.max()) + 1
        # per region: source, orientation and offset into the source's (oriented) tile grid
        usable = np.array([len(s.usable(0.5)) for s in sources], float)  # favour tissue-rich
        self.region_source = rng.choice(len(sources), n_labels, p=usable / usable.sum())
        self.region_orient = rng.integers(0, 8, n_labels)
        self.region_offset = rng.integers(0, 1000, (n_labels, 2))
        self.glass_pick = rng.integers(0, N_GLASS_VARIANTS, (self.n, self.n))
        self.grids = [mirrored(source_grid(s)) for s in sources]

    def _classify(self) -> tuple[np.ndarray, np.ndarray]:
        """Per tile: 0 glass, 1 tissue, 2 border; plus its region label."""
        per = self.tile // LAYOUT_SCALE
        span = self.n * per + 1
        field = np.pad(self.field, ((0, max(0, span - self.field.shape[0])),) * 2, mode="edge")
        mask = (field > 0).astype(np.uint8)
        _, labels = cv2.connectedComponents(mask)
        blocks = field[:span, :span]
        # each tile's block plus one sample of overlap, so interpolation at its edge is covered
        lo = np.full((self.n, self.n), np.inf, np.float32)
        hi = np.full((self.n, self.n), -np.inf, np.float32)
        lab = np.zeros((self.n, self.n), np.int32)
        for dy in range(per + 1):
            for dx in range(per + 1):
                sample = blocks[dy : dy + self.n * per : per, dx : dx + self.n * per : per]
                np.minimum(lo, sample, out=lo)
                np.maximum(hi, sample, out=hi)
                np.maximum(
                    lab, labels[dy : dy + self.n * per : per, dx : dx + self.n * per : per], out=lab
                )
        kind = np.where(lo > 0, 1, np.where(hi <= 0, 0, 2)).astype(np.uint8)
        return kind, lab

    def tissue_source(self, tx: int, ty: int) -> tuple[tuple[int, ...], np.ndarray]:
        """Cache key and pixels of the tissue tile at (tx, ty)."""
        region = int(self.label[ty, tx])
        s, d = int(self.region_source[region]), int(self.region_orient[region])
        index, flips = (orient(a, d) for a in self.grids[s])
        oy, ox = self.region_offset[region]
        cell = ((ty + oy) % index.shape[0], (tx + ox) % index.shape[1])
        i, code = int(index[cell]), int(flips[cell])
        pixels = orient(flip(self.sources[s].tiles[i], code), d)
        return (s, i, transform_key(code, d)), pixels

    def border_alpha(self, tx: int, ty: int) -> np.ndarray:
        """Tissue opacity (0..1) of a border tile, from the upsampled field."""
        s, t = LAYOUT_SCALE, self.tile
        x0, y0 = tx * t, ty * t
        matrix = np.array([[1 / s, 0, (x0 + 0.5) / s - 0.5], [0, 1 / s, (y0 + 0.5) / s - 0.5]])
        field = cv2.warpAffine(
            self.field,
            matrix,
            (t, t),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.clip(field * 40.0 + 0.5, 0.0, 1.0)[..., None]


class TileCache:
    """Encoded bytes of each distinct full tile, made on first use."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._bytes: dict[tuple[int, ...], bytes] = {}

    def get(self, key: tuple[int, ...], pixels: np.ndarray) -> bytes:
        data = self._bytes.get(key)
        if data is None:
            data = self._bytes[key] = encode_jpeg_tile(np.ascontiguousarray(pixels), self.quality)
        return data

    @property
    def stats(self) -> tuple[int, int]:
        return len(self._bytes), sum(len(b) for b in self._bytes.values())


def tile_rows(layout: Layout, glass: list[np.ndarray], cache: TileCache) -> Iterator[TileRow]:
    """Level-0 tile rows with pre-encoded bytes for every tile that is not a border blend."""
    t, size = layout.tile, layout.size
    strip = np.empty((t, size, 3), np.uint8)
    for ty in range(layout.n):
        h = min(t, size - ty * t)
        encoded: list[bytes | None] = []
        for tx in range(layout.n):
            w = min(t, size - tx * t)
            kind = layout.kind[ty, tx]
            g = int(layout.glass_pick[ty, tx])
            if kind == 0:
                pixels, key = glass[g], (-1, g)
            else:
                key, pixels = layout.tissue_source(tx, ty)
            if kind == 2:
                alpha = layout.border_alpha(tx, ty)
                pixels = (pixels * alpha + glass[g] * (1.0 - alpha)).astype(np.uint8)
                encoded.append(None)
            else:
                encoded.append(cache.get(key, pixels))
            strip[:h, tx * t : tx * t + w] = pixels[:h, :w]
        yield TileRow(strip[:h], encoded)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"verification failed: {message}")


def verify(path: Path, mpp: float, n_levels: int, layout: Layout) -> None:
    """Open with OpenSlide (through fivewsi) and read a tissue region from every level."""
    with open_slide(path) as slide:
        _check(slide.backend == "openslide", f"not opened by OpenSlide: {slide.backend}")
        _check(slide.vendor == "generic-tiff", f"vendor {slide.vendor}, not generic-tiff")
        _check(slide.mpp is not None and abs(slide.mpp - mpp) < 1e-6, f"mpp is {slide.mpp}")
        _check(slide.level_count == n_levels, f"{slide.level_count} levels, not {n_levels}")
        tissue = np.argwhere(layout.kind == 1)
        ty, tx = tissue[len(tissue) // 2]
        cx, cy = (tx + 0.5) * layout.tile, (ty + 0.5) * layout.tile
        for level, ds in enumerate(slide.level_downsamples):
            region = slide.read_region(int(cx - 128 * ds), int(cy - 128 * ds), level, 256, 256)
            _check(region.std() > 5, f"level {level}: the tissue region looks blank")
            log.info(
                "level %d: %s, downsample %.1f, tissue region mean RGB %s",
                level,
                slide.level_dimensions[level],
                ds,
                region.reshape(-1, 3).mean(0).round(),
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/data/large.tif"))
    parser.add_argument("--size", type=int, default=60000, help="width = height in px")
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--shared", type=Path, default=SHARED, help="shared data folder")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality")
    parser.add_argument("--tissue-fraction", type=float, default=0.27)
    parser.add_argument("--min-level-side", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="JPEG encoding threads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tile % LAYOUT_SCALE:
        parser.error(f"--tile must be a multiple of {LAYOUT_SCALE}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    start = time.perf_counter()
    sources = [load_source(args.shared / "slides" / name, args.tile) for name in SOURCES]
    layout = Layout(args.size, args.tile, args.tissue_fraction, sources, args.seed)
    glass = glass_tiles(np.random.default_rng(args.seed + 1), args.tile)
    counts = np.bincount(layout.kind.ravel(), minlength=3)
    log.info(
        "layout %d x %d tiles: %d tissue, %d border, %d glass (%.1f%% tissue incl. border)",
        layout.n,
        layout.n,
        counts[1],
        counts[2],
        counts[0],
        100 * (counts[1] + counts[2]) / layout.kind.size,
    )
    cache = TileCache(args.quality)
    sizes = pyramid_sizes(args.size, args.size, min_level_side=args.min_level_side)
    write_pyramid_tiff(
        args.out,
        tile_rows(layout, glass, cache),
        width=args.size,
        height=args.size,
        mpp=args.mpp,
        tile=args.tile,
        min_level_side=args.min_level_side,
        jpeg_quality=args.quality,
        bigtiff=True,
        workers=args.workers,
        description=f"fivewsi benchmark slide from {', '.join(SOURCES)}",
    )
    elapsed = time.perf_counter() - start
    distinct, cached_bytes = cache.stats
    log.info(
        "wrote %s: %.2f GB in %.1f s (%d levels; %d distinct tiles, %.0f MB, encoded once)",
        args.out,
        args.out.stat().st_size / 1e9,
        elapsed,
        len(sizes),
        distinct,
        cached_bytes / 1e6,
    )
    verify(args.out, args.mpp, len(sizes), layout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
