"""Synthetic H&E-like pixel slides, written as pyramidal JPEG TIFFs that OpenSlide opens.

Tests, benchmarks and the demo need slides with known content and no licensing strings
attached. :func:`write_pixel_slide` paints one: near-white glass, a few irregular tissue
islands with holes, pink eosin stroma with fibres, purple nuclei (denser in some places),
optionally a green or blue pen circle and "signal regions" whose nuclei are denser, larger and
darker (a tumour-like focus a classifier can learn).

Colours follow Beer-Lambert stain mixing, so colour deconvolution finds a real haematoxylin
signal in the nuclei and saturation / Otsu tissue detection separates tissue from glass.

Memory stays bounded whatever the size: the layout lives in low-resolution maps (about 1/16
scale, at most ~2048 px a side), textures come from small periodic banks indexed by level-0
coordinates, nuclei are drawn per 256 px cell from an RNG seeded by (seed, cell), and the slide
is produced one tile row at a time, which :func:`~fivewsi.synthetic.tiff.write_pyramid_tiff`
encodes and downsamples on the fly, so only a few tile rows are ever in memory. Pixels depend
only on the options, never on the tile size used to write them, and the same options give the
same file bytes.

Speed (one core of this project's 2-core container): a 4096 x 3072 slide with 4 levels takes
about 0.4 s (0.6 s when the machine is busy) and is ~2 MB; 1024 x 768 takes ~0.06 s.

Example:
    >>> import tempfile, pathlib
    >>> from fivewsi.slides import open_slide
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "synthetic.tif"
    >>> _ = write_pixel_slide(path, width=1024, height=768, seed=1, pen_mark=True)
    >>> with open_slide(path) as slide:
    ...     slide.vendor, slide.dimensions, slide.mpp, slide.level_count
    ('generic-tiff', (1024, 768), 0.5, 2)
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fivewsi.synthetic.slide_spec import PEN_INKS, PixelSlideSpec, resolve_spec
from fivewsi.synthetic.tiff import write_pyramid_tiff

log = logging.getLogger(__name__)

# Stain optical-density directions (R, G, B). Haematoxylin is Ruifrok & Johnston's vector; the
# eosin one is measured on a real Aperio H&E slide (it absorbs more blue than the textbook one,
# which makes stroma pink instead of magenta).
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286], dtype=np.float32)
_EOSIN = np.array([0.24, 0.83, 0.50], dtype=np.float32)
_GLASS = np.array([240.0, 238.0, 242.0], dtype=np.float32)

_CELL = 256  # level-0 px per nucleus cell; fixed so pixels do not depend on the tile size
_LOWRES_MAX_SIDE = 2048  # cap on the layout maps, which bounds memory for huge slides
_BANK_PAD_MIN = 512  # texture banks are padded so any region up to this size is a plain slice


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

    def __init__(self, spec: PixelSlideSpec) -> None:
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
    ink = PEN_INKS[pen_ink] if pen_ink else np.zeros(3, np.float32)
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

    def __init__(self, spec: PixelSlideSpec, pad: int) -> None:
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



def render_region(
    x: int, y: int, w: int, h: int, /, spec: PixelSlideSpec | None = None, **options: Any
) -> np.ndarray:
    """Level-0 pixels (x, y, w, h) of a synthetic slide, without writing it or JPEG loss.

    ``spec`` and ``options`` are as for :func:`write_pixel_slide`.

    Example:
        >>> render_region(0, 0, 64, 32, width=512, height=512, seed=1).shape
        (32, 64, 3)
    """
    layout = _Layout(resolve_spec(spec, options))
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


def write_pixel_slide(
    path: str | os.PathLike[str], spec: PixelSlideSpec | None = None, **options: Any
) -> Path:
    """Write a synthetic H&E pyramidal TIFF atomically and return its path.

    Args:
        path: output file (``.tif``); its folder is created.
        spec: a :class:`PixelSlideSpec`; None uses the defaults.
        **options: :class:`PixelSlideSpec` fields overriding ``spec`` (``width``, ``seed``,
            ``pen_mark``, ``regions``, ...).

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "s.tif"
        >>> write_pixel_slide(out, width=768, height=512, seed=2,
        ...                   regions=[(400, 250, 120, "tumour")]).name
        's.tif'
    """
    spec = resolve_spec(spec, options)
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
