"""What a synthetic pixel slide looks like: :class:`PixelSlideSpec` and its signal regions.

A spec holds every option that determines a slide's pixels (size, mpp, seed, tissue islands,
pen mark, :class:`SignalRegion` foci, pyramid and JPEG settings);
:func:`fivewsi.synthetic.pixel_slide.write_pixel_slide` paints it. Equal specs give equal pixels.

Example:
    >>> spec = PixelSlideSpec(width=1024, height=768, seed=1, regions=[(500, 400, 120, "stroma")])
    >>> spec.regions[0].eosin, spec.pen_ink
    (1.3, None)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

#: Optical-density directions (R, G, B) of the pen inks a slide may carry.
PEN_INKS: dict[str, np.ndarray] = {
    "green": np.array([1.05, 0.30, 0.85], dtype=np.float32),
    "blue": np.array([0.95, 0.60, 0.08], dtype=np.float32),
}


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
class PixelSlideSpec:
    """Everything that determines a synthetic pixel slide; equal specs give equal pixels.

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
        if self.pen_mark not in (False, True, *PEN_INKS):
            raise ValueError(f"pen_mark must be a bool or one of {sorted(PEN_INKS)}")
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


def resolve_spec(spec: PixelSlideSpec | None, options: dict[str, Any]) -> PixelSlideSpec:
    """``spec`` (None: the defaults) with ``options`` replacing its fields.

    Raises:
        TypeError: an option that is not a :class:`PixelSlideSpec` field.

    Example:
        >>> resolve_spec(None, {"width": 800}).width
        800
    """
    spec = spec if spec is not None else PixelSlideSpec()
    known = {f.name for f in fields(PixelSlideSpec)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown synthetic slide option(s): {', '.join(unknown)}")
    return replace(spec, **options) if options else spec
