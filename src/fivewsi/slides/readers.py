"""Slide readers: one class per backend behind :func:`open_slide`.

OpenSlide reads every format it knows (Aperio SVS incl. JPEG 2000, Hamamatsu, MIRAX, Leica,
Ventana, generic tiled TIFF, DICOM, ...). What it refuses falls back to tifffile (plain or
OME-TIFF, read lazily through zarr) or Pillow (PNG / JPEG and other small images).

All readers return RGB ``uint8`` arrays (height, width, 3); transparent pixels become white, the
background colour of a glass slide. Coordinates are always level-0 pixels.
"""

from __future__ import annotations

import logging
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fivewsi.errors import SlideStageError

log = logging.getLogger(__name__)

#: File suffixes collected when a folder is given as input.
SLIDE_SUFFIXES = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide",
    ".dcm", ".png", ".jpg", ".jpeg",
)
_DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff")
#: Plausible microns per pixel for level 0; resolution tags outside it are ignored as junk
#: (e.g. a 72 dpi default written by image software).
_MPP_RANGE = (0.05, 20.0)


#: Longest slide id: its files (``.<id>.h5.tmp-<pid>``) must fit the 255-byte name limit.
MAX_SLIDE_ID_BYTES = 200


class SlideError(SlideStageError):
    """A slide cannot be used; the message says why and what to do about it."""


def slide_id_from_path(path: str | os.PathLike[str]) -> str:
    """The slide id: the file name without its extension (``a.ome.tiff`` gives ``a``).

    Example:
        >>> slide_id_from_path("/data/TCGA-05-4244.svs")
        'TCGA-05-4244'
    """
    name = Path(path).name
    for suffix in _DOUBLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def check_slide_id(slide_id: str, path: str | os.PathLike[str]) -> str:
    """``slide_id`` if it can name files (a feature file, a QC image); else a :class:`SlideError`.

    Ids come from the name the user gave a slide; one that is empty, ``.`` or ``..``, or starts
    with a dot would name a hidden file or none at all.

    Example:
        >>> check_slide_id("TCGA-05-4244", "TCGA-05-4244.svs")
        'TCGA-05-4244'
    """
    if not slide_id or slide_id.startswith(".") or "/" in slide_id or "\x00" in slide_id:
        raise SlideError(
            f"{path}: its name gives the slide id {slide_id!r}, which cannot name a file; "
            "rename the slide (or give it a link with a plain name)"
        )
    if len(slide_id.encode("utf-8")) > MAX_SLIDE_ID_BYTES:
        raise SlideError(
            f"{path}: its slide id is longer than {MAX_SLIDE_ID_BYTES} bytes, too long to name "
            "its files; rename the slide (or give it a link with a shorter name)"
        )
    return slide_id


def find_slides(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of slide files.

    Folders are searched recursively for :data:`SLIDE_SUFFIXES`; files given by name are kept
    whatever their suffix so that a misnamed slide still gets a clear per-slide error. Paths are
    kept as the user named them (absolute, links not resolved): a slide's id is the name of the
    link, so two links to one file are two slides. Hidden files (``._x.svs`` from macOS) and
    anything under an ``exclude`` folder (the command's own output) are never taken from a
    folder.

    Raises:
        SlideError: an input does not exist, or no slide was found at all.
    """
    skip = [Path(os.path.normpath(Path(e).absolute())) for e in exclude]
    skip += [Path(e).resolve() for e in exclude]
    found: dict[Path, None] = {}
    items = list(inputs)
    for item in items:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if not (child.is_file() and child.suffix.lower() in SLIDE_SUFFIXES):
                    continue
                child = Path(os.path.normpath(child.absolute()))
                if any(child.is_relative_to(folder) for folder in skip):
                    continue
                if any(part.startswith(".") for part in child.relative_to(
                        os.path.normpath(path.absolute())).parts):
                    log.warning("skipping hidden file %s", child)
                    continue
                found[child] = None
        elif path.exists():
            found[Path(os.path.normpath(path.absolute()))] = None
        else:
            raise SlideError(f"input not found: {path}")
    if not found:
        shown = ", ".join(map(str, items[:3])) + (", ..." if len(items) > 3 else "")
        raise SlideError(
            f"no slides found in {shown or 'the inputs'} (looked for files ending in "
            f"{', '.join(SLIDE_SUFFIXES[:6])}, ...)"
        )
    return sorted(found)


def _plausible_mpp(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return value if _MPP_RANGE[0] <= value <= _MPP_RANGE[1] else None


def _ome_mpp(xml: str) -> float | None:
    """Pixel size from OME-XML (``PhysicalSizeX``, in µm unless another unit is named)."""
    size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml)
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
    if size is None or (unit is not None and unit.group(1) not in ("µm", "um")):
        return None
    return _plausible_mpp(float(size.group(1)))


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """Convert grey / RGBA / 16-bit arrays to RGB uint8, compositing transparency onto white."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8:
        top = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else 1.0
        array = np.clip(array.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    if array.shape[2] == 4:
        if array[..., 3].min() == 255:  # opaque (the usual case): no compositing needed
            return cv2.cvtColor(array, cv2.COLOR_RGBA2RGB)
        alpha = array[..., 3:4].astype(np.uint16)
        rgb = (array[..., :3] * alpha + 255 * (255 - alpha)) // 255
        return rgb.astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


class SlideReader(ABC):
    """Read access to a pyramidal slide, whatever its file format.

    Subclasses implement :meth:`_read_level`; everything else (best level, scaled patches,
    bounded-memory thumbnails) is shared.
    """

    backend: str = "base"

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        self.path = Path(path)
        self.slide_id = slide_id_from_path(self.path)
        self._user_mpp = mpp

    # -- backend interface -------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> Sequence[tuple[int, int]]:
        """(width, height) of every pyramid level, level 0 first."""

    @abstractmethod
    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 region of ``level`` whose top-left is (x, y) in *level* pixels."""

    @property
    def metadata_mpp(self) -> float | None:
        """Microns per pixel at level 0 from the file's metadata, if present and plausible."""
        return None

    @property
    def objective_power(self) -> float | None:
        """Scanning objective magnification from the metadata, if present."""
        return None

    @property
    def vendor(self) -> str:
        return self.backend

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    # -- shared behaviour --------------------------------------------------------------
    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}({self.slide_id!r}, {w}x{h}, levels={self.level_count})"

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return tuple(self.level_dimensions[0])  # type: ignore[return-value]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        w0, h0 = self.dimensions
        return [((w0 / w) + (h0 / h)) / 2.0 for w, h in self.level_dimensions]

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel: metadata, else objective power, else the user's value."""
        if (value := self.metadata_mpp) is not None:
            return value
        if (power := self.objective_power) is not None and power > 0:
            return 10.0 / power
        return self._user_mpp

    @property
    def mpp_source(self) -> str | None:
        """Where :attr:`mpp` came from: ``metadata``, ``objective-power``, ``user`` or None."""
        if self.metadata_mpp is not None:
            return "metadata"
        if self.objective_power:
            return "objective-power"
        return "user" if self._user_mpp is not None else None

    def best_level_for_downsample(self, downsample: float) -> int:
        """The smallest level whose downsample does not exceed ``downsample`` (with 1% slack)."""
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            if level_ds <= downsample * 1.01:
                best = level
        return best

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB region of ``level`` with top-left (x, y) in level-0 pixels; off-slide is white."""
        ds = self.level_downsamples[level]
        lx, ly = int(x / ds), int(y / ds)
        lw, lh = self.level_dimensions[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + width, lw), min(ly + height, lh)
        if x1 > x0 and y1 > y0:
            region = self._read_level(x0, y0, level, x1 - x0, y1 - y0)
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = region
        return out

    def read_scaled(self, x: int, y: int, size0: int, out_px: int) -> np.ndarray:
        """A square patch covering ``size0`` level-0 pixels at (x, y), resized to ``out_px``.

        Reads from the pyramid level closest to (but not coarser than) the wanted resolution,
        so a 20x patch is never assembled from a whole 40x level.
        """
        downsample = size0 / out_px
        level = self.best_level_for_downsample(downsample)
        ds = self.level_downsamples[level]
        side = max(1, round(size0 / ds))
        region = self.read_region(x, y, level, side, side)
        if side == out_px:
            return region
        interp = cv2.INTER_AREA if side > out_px else cv2.INTER_LINEAR
        return cv2.resize(region, (out_px, out_px), interpolation=interp)

    def read_thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A thumbnail whose longer side is at most ``max_side`` and its downsample from level 0.

        The thumbnail is assembled strip by strip from the best level, so memory stays bounded
        even for a slide without a pyramid.
        """
        w0, h0 = self.dimensions
        downsample = max(w0, h0) / max_side if max(w0, h0) > max_side else 1.0
        tw, th = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        scale_x, scale_y = tw / lw, th / lh
        thumb = np.empty((th, tw, 3), dtype=np.uint8)
        strip = max(1, int(4096 * 4096 // max(lw, 1)))  # ~48 MB of level pixels per strip
        ty_done = 0
        for ly in range(0, lh, strip):
            lh_strip = min(strip, lh - ly)
            region = self._read_level(0, ly, level, lw, lh_strip)
            ty_end = th if ly + lh_strip >= lh else min(th, round((ly + lh_strip) * scale_y))
            rows = ty_end - ty_done
            if rows <= 0:
                continue
            interp = cv2.INTER_AREA if scale_x < 1 else cv2.INTER_LINEAR
            thumb[ty_done:ty_end] = cv2.resize(region, (tw, rows), interpolation=interp)
            ty_done = ty_end
        return thumb, w0 / tw

    def describe(self) -> dict[str, Any]:
        """Facts about the slide for logs and manifests."""
        w, h = self.dimensions
        return {
            "slide_id": self.slide_id,
            "backend": self.backend,
            "vendor": self.vendor,
            "width": w,
            "height": h,
            "levels": self.level_count,
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
        }


class OpenSlideReader(SlideReader):
    """Reader for every format OpenSlide supports."""

    backend = "openslide"

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        super().__init__(path, mpp)
        import openslide

        self._slide = openslide.OpenSlide(str(self.path))
        props = self._slide.properties
        self._props = dict(props)

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]:
        return self._slide.level_dimensions

    @property
    def level_downsamples(self) -> list[float]:
        return list(self._slide.level_downsamples)

    @property
    def metadata_mpp(self) -> float | None:
        values = []
        for key in ("openslide.mpp-x", "openslide.mpp-y"):
            try:
                values.append(float(self._props[key]))
            except (KeyError, ValueError):
                # generic-tiff reads OME-TIFF but not its XML pixel size
                return _ome_mpp(self._props.get("tiff.ImageDescription", ""))
        return _plausible_mpp(sum(values) / 2)

    @property
    def objective_power(self) -> float | None:
        try:
            return float(self._props["openslide.objective-power"])
        except (KeyError, ValueError):
            return None

    @property
    def vendor(self) -> str:
        return self._props.get("openslide.vendor", "unknown")

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        ds = self._slide.level_downsamples[level]
        loc = (round(x * ds), round(y * ds))
        image = self._slide.read_region(loc, level, (width, height))
        return _to_rgb(np.asarray(image))

    def close(self) -> None:
        self._slide.close()


class FallbackTiffReader(SlideReader):
    """Reader for TIFFs OpenSlide refuses (untiled strips, OME-TIFF): tifffile + zarr, lazily."""

    backend = "tifffile"

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        super().__init__(path, mpp)
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(str(self.path))
        series = self._tif.series[0]
        self._axes = series.axes
        if "Y" not in self._axes or "X" not in self._axes:
            raise SlideError(f"{self.path.name}: TIFF series has axes {self._axes!r}, not an image")
        self._levels = []
        for index in range(len(series.levels)):
            store = self._tif.aszarr(series=0, level=index)
            self._levels.append(zarr.open(store, mode="r"))
        self._dims = [(self._size(lv.shape, "X"), self._size(lv.shape, "Y")) for lv in self._levels]
        self._meta_mpp = self._read_mpp()

    def _size(self, shape: tuple[int, ...], axis: str) -> int:
        return int(shape[self._axes.index(axis)])

    def _read_mpp(self) -> float | None:
        if self._tif.is_ome and self._tif.ome_metadata:
            return _ome_mpp(self._tif.ome_metadata)
        page = self._tif.pages[0]
        res, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
        if res is None or unit is None:
            return None
        num, den = res.value
        per_unit = num / den if den else 0.0
        microns = {2: 25400.0, 3: 10000.0}.get(int(unit.value))
        if not per_unit or microns is None:
            return None
        return _plausible_mpp(microns / per_unit)

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]:
        return self._dims

    @property
    def metadata_mpp(self) -> float | None:
        return self._meta_mpp

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        array = self._levels[level]
        index: list[Any] = []
        for axis in self._axes:
            if axis == "Y":
                index.append(slice(y, y + height))
            elif axis == "X":
                index.append(slice(x, x + width))
            elif axis == "S":
                index.append(slice(None))
            else:  # first plane of any extra axis (channel stacks, z, time)
                index.append(0)
        region = np.asarray(array[tuple(index)])
        kept = [a for a in self._axes if a in "YXS"]
        if "S" in kept and kept.index("S") == 0:
            region = np.moveaxis(region, 0, -1)
        return _to_rgb(region)

    def close(self) -> None:
        self._tif.close()


class PillowReader(SlideReader):
    """Reader for ordinary images (PNG, JPEG, ...): decoded once, small by nature."""

    backend = "pillow"

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None) -> None:
        super().__init__(path, mpp)
        from PIL import Image

        with Image.open(self.path) as image:
            self._array = _to_rgb(np.asarray(image.convert("RGBA")))
        self._dims = [(self._array.shape[1], self._array.shape[0])]

    @property
    def level_dimensions(self) -> Sequence[tuple[int, int]]:
        return self._dims

    def _read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        return self._array[y : y + height, x : x + width]


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+")


def _is_ome_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            return bool(tif.is_ome)
    except Exception:  # not readable by tifffile: let the other backends decide
        return False


def open_slide(path: str | os.PathLike[str], mpp: float | None = None) -> SlideReader:
    """Open a slide with the first backend that reads it.

    Args:
        path: slide file.
        mpp: level-0 microns per pixel to use when the file's metadata lacks it.

    Raises:
        SlideError: the file is missing or no backend reads it; the message lists what was tried.

    Example:
        >>> open_slide("missing.svs")
        Traceback (most recent call last):
        ...
        fivewsi.slides.readers.SlideError: slide file not found: missing.svs
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"slide file not found: {path}")
    tried: list[str] = []
    import openslide

    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
        # OpenSlide reads OME-TIFF as generic TIFF but misses its SubIFD pyramid and pixel size.
        if fmt is not None and not (fmt == "generic-tiff" and _is_ome_tiff(path)):
            return OpenSlideReader(path, mpp)
        tried.append("OpenSlide: format not recognised" if fmt is None else "OpenSlide: OME-TIFF")
    except openslide.OpenSlideError as exc:
        tried.append(f"OpenSlide: {exc}")
    if _is_tiff(path):
        try:
            return FallbackTiffReader(path, mpp)
        except Exception as exc:  # tifffile raises many types for damaged files
            tried.append(f"tifffile: {exc}")
    else:
        tried.append("tifffile: not a TIFF file")
    try:
        return PillowReader(path, mpp)
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, DecompressionBomb
        tried.append(f"Pillow: {type(exc).__name__}: {exc}")
    size = path.stat().st_size
    raise SlideError(
        f"cannot read {path.name} ({size} bytes) as a slide: " + "; ".join(tried)
        + ". Is the file complete and in a whole-slide format (SVS, NDPI, MRXS, tiled TIFF, ...)?"
    )
