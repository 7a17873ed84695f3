"""What ``fivewsi view DIR`` may serve: DIR's slides and files, read once at start-up.

DIR is a ``predict`` output (``predictions.csv`` with a ``status`` column, ``manifest.csv`` of
its preprocessing naming each slide's file, ``geojson/<id>.geojson`` with every patch score,
``heatmaps/``, ``report.html``) or an ``evaluate`` output (``predictions.csv`` with ``label``
and ``error``, ``metrics.json``, figures). The :class:`Catalog` is the allow-list: every slide
is reached by its key (:func:`~fivewsi.utils.outputs.safe_file_name` of its id) and every file
by its exact path relative to DIR, as listed here; nothing else is ever opened.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "predictions.csv").write_text("slide_id,label,predicted,p_A,p_B,error\\n"
    ...                                         "s1,A,B,0.2,0.8,\\n")
    >>> catalog = load_catalog(d)
    >>> catalog.kind, catalog.classes, catalog.slides["s1"].probabilities
    ('evaluate', ['A', 'B'], {'A': 0.2, 'B': 0.8})
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fivewsi.errors import FivewsiError
from fivewsi.utils.outputs import csv_value, safe_file_name

log = logging.getLogger(__name__)

#: Suffixes of DIR's own files that may be served (pages, pictures, tables, GeoJSON).
SERVED_SUFFIXES = (".html", ".png", ".geojson", ".json", ".csv", ".md")
#: Files of DIR never served although their suffix is allowed (none today; kept explicit).
_NEVER = frozenset[str]()


class ViewInputError(FivewsiError, ValueError):
    """DIR is not a ``predict`` or ``evaluate`` output the viewer can show."""


@dataclass
class Layer:
    """One patch-score map of a slide: the class heatmap or one question prompt's."""

    name: str
    minimum: float
    maximum: float
    label: str  # its range in absolute terms (attention_label), "" when not attention weights
    near_uniform: bool


@dataclass
class Patches:
    """A slide's patches from its GeoJSON: level-0 top-left corners, side, scores per layer."""

    coords: np.ndarray  # [N, 2] int64
    size: int
    names: list[str]
    scores: np.ndarray  # [N, len(names)] float64, NaN where a score is missing

    def layers(self) -> list[Layer]:
        from fivewsi.predict.attention import attention_range

        out = []
        for i, name in enumerate(self.names):
            values = self.scores[:, i]
            finite = values[np.isfinite(values)]
            try:
                rng = attention_range(values)
                label, uniform = rng.label(), rng.near_uniform
            except ValueError:
                label, uniform = "", False
            out.append(Layer(name, float(finite.min()) if finite.size else math.nan,
                             float(finite.max()) if finite.size else math.nan, label, uniform))
        return out


@dataclass
class SlideEntry:
    """One row of ``predictions.csv`` with what DIR holds for it."""

    key: str
    slide_id: str
    status: str
    error: str = ""
    predicted: str = ""
    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    attributes: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    description: str = ""
    n_patches: int | None = None
    render_error: str = ""
    slide_path: Path | None = None  # the image, as DIR's manifest names it (None: canvas)
    slide_mpp: float | None = None
    geojson: str | None = None  # relative path in Catalog.files
    heatmaps: dict[str, str] = field(default_factory=dict)  # PNG name → relative path


@dataclass
class Catalog:
    """DIR's slides and the files that may be served (relative POSIX path → real path)."""

    root: Path
    kind: str  # "predict" or "evaluate"
    classes: list[str]
    calibration: str
    slides: dict[str, SlideEntry]
    files: dict[str, Path]
    #: The evaluation's figures (title, relative path in ``files``): DIR's own when DIR is an
    #: ``evaluate`` output, else those of the evaluation that ``predict.json`` names.
    figures: list[tuple[str, str]] = field(default_factory=list)
    _patches: dict[str, Patches | None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def patches(self, key: str) -> Patches | None:
        """The patches of slide ``key`` (read from its GeoJSON once), None when it has none."""
        with self._lock:
            if key in self._patches:
                return self._patches[key]
        entry = self.slides[key]
        found = None
        if entry.geojson is not None:
            try:
                found = read_patches(self.files[entry.geojson])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: patches not readable: %s", entry.slide_id, exc)
        with self._lock:
            self._patches[key] = found
        return found


def load_catalog(root: str | os.PathLike[str]) -> Catalog:
    """The allow-list of ``root``, a ``predict`` or ``evaluate`` output folder.

    Raises:
        ViewInputError: ``root`` is not a folder or has no readable ``predictions.csv``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ViewInputError(f"{root} is not a folder: give a `fivewsi predict` or "
                             "`fivewsi evaluate` output folder")
    real_root = Path(os.path.realpath(root))
    table = real_root / "predictions.csv"
    if not table.is_file():
        raise ViewInputError(f"{root} has no predictions.csv: give a `fivewsi predict` or "
                             "`fivewsi evaluate` output folder")
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ViewInputError(f"{table} cannot be read: {exc}") from exc
    if "slide_id" not in header:
        raise ViewInputError(f"{table} has no slide_id column: not a fivewsi predictions table")
    files = _own_files(real_root)
    kind = "predict" if "status" in header else "evaluate"
    classes = [c[2:] for c in header if c.startswith("p_")]
    attribute_keys = [c for c in header if f"{c}_probability" in header]
    manifest = _manifest(real_root / "manifest.csv")
    slides: dict[str, SlideEntry] = {}
    calibration = ""
    for row in rows:
        slide_id = csv_value(row.get("slide_id") or "")
        if not slide_id:
            continue
        key = safe_file_name(slide_id)
        if key in slides:
            other = slides[key].slide_id
            raise ViewInputError(
                f"{table}: slides {other!r} and {slide_id!r} share the key {key!r} (or one "
                "slide is listed twice); the viewer needs one row per slide")
        error = csv_value(row.get("error") or "")
        entry = SlideEntry(
            key=key,
            slide_id=slide_id,
            status=row.get("status") or ("failed" if error else "ok"),
            error=error,
            predicted=csv_value(row.get("predicted") or ""),
            label=csv_value(row.get("label") or ""),
            probabilities={c: v for c in classes
                           if (v := _number(row.get(f"p_{c}"))) is not None},
            attributes={k: (csv_value(row[k]), _number(row.get(f"{k}_probability")))
                        for k in attribute_keys if row.get(k)},
            description=csv_value(row.get("description") or ""),
            n_patches=int(n) if (n := _number(row.get("n_patches"))) is not None else None,
            render_error=csv_value(row.get("render_error") or ""),
        )
        calibration = calibration or csv_value(row.get("calibration") or "")
        record = manifest.get(slide_id)
        if record is not None:
            path = Path(record["path"])
            if path.is_file():
                entry.slide_path = path
            entry.slide_mpp = _number(record.get("slide_mpp"))
        geojson = f"geojson/{key}.geojson"
        if geojson in files:
            entry.geojson = geojson
        prefix = f"heatmaps/{key}/"
        entry.heatmaps = {p[len(prefix):]: p for p in files if p.startswith(prefix)}
        slides[key] = entry
    figures = _figures(real_root, kind, files)
    return Catalog(real_root, kind, classes, calibration, slides, files, figures)


#: Where the figures of the evaluation a ``predict`` output names are served, under ``/files/``.
EVALUATION_PREFIX = "evaluation/"


def _figures(root: Path, kind: str, files: dict[str, Path]) -> list[tuple[str, str]]:
    """The evaluation figures to show (title, relative path), added to ``files``.

    An ``evaluate`` output's are its own PNGs that its ``metrics.json`` lists; a ``predict``
    output's are those of the evaluation its ``predict.json`` names (the one its report.html
    shows), each served as ``evaluation/<file>``: exactly these files, nothing else of that
    folder. :func:`fivewsi.predict.html.evaluation_figures` reads both safely.
    """
    from fivewsi.predict.html import evaluation_figures
    from fivewsi.predict.predict import PREDICT_INFO

    if kind == "evaluate":
        return [(f.title, name) for f in evaluation_figures(root)
                if (name := Path(str(f.image)).name) in files]
    try:
        info = json.loads((root / PREDICT_INFO).read_text(encoding="utf-8"))
        folder = info.get("evaluation") if isinstance(info, dict) else None
    except (OSError, ValueError):
        return []
    if not isinstance(folder, str) or not folder:
        return []
    found = []
    for figure in evaluation_figures(folder):
        name = EVALUATION_PREFIX + Path(str(figure.image)).name
        if name in files:  # DIR's own file of that name stays what it is
            continue
        files[name] = Path(os.path.realpath(str(figure.image)))
        found.append((figure.title, name))
    return found


def read_patches(path: Path) -> Patches:
    """:class:`Patches` of a GeoJSON written by :func:`fivewsi.predict.geojson.patch_geojson`.

    Example:
        >>> import tempfile, pathlib
        >>> from fivewsi.predict.geojson import patch_geojson, write_geojson
        >>> fc = patch_geojson(np.array([[0, 0], [256, 0]]), 256,
        ...                    {"class A": np.array([0.3, 0.7])}, slide_id="s")
        >>> p = read_patches(write_geojson(pathlib.Path(tempfile.mkdtemp()) / "s.geojson", fc))
        >>> p.coords.tolist(), p.size, p.names, p.scores[:, 0].tolist()
        ([[0, 0], [256, 0]], 256, ['class A'], [0.3, 0.7])
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    info = data.get("fivewsi") or {}
    names = [str(n) for n in info.get("measurements") or []]
    features = data["features"]
    coords = np.zeros((len(features), 2), dtype=np.int64)
    scores = np.full((len(features), len(names)), np.nan)
    size = int(info.get("patch_size_level0") or 0)
    for i, feature in enumerate(features):
        ring = feature["geometry"]["coordinates"][0]
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        coords[i] = (min(xs), min(ys))
        size = size or int(max(xs) - min(xs))
        measurements = feature["properties"].get("measurements") or {}
        for j, name in enumerate(names):
            if name in measurements:
                scores[i, j] = float(measurements[name])
    if size <= 0:
        raise ValueError(f"{path.name}: no patch size")
    return Patches(coords, size, names, scores)


def _own_files(root: Path) -> dict[str, Path]:
    """DIR's servable files: regular files (symlinks too, if they stay inside DIR) with an
    allowed suffix, by their relative POSIX path."""
    files: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root):  # os.walk does not follow symlinked folders
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(folder) / name
            if name.startswith(".") or path.suffix.lower() not in SERVED_SUFFIXES:
                continue
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(root) or not real.is_file():
                log.debug("not served (outside %s): %s", root, path)
                continue
            relative = path.relative_to(root).as_posix()
            if relative not in _NEVER:
                files[relative] = real
    return files


def _manifest(path: Path) -> dict[str, dict[str, str]]:
    """slide id → row of preprocess's ``manifest.csv`` (empty when DIR has none)."""
    if not path.is_file():
        return {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s not readable (%s): slides shown without their images", path, exc)
        return {}
    return {csv_value(r.get("slide_id") or ""): {k: csv_value(v or "") for k, v in r.items()}
            for r in rows if r.get("status") == "done" and r.get("path")}


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
