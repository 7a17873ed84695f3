"""Per-slide resolution from a table (``fivewsi preprocess --slide-mpp-csv``).

Cohorts converted from other formats often lose the pixel size. A CSV with a column naming the
slide — ``slide_id`` (the file name without extension; ``slide`` is accepted too) and/or
``path`` — and a column ``mpp`` (level-0 microns per pixel) gives it back, slide by slide. The
table's value is used only when the slide's own metadata lacks it, like ``--slide-mpp``, and wins
over ``--slide-mpp`` for the slides it lists. A relative ``path`` is relative to the CSV's folder.

Example:
    >>> import tempfile, pathlib
    >>> csv = pathlib.Path(tempfile.mkdtemp()) / "mpp.csv"
    >>> _ = csv.write_text("slide_id,mpp\\nA-1,0.25\\nB-2,0.5\\n")
    >>> table = read_slide_mpp_table(csv)
    >>> table.lookup("/data/A-1.svs"), table.lookup("/data/C.svs")
    (0.25, None)
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from fivewsi.errors import FeatureStageError

ID_COLUMNS = ("slide_id", "slide")
PATH_COLUMN = "path"
MPP_COLUMN = "mpp"


class SlideMppTableError(FeatureStageError):
    """The ``--slide-mpp-csv`` table is missing, malformed or contradicts itself."""


@dataclass(frozen=True)
class SlideMppTable:
    """Level-0 mpp by slide id and by resolved path."""

    source: Path
    by_id: dict[str, float] = field(default_factory=dict)
    by_path: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_id) + len(self.by_path)

    def lookup(self, path: str | os.PathLike[str]) -> float | None:
        """The mpp the table gives the slide at ``path`` (its path first, then its id)."""
        from fivewsi.slides.readers import slide_id_from_path

        resolved = str(Path(path).resolve())
        if resolved in self.by_path:
            return self.by_path[resolved]
        return self.by_id.get(slide_id_from_path(path))


def _mpp(text: str | None, where: str) -> float:
    try:
        value = float((text or "").strip())
    except ValueError:
        raise SlideMppTableError(f"{where}: mpp {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0 or value > 1000:
        raise SlideMppTableError(f"{where}: mpp {text!r} must be a positive number of µm/px")
    return value


def _put(table: dict[str, float], key: str, value: float, where: str) -> None:
    if key in table and table[key] != value:
        raise SlideMppTableError(
            f"{where}: {key!r} is given two mpps ({table[key]:g} and {value:g})"
        )
    table[key] = value


def read_slide_mpp_table(path: str | os.PathLike[str]) -> SlideMppTable:
    """Read and check the table; :class:`SlideMppTableError` saying what is wrong otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SlideMppTableError(f"--slide-mpp-csv {path}: cannot read it ({reason})") from None
    reader = csv.DictReader(text.splitlines())
    columns = {(c or "").strip().lower(): c for c in reader.fieldnames or []}
    id_column = next((columns[c] for c in ID_COLUMNS if c in columns), None)
    path_column = columns.get(PATH_COLUMN)
    mpp_column = columns.get(MPP_COLUMN)
    if mpp_column is None or (id_column is None and path_column is None):
        raise SlideMppTableError(
            f"--slide-mpp-csv {path}: needs a column 'mpp' and a column 'slide_id' or 'path' "
            f"(has {', '.join(repr(c) for c in columns) or 'no header'})"
        )
    table = SlideMppTable(path)
    for line, row in enumerate(reader, start=2):
        where = f"--slide-mpp-csv {path}, line {line}"
        if None in row:
            raise SlideMppTableError(f"{where}: more cells than columns")
        slide_id = (row.get(id_column) or "").strip() if id_column else ""
        slide_path = (row.get(path_column) or "").strip() if path_column else ""
        if not slide_id and not slide_path:
            if not any((v or "").strip() for v in row.values()):
                continue  # a blank line
            raise SlideMppTableError(f"{where}: names no slide")
        value = _mpp(row.get(mpp_column), where)
        if slide_id:
            _put(table.by_id, slide_id, value, where)
        if slide_path:
            resolved = str((path.parent / Path(slide_path).expanduser()).resolve())
            _put(table.by_path, resolved, value, where)
    if not len(table):
        raise SlideMppTableError(f"--slide-mpp-csv {path}: lists no slide")
    return table
