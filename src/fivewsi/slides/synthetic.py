"""Synthetic H&E-like whole-slide images, written as pyramidal JPEG TIFFs that OpenSlide opens.

Tests, benchmarks and the demo need slides with known content and no licensing strings
attached. :func:`write_synthetic_slide` paints one: near-white glass, a few irregular tissue
islands with holes, pink eosin stroma with fibres, purple nuclei (denser in some places),
optionally a green or blue pen circle and "signal regions" whose nuclei are denser, larger and
darker (a tumour-like focus a classifier can learn).

Colours follow Beer-Lambert stain mixing, so colour deconvolution finds a real haematoxylin
signal in the nuclei and saturation / Otsu tissue detection separates tissue from glass.

Memory stays bounded whatever the size: the layout lives in low-resolution maps (about 1/16
scale, at most ~2048 px a side), textures come from small periodic banks indexed by level-0
coordinates, nuclei are drawn per 256 px cell from an RNG seeded by (seed, cell), and the slide is
produced one tile row at a time. :func:`write_pyramid_tiff` encodes each tile row and downsamples
it into the next level on the fly (encoded lower levels wait in an anonymous temporary file), so
only a few tile rows are ever in memory. Pixels depend only on the options, never on the tile
size used to write them, and the same options give the same file bytes.

Speed (one core of this project's 2-core container): a 4096 x 3072 slide with 4 levels takes
about 0.4 s (0.6 s when the machine is busy) and is ~2 MB; 1024 x 768 takes ~0.06 s.

Example:
    >>> import tempfile, pathlib
    >>> from fivewsi.slides import open_slide
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "synthetic.tif"
    >>> _ = write_synthetic_slide(path, width=1024, height=768, seed=1, pen_mark=True)
    >>> with open_slide(path) as slide:
    ...     slide.vendor, slide.dimensions, slide.mpp, slide.level_count
    ('generic-tiff', (1024, 768), 0.5, 2)
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, NamedTuple

import cv2
import numpy as np

from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)

# Stain optical-density directions (R, G, B). Haematoxylin is Ruifrok & Johnston's vector; the
# eosin one is measured on a real Aperio H&E slide (it absorbs more blue than the textbook one,
# which makes stroma pink instead of magenta).
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_EOSIN = np.array([0.24, 0.83, 0.50], dtype=np.float32)
_PEN_INKS = {
    "green": np.array([1.05, 0.30, 0.85], dtype=np.float32),
    "blue": np.array([0.95, 0.60, 0.08], dtype=np.float32),
}
_GLASS = np.array([240.0, 238.0, 242.0], dtype=np.float32)

_CELL = 256  # level-0 px per nucleus cell; fixed so pixels do not depend on the tile size
_LOWRES_MAX_SIDE = 2048  # cap on the layout maps, which bounds memory for huge slides
_BANK_PAD_MIN = 512  # texture banks are padded so any region up to this size is a plain slice


@dataclass(frozen=True)
class SignalRegion:
    """A round focus whose nuclei differ from the rest: the hook for class-specific content.

    Coordinates and radius are level-0 pixels; the edge is soft and slightly irregular. The
    region is always tissue (it is added to the tissue mask). The multipliers apply in full
    within 3/4 of the radius and fade to 1 at the radius. Use :meth:`styled` for presets.

    Example:
        >>> SignalRegion.styled(2000, 1500, 300, "tumour").density
        3.0
    """

    x: float
    y: float
    radius: float
    density: float = 3.0  # nuclei per area
    size: float = 1.5  # nucleus diameter
    darkness: float = 1.3  # haematoxylin optical density of nuclei
    eosin: float = 0.8  # eosin optical density of the stroma

    @classmethod
    def styled(cls, x: float, y: float, radius: float, style: str = "tumour") -> SignalRegion:
        """A region with the multipliers of a preset from :data:`REGION_STYLES`."""
        try:
            preset = REGION_STYLES[style]
        except KeyError:
            known = sorted(REGION_STYLES)
            raise ValueError(f"unknown region style {style!r}; use one of {known}") from None
        return cls(x, y, radius, **preset)


#: Presets for :meth:`SignalRegion.styled`: tumour-like (dense, large, dark, pleomorphic),
#: lymphocytic (very dense, small, very dark) and hypocellular stroma (few nuclei, more eosin).
REGION_STYLES: dict[str, dict[str, float]] = {
    "tumour": {"density": 3.0, "size": 1.5, "darkness": 1.3, "eosin": 0.8},
    "lymphocytic": {"density": 4.0, "size": 0.7, "darkness": 1.6, "eosin": 0.7},
    "stroma": {"density": 0.25, "size": 1.0, "darkness": 1.0, "eosin": 1.3},
}


def _as_region(item: SignalRegion | Sequence[Any]) -> SignalRegion:
    """Accept a :class:`SignalRegion` or an ``(x, y, radius[, style])`` tuple."""
    if isinstance(item, SignalRegion):
        return item
    x, y, radius, *rest = item
    return SignalRegion.styled(float(x), float(y), float(radius), *(str(r) for r in rest[:1]))


@dataclass(frozen=True)
class SyntheticSlide:
    """Everything that determines a synthetic slide; equal options give equal pixels.

    Attributes:
        width, height: level-0 size in pixels.
        mpp: microns per pixel written to the resolution tags; None writes none (to test the
            user-supplied mpp fallback). Biological sizes (nuclei, fibres) follow it.
        seed: all randomness derives from it.
        tile: TIFF tile side (multiple of 16); does not change the pixels.
        levels: pyramid levels including level 0; None adds halved levels until the smaller side
            of the last one is below ``min_level_side``.
        n_islands: number of tissue fragments.
        tissue_fraction: rough share of the slide covered by tissue before overlaps and holes.
        nuclei_density: multiplier on the number of nuclei everywhere.
        pen_mark: False, True (green), "green" or "blue": a thick ink circle around an island.
        regions: signal regions, as :class:`SignalRegion` or ``(x, y, radius[, style])`` tuples;
            stored as a tuple of :class:`SignalRegion`.
        jpeg_quality: JPEG quality of the tiles.
        objective_power: recorded in the ImageDescription only (generic TIFF has no such tag).
    """

    width: int = 4096
    height: int = 3072
    mpp: float | None = 0.5
    seed: int = 0
    tile: int = 256
    levels: int | None = None
    min_level_side: int = 512
    n_islands: int = 4
    tissue_fraction: float = 0.35
    nuclei_density: float = 1.0
    pen_mark: bool | str = False
    regions: Sequence[SignalRegion | Sequence[Any]] = ()
    jpeg_quality: int = 85
    objective_power: float | None = None

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ValueError(f"slide must be at least 64 x 64 px, got {self.width} x {self.height}")
        if self.tile < 16 or self.tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {self.tile}")
        if self.mpp is not None and self.mpp <= 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if self.n_islands < 1:
            raise ValueError("n_islands must be at least 1")
        if self.pen_mark not in (False, True, *_PEN_INKS):
            raise ValueError(f"pen_mark must be a bool or one of {sorted(_PEN_INKS)}")
        object.__setattr__(self, "regions", tuple(_as_region(r) for r in self.regions))

    @property
    def pen_ink(self) -> str | None:
        """Name of the pen ink, or None without a pen mark."""
        if self.pen_mark is False:
            return None
        return "green" if self.pen_mark is True else str(self.pen_mark)

    @property
    def physical_mpp(self) -> float:
        """Microns per pixel used for biological sizes (0.5 when no mpp is written)."""
        return self.mpp if self.mpp is not None else 0.5

    def description(self) -> str:
        """The ImageDescription text: a readable record of the options."""
        parts = [f"fivewsi synthetic H&E slide {self.width}x{self.height}", f"seed = {self.seed}"]
        if self.mpp is not None:
            parts.append(f"MPP = {self.mpp:g}")
        if self.objective_power is not None:
            parts.append(f"AppMag = {self.objective_power:g}")
        if self.pen_ink:
            parts.append(f"pen = {self.pen_ink}")
        parts.extend(f"region = {r.x:g},{r.y:g},{r.radius:g}" for r in self.regions)
        return "|".join(parts)


# --------------------------------------------------------------------------------------------
# Layout: low-resolution maps and nuclei
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation (float32)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    if sigma > 0.3:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return noise / max(float(noise.std()), 1e-6)


def _smoothstep(values: np.ndarray) -> np.ndarray:
    t = np.clip(values, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Layout:
    """Low-resolution maps of one slide plus its per-cell nuclei; renders any region."""

    def __init__(self, spec: SyntheticSlide) -> None:
        self.spec = spec
        self.scale = max(16, math.ceil(max(spec.width, spec.height) / _LOWRES_MAX_SIDE))
        self.grid = (
            math.ceil(spec.height / self.scale) + 2,
            math.ceil(spec.width / self.scale) + 2,
        )
        gy, gx = np.indices(self.grid, dtype=np.float32)
        # level-0 coordinates of the low-res samples (pixel centres)
        self._ys = (gy + 0.5) * self.scale - 0.5
        self._xs = (gx + 0.5) * self.scale - 0.5
        self._um = self.scale * spec.physical_mpp  # microns per low-res pixel
        rng = np.random.default_rng([spec.seed, 0])
        self.islands = self._island_list(rng)
        tissue = self._tissue_field(rng)
        signal = self._region_maps(rng, tissue)
        self.density, self.size, self.darkness, eosin = signal
        self.density *= np.clip(tissue * 8.0, 0.0, 1.0)
        orient = np.clip(0.5 + 0.6 * _smooth_noise(rng, self.grid, 200 / self._um), 0, 1)
        pen = self._pen_field(rng)
        # one 4-channel map so a tile needs a single warpAffine
        self.fields = np.ascontiguousarray(np.dstack([tissue, eosin, orient, pen]))
        self.textures = _Textures(spec, max(spec.tile, _BANK_PAD_MIN))
        self._mixing = _mixing_matrix(spec.pen_ink)
        # widest nucleus plus antialiasing: how far a nucleus reaches into a neighbouring cell
        self._margin = int(3.8 / spec.physical_mpp * float(self.size.max()) * 1.25) + 4
        self._cells = functools.lru_cache(maxsize=3 * math.ceil(spec.width / _CELL) + 16)(
            self._cell_nuclei
        )

    # -- maps ------------------------------------------------------------------------------
    def _island_list(self, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        spec = self.spec
        mean_r = math.sqrt(
            spec.tissue_fraction * spec.width * spec.height / (spec.n_islands * math.pi)
        )
        out = []
        for _ in range(spec.n_islands):
            cx = rng.uniform(0.2, 0.8) * spec.width
            cy = rng.uniform(0.2, 0.8) * spec.height
            out.append((cx, cy, mean_r * rng.uniform(0.75, 1.25)))
        return out

    def _tissue_field(self, rng: np.random.Generator) -> np.ndarray:
        """Positive inside tissue, about 1 at island centres, falling ~1 per island radius."""
        field_ = np.full(self.grid, -1.0, dtype=np.float32)
        for cx, cy, r in self.islands:
            angle, aspect = rng.uniform(0, math.pi), rng.uniform(0.6, 1.0)
            dx, dy = self._xs - cx, self._ys - cy
            u = (dx * math.cos(angle) + dy * math.sin(angle)) / r
            v = (-dx * math.sin(angle) + dy * math.cos(angle)) / (r * aspect)
            np.maximum(field_, 1.0 - np.sqrt(u * u + v * v), out=field_)
        mean_r = float(np.mean([r for *_, r in self.islands])) / self.scale
        field_ += 0.30 * _smooth_noise(rng, self.grid, mean_r / 4)
        field_ += 0.10 * _smooth_noise(rng, self.grid, mean_r / 16)
        holes = _smooth_noise(rng, self.grid, 30 / self._um)  # vessels, fat, tears
        field_ -= np.clip((holes - 2.0) * 1.5, 0.0, 1.0)
        return field_

    def _region_maps(self, rng: np.random.Generator, tissue: np.ndarray) -> list[np.ndarray]:
        """Density, size, darkness and eosin multipliers; also forces tissue under regions."""
        base_density = self.spec.nuclei_density * np.exp(
            0.45 * _smooth_noise(rng, self.grid, 100 / self._um)
        )
        eosin = 0.85 * (1.0 + 0.15 * _smooth_noise(rng, self.grid, 150 / self._um))
        maps = [base_density, np.ones(self.grid, np.float32), np.ones(self.grid, np.float32), eosin]
        wobble = _smooth_noise(rng, self.grid, 4)
        for reg in self.spec.regions:
            dist = np.hypot(self._xs - reg.x, self._ys - reg.y) / max(reg.radius, 1.0)
            weight = _smoothstep((1.0 - dist + 0.08 * wobble) / 0.25)
            np.maximum(tissue, 1.2 - dist, out=tissue)
            mults = (reg.density, reg.size, reg.darkness, reg.eosin)
            for target, mult in zip(maps, mults, strict=True):
                target *= 1.0 + weight * (mult - 1.0)
        return [m.astype(np.float32) for m in maps]

    def _pen_field(self, rng: np.random.Generator) -> np.ndarray:
        """Ink density map: a thick, nearly closed circle around the first island."""
        pen = np.zeros(self.grid, dtype=np.float32)
        if self.spec.pen_ink is None:
            return pen
        cx, cy, r = self.islands[0]
        s = self.scale
        width_px = max(24.0, 0.02 * min(self.spec.width, self.spec.height))
        start = rng.uniform(0, 360)
        cv2.ellipse(
            pen,
            (round(cx / s * 16), round(cy / s * 16)),
            (round(1.3 * r / s * 16), round(1.15 * r / s * 16)),
            rng.uniform(0, 180),
            start,
            start + 300,
            1.0,
            max(1, round(width_px / s)),
            cv2.LINE_AA,
            4,
        )
        return cv2.GaussianBlur(pen, (0, 0), 0.7)

    # -- nuclei ----------------------------------------------------------------------------
    def _lowres_index(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gi = np.clip(np.rint((ys + 0.5) / self.scale - 0.5).astype(np.intp), 0, self.grid[0] - 1)
        gj = np.clip(np.rint((xs + 0.5) / self.scale - 0.5).astype(np.intp), 0, self.grid[1] - 1)
        return gi, gj

    def _cell_nuclei(self, cx: int, cy: int) -> np.ndarray:
        """Nuclei of one cell as rows (x, y, semi-major, semi-minor, angle, optical density).

        Candidates are a Poisson process at the cell's maximum density, thinned by the local
        density, so density changes smoothly inside a cell instead of jumping at its border.
        """
        s, mpp = self.scale, self.spec.physical_mpp
        x0, y0 = cx * _CELL, cy * _CELL
        g0, g1 = int(y0 // s), int((y0 + _CELL) // s) + 2
        h0, h1 = int(x0 // s), int((x0 + _CELL) // s) + 2
        dmax = float(self.density[g0:g1, h0:h1].max(initial=0.0))
        if dmax <= 0.0:
            return np.empty((0, 6))
        rng = np.random.default_rng([self.spec.seed, 1, cx, cy])
        per_cell = (_CELL * mpp) ** 2 / 400.0  # one nucleus per 400 µm² at density 1
        n = int(rng.poisson(dmax * per_cell))
        xs = x0 + rng.random(n) * _CELL
        ys = y0 + rng.random(n) * _CELL
        accept, jitter = rng.random(n) * dmax, rng.uniform(0.8, 1.25, (3, n))
        gi, gj = self._lowres_index(xs, ys)
        keep = accept < self.density[gi, gj]
        semi_major = 3.8 / mpp * self.size[gi, gj] * jitter[0]
        semi_minor = semi_major * rng.uniform(0.55, 0.95, n)
        angle = rng.uniform(0.0, 180.0, n)
        optical = 1.3 * self.darkness[gi, gj] * jitter[1]
        table = np.stack([xs, ys, semi_major, semi_minor, angle, optical], axis=1)
        return table[keep]

    def _nuclei_canvas(self, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        """Haematoxylin optical density of the nuclei in a region, x100 as uint8.

        Nuclei are drawn on a canvas with a margin and cropped, because OpenCV's antialiased
        fill changes slightly where an ellipse is clipped: this keeps tile borders seamless.
        """
        m = self._margin
        cx0, cx1 = max(0, (x0 - m) // _CELL), (x0 + w + m) // _CELL
        cy0, cy1 = max(0, (y0 - m) // _CELL), (y0 + h + m) // _CELL
        tables = [self._cells(cx, cy) for cy in range(cy0, cy1 + 1) for cx in range(cx0, cx1 + 1)]
        nuclei = np.concatenate(tables)
        reach = nuclei[:, 2] + 2.0
        near = (
            (nuclei[:, 0] + reach > x0)
            & (nuclei[:, 0] - reach < x0 + w)
            & (nuclei[:, 1] + reach > y0)
            & (nuclei[:, 1] - reach < y0 + h)
        )
        if not near.any():
            return None
        # integer 1/16 px coordinates relative to the canvas: exact whatever the region origin
        fixed = np.rint(nuclei[near][:, :4] * 16).astype(np.int64)
        fixed[:, 0] -= (x0 - m) * 16
        fixed[:, 1] -= (y0 - m) * 16
        fixed[:, 2:] = np.maximum(fixed[:, 2:], 16)
        angles = nuclei[near][:, 4].tolist()
        values = np.minimum(np.rint(nuclei[near][:, 5] * 100), 255).astype(int).tolist()
        canvas = np.zeros((h + 2 * m, w + 2 * m), dtype=np.uint8)
        for (x, y, a, b), angle, value in zip(fixed.tolist(), angles, values, strict=True):
            cv2.ellipse(canvas, (x, y), (a, b), angle, 0, 360, value, -1, cv2.LINE_AA, 4)
        return canvas[m : m + h, m : m + w]

    # -- rendering -------------------------------------------------------------------------
    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 pixels of the level-0 region (x0, y0, w, h); w and h at most the bank pad."""
        s, tex = self.scale, self.textures
        matrix = np.array([[1 / s, 0, (x0 + 0.5) / s - 0.5], [0, 1 / s, (y0 + 0.5) / s - 0.5]])
        maps = cv2.warpAffine(
            self.fields,
            matrix,
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        tissue, eosin_map, orient, pen = cv2.split(maps)
        noise = tex.fine(x0, y0, w, h)
        # a fine-grained term on the threshold makes the tissue border ragged, not smooth
        alpha = cv2.addWeighted(tissue, 60.0, tex.mid(x0, y0, w, h), 2.1, 0.5)
        np.clip(alpha, 0.0, 1.0, out=alpha)
        if not alpha.any() and float(pen.max()) < 1e-3:
            # glass only: the same colour transform with zero stain, so pixels stay identical
            # to those of a region that also holds tissue
            zeros = np.zeros_like(noise)
            return self._colour(zeros, zeros, zeros, noise)
        fibre1, fibre2 = tex.fibres(x0, y0, w, h)
        stroma = cv2.addWeighted(fibre1, 0.35, tex.mid(x0 + 301, y0 + 143, w, h), 0.12, 0.62)
        stroma += 0.35 * orient * (fibre2 - fibre1)
        np.clip(stroma, 0.04, 1.3, out=stroma)
        haema = 0.10 * stroma + 0.04
        eosin = eosin_map * stroma
        canvas = self._nuclei_canvas(x0, y0, w, h)
        if canvas is not None:
            # nuclei: haematoxylin with chromatin grain, plus a little eosin (purple, not blue)
            haema += canvas * (0.01 + 0.002 * tex.fine(x0 + 171, y0 + 97, w, h))
            eosin += canvas * 0.003
        haema *= alpha
        eosin *= alpha
        if self.spec.pen_ink is not None:
            pen *= 0.9 + 0.25 * tex.mid(x0 + 57, y0 + 211, w, h)  # streaky ink
        return self._colour(haema, eosin, pen, noise)

    def _colour(
        self, haema: np.ndarray, eosin: np.ndarray, ink: np.ndarray, noise: np.ndarray
    ) -> np.ndarray:
        """RGB from stain optical densities: one affine transform to log RGB, then exp."""
        log_rgb = cv2.transform(cv2.merge([haema, eosin, ink, noise]), self._mixing)
        return _to_uint8(cv2.exp(log_rgb))


def _mixing_matrix(pen_ink: str | None) -> np.ndarray:
    """3 x 5 affine map from (haematoxylin, eosin, ink, noise) to log RGB."""
    ink = _PEN_INKS[pen_ink] if pen_ink else np.zeros(3, np.float32)
    noise = np.full(3, 1.5 / 240.0, np.float32)  # about 1.5 grey levels on glass
    columns = [-_HEMATOXYLIN, -_EOSIN, -ink, noise, np.log(_GLASS)]
    return np.stack(columns, axis=1).astype(np.float32)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Round and saturate a float image to uint8."""
    return cv2.convertScaleAbs(rgb.astype(np.float32, copy=False))


class _Textures:
    """Small periodic noise banks; a region samples them at its level-0 coordinates (wrapped).

    Because the banks are periodic and indexed by absolute coordinates, textures continue
    seamlessly across tile borders. Banks of different sizes avoid a visible common period.
    """

    def __init__(self, spec: SyntheticSlide, pad: int) -> None:
        rng = np.random.default_rng([spec.seed, 2])
        mpp = spec.physical_mpp
        angle = rng.uniform(0, math.pi)
        # fibres: long along one direction (~7 µm), thin across (~1 µm)
        self._fibre1 = self._padded(_periodic_noise(rng, 512, 7 / mpp, 1.0 / mpp, angle), pad)
        self._fibre2 = self._padded(_periodic_noise(rng, 384, 7 / mpp, 1.0 / mpp, angle + 1.2), pad)
        self._mid = self._padded(_periodic_noise(rng, 320, 1.5 / mpp, 1.5 / mpp, 0.0), pad)
        self._fine = self._padded(rng.standard_normal((509, 509)).astype(np.float32), pad)
        self.pad = pad

    @staticmethod
    def _padded(bank: np.ndarray, pad: int) -> np.ndarray:
        return np.pad(bank, ((0, pad), (0, pad)), mode="wrap")

    def _slice(self, bank: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        period = bank.shape[0] - self.pad
        ys, xs = y0 % period, x0 % period
        return bank[ys : ys + h, xs : xs + w]

    def fine(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Per-pixel white noise, unit standard deviation."""
        return self._slice(self._fine, x0, y0, w, h)

    def mid(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Noise correlated over ~1.5 µm (ragged borders, ink streaks)."""
        return self._slice(self._mid, x0, y0, w, h)

    def fibres(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Two fibre textures of different orientation, blended by the orientation map."""
        return self._slice(self._fibre1, x0, y0, w, h), self._slice(self._fibre2, x0, y0, w, h)


def _periodic_noise(
    rng: np.random.Generator, size: int, sigma_along: float, sigma_across: float, angle: float
) -> np.ndarray:
    """Periodic (tileable) anisotropic Gaussian-filtered noise of unit variance, via FFT."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    gain = np.exp(-2 * math.pi**2 * (sigma_along**2 * along**2 + sigma_across**2 * across**2))
    noise = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    noise -= noise.mean()
    return (noise / max(float(noise.std()), 1e-12)).astype(np.float32)


def _resolve_spec(spec: SyntheticSlide | None, options: dict[str, Any]) -> SyntheticSlide:
    spec = spec if spec is not None else SyntheticSlide()
    known = {f.name for f in fields(SyntheticSlide)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown synthetic slide option(s): {', '.join(unknown)}")
    return replace(spec, **options) if options else spec


def render_region(
    x: int, y: int, w: int, h: int, /, spec: SyntheticSlide | None = None, **options: Any
) -> np.ndarray:
    """Level-0 pixels (x, y, w, h) of a synthetic slide, without writing it or JPEG loss.

    ``spec`` and ``options`` are as for :func:`write_synthetic_slide`.

    Example:
        >>> render_region(0, 0, 64, 32, width=512, height=512, seed=1).shape
        (32, 64, 3)
    """
    layout = _Layout(_resolve_spec(spec, options))
    return _render_large(layout, x, y, w, h)


def _render_large(layout: _Layout, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Render a region of any size in chunks no larger than the texture banks' padding."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = layout.textures.pad
    for cy in range(0, height, step):
        for cx in range(0, width, step):
            h, w = min(step, height - cy), min(step, width - cx)
            out[cy : cy + h, cx : cx + w] = layout.render(x + cx, y + cy, w, h)
    return out


def _synthetic_rows(layout: _Layout) -> Iterator[np.ndarray]:
    """Level-0 tile rows (tile px high, full width) of a synthetic slide."""
    spec = layout.spec
    for y in range(0, spec.height, spec.tile):
        h = min(spec.tile, spec.height - y)
        yield _render_large(layout, 0, y, spec.width, h)


def write_synthetic_slide(
    path: str | os.PathLike[str], spec: SyntheticSlide | None = None, **options: Any
) -> Path:
    """Write a synthetic H&E pyramidal TIFF atomically and return its path.

    Args:
        path: output file (``.tif``); its folder is created.
        spec: a :class:`SyntheticSlide`; None uses the defaults.
        **options: :class:`SyntheticSlide` fields overriding ``spec`` (``width``, ``seed``,
            ``pen_mark``, ``regions``, ...).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.tif"
        >>> write_synthetic_slide(out, width=768, height=512, seed=2,
        ...                       regions=[(400, 250, 120, "tumour")]).name
        's.tif'
    """
    spec = _resolve_spec(spec, options)
    start = time.perf_counter()
    layout = _Layout(spec)
    out = write_pyramid_tiff(
        path,
        _synthetic_rows(layout),
        width=spec.width,
        height=spec.height,
        mpp=spec.mpp,
        tile=spec.tile,
        levels=spec.levels,
        min_level_side=spec.min_level_side,
        jpeg_quality=spec.jpeg_quality,
        description=spec.description(),
    )
    log.debug(
        "synthetic slide %s (%dx%d, seed %d) written in %.2f s",
        out.name,
        spec.width,
        spec.height,
        spec.seed,
        time.perf_counter() - start,
    )
    return out


# --------------------------------------------------------------------------------------------
# Pyramidal TIFF writer (bounded memory)
# --------------------------------------------------------------------------------------------


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
