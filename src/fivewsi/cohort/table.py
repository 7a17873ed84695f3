"""Cohort and class-description tables: which slides there are, their labels and their splits.

``cohort.csv`` has one row per slide:

| column | required | content |
| --- | --- | --- |
| ``slide_id`` | yes | the bag's file name without ``.h5`` |
| ``label`` | one of the two | class name; empty for a slide known only by its report |
| ``report_label`` | one of the two | the slide's fine-grained label text (rendered or raw) |
| ``split`` | no | ``train``, ``val`` or ``test``; empty = not assigned |
| ``patient_id`` | no | the slide's patient (splits, shots and metrics keep it whole) |

``classes.csv`` has one row per class: ``name`` and ``description`` (the text a text model
scores slides against). Other columns are ignored. Cells are whitespace-trimmed and an empty
cell reads as None. Files are written atomically.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "cohort.csv"
    >>> write_cohort([CohortRow("s1", "LUAD", "margins clear", "train")], path)
    >>> read_cohort(path)  # doctest: +NORMALIZE_WHITESPACE
    [CohortRow(slide_id='s1', label='LUAD', report_label='margins clear', split='train',
               patient_id=None)]
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fivewsi.errors import CohortStageError
from fivewsi.utils.atomic import write_text_atomic
from fivewsi.utils.outputs import csv_cell, csv_value

log = logging.getLogger(__name__)

#: The cohort table's columns, in the order fivewsi writes them (``patient_id`` after them when
#: any row has one).
COHORT_COLUMNS = ("slide_id", "label", "report_label", "split")
#: The optional patient column.
PATIENT_COLUMN = "patient_id"
#: The classes table's columns.
CLASS_COLUMNS = ("class", "description")
#: Older spelling of the ``class`` column, still read.
_CLASS_ALIASES = ("name",)
#: Allowed split values (an empty cell means "not assigned").
SPLITS = ("train", "val", "test")
# Spellings accepted for the splits, lower-cased.
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


class CohortError(CohortStageError, ValueError):
    """A cohort or classes table that cannot be read, or that breaks its rules."""


@dataclass
class CohortRow:
    """One slide of a cohort.

    Attributes:
        slide_id: the slide's id (its bag is ``<features>/<slide_id>.h5``).
        label: the class name, or None for a slide known only by its report.
        report_label: the fine-grained label text, or None.
        split: ``"train"``, ``"val"``, ``"test"`` or None (not assigned).
        patient_id: the slide's patient, or None (no ``patient_id`` column, or an empty cell).

    Example:
        >>> CohortRow("s1", None, "poorly differentiated", None).label is None
        True
    """

    slide_id: str
    label: str | None
    report_label: str | None
    split: str | None = None
    patient_id: str | None = None


@dataclass
class ClassDescription:
    """A class: its name (as in the cohort's ``label`` column) and its text description.

    Example:
        >>> ClassDescription("LUAD", "Lung adenocarcinoma").name
        'LUAD'
    """

    name: str
    description: str


def read_cohort(path: str | os.PathLike[str]) -> list[CohortRow]:
    """The rows of a cohort CSV, in file order.

    Raises:
        CohortError: unreadable file, no ``slide_id`` column, neither ``label`` nor
            ``report_label``, an empty or duplicate slide id, or a split value other than
            train / val / test. Messages name the file and the line.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.csv"
        >>> _ = p.write_text("slide_id,label,split\\n a ,LUSC, Test\\nb,,\\n")
        >>> [(r.slide_id, r.label, r.split) for r in read_cohort(p)]
        [('a', 'LUSC', 'test'), ('b', None, None)]
    """
    path = Path(path)
    header, records = _read_csv(path)
    missing = [c for c in ("slide_id",) if c not in header]
    if missing or not ({"label", "report_label"} & set(header)):
        need = "a 'slide_id' column" if missing else "a 'label' or 'report_label' column"
        raise CohortError(
            f"{path}: cohort table needs {need} (columns: slide_id, label, report_label, "
            f"optional split); found {header}"
        )
    rows: list[CohortRow] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, record in records:
        slide_id = _cell(record.get("slide_id"))
        if slide_id is None:
            problems.append(f"line {line}: empty slide_id")
            continue
        if slide_id in seen:
            problems.append(f"line {line}: duplicate slide_id {slide_id!r} (first on line "
                            f"{seen[slide_id]})")
            continue
        seen[slide_id] = line
        split = _cell(record.get("split"))
        if split is not None:
            lowered = split.lower()
            split = _SPLIT_ALIASES.get(lowered, lowered)
            if split not in SPLITS:
                problems.append(
                    f"line {line}: split {record.get('split')!r} of {slide_id!r} is not one of "
                    f"{', '.join(SPLITS)} (or empty)"
                )
                continue
        rows.append(
            CohortRow(slide_id, _cell(record.get("label")), _cell(record.get("report_label")),
                      split, _cell(record.get(PATIENT_COLUMN)))
        )
    _raise_problems(path, problems)
    log.debug("read %d cohort rows from %s", len(rows), path)
    return rows


def write_cohort(rows: Iterable[CohortRow], path: str | os.PathLike[str]) -> None:
    """Write a cohort CSV atomically (None → empty cell); a ``patient_id`` column is added when
    any row has a patient.

    Raises:
        CohortError: an empty or duplicate slide id, or a bad split value.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.csv"
        >>> write_cohort([CohortRow("s1", None, "margins clear")], p)
        >>> p.read_text().splitlines()
        ['slide_id,label,report_label,split', 's1,,margins clear,']
    """
    rows = list(rows)
    problems: list[str] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        if not (row.slide_id or "").strip():
            problems.append(f"row {i + 1}: empty slide_id")
        elif row.slide_id in seen:
            problems.append(f"row {i + 1}: duplicate slide_id {row.slide_id!r}")
        seen.add(row.slide_id)
        if row.split is not None and row.split not in SPLITS:
            problems.append(f"row {i + 1}: split {row.split!r} is not one of {', '.join(SPLITS)}")
    _raise_problems(Path(path), problems, verb="cannot write")
    if any(r.patient_id is not None for r in rows):
        _write_csv(
            path,
            (*COHORT_COLUMNS, PATIENT_COLUMN),
            ([r.slide_id, r.label, r.report_label, r.split, r.patient_id] for r in rows),
        )
        return
    _write_csv(
        path,
        COHORT_COLUMNS,
        ([r.slide_id, r.label, r.report_label, r.split] for r in rows),
    )


def read_classes(path: str | os.PathLike[str]) -> list[ClassDescription]:
    """The classes of a classes CSV (columns ``class``, ``description``), in file order.

    ``name`` is read as ``class`` too.

    Raises:
        CohortError: unreadable file, missing columns, no classes, an empty name or
            description, or a duplicate class name.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "classes.csv"
        >>> _ = p.write_text("class,description\\nLUAD,Lung adenocarcinoma\\n")
        >>> read_classes(p)
        [ClassDescription(name='LUAD', description='Lung adenocarcinoma')]
    """
    path = Path(path)
    header, records = _read_csv(path)
    key = next((c for c in ("class", *_CLASS_ALIASES) if c in header), "class")
    missing = [c for c in (key, "description") if c not in header]
    if missing:
        raise CohortError(
            f"{path}: classes table needs columns {list(CLASS_COLUMNS)}; missing {missing}, "
            f"found {header}"
        )
    classes: list[ClassDescription] = []
    seen: dict[str, int] = {}
    problems: list[str] = []
    for line, record in records:
        name, description = _cell(record.get(key)), _cell(record.get("description"))
        if name is None or description is None:
            problems.append(f"line {line}: empty {'name' if name is None else 'description'}")
            continue
        if name in seen:
            problems.append(f"line {line}: duplicate class {name!r} (first on line {seen[name]})")
            continue
        seen[name] = line
        classes.append(ClassDescription(name, description))
    _raise_problems(path, problems)
    if not classes:
        raise CohortError(f"{path}: classes table has no classes (one row per class needed)")
    return classes


def write_classes(classes: Iterable[ClassDescription], path: str | os.PathLike[str]) -> None:
    """Write a classes CSV atomically.

    Raises:
        CohortError: no classes, an empty name or description, or a duplicate name.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "classes.csv"
        >>> write_classes([ClassDescription("LUSC", "Squamous cell carcinoma")], p)
        >>> read_classes(p)[0].name
        'LUSC'
    """
    classes = list(classes)
    problems: list[str] = []
    names: set[str] = set()
    for i, c in enumerate(classes):
        if not (c.name or "").strip() or not (c.description or "").strip():
            problems.append(f"row {i + 1}: empty name or description")
        elif c.name in names:
            problems.append(f"row {i + 1}: duplicate class {c.name!r}")
        names.add(c.name)
    if not classes:
        problems.append("no classes")
    _raise_problems(Path(path), problems, verb="cannot write")
    _write_csv(path, CLASS_COLUMNS, ([c.name, c.description] for c in classes))


def check_labels(rows: Iterable[CohortRow], classes: Sequence[ClassDescription | str]) -> None:
    """Check that every row's ``label`` (where there is one) names one of ``classes``.

    Raises:
        CohortError: listing each unknown label, how many slides carry it and a few of them.

    Example:
        >>> check_labels([CohortRow("a", "LUAD", None)], ["LUAD", "LUSC"])
        >>> check_labels([CohortRow("a", "luad", None)], ["LUAD", "LUSC"])
        Traceback (most recent call last):
        ...
        fivewsi.cohort.table.CohortError: labels not among the classes ['LUAD', 'LUSC']: \
'luad' (1 slide: a)
    """
    names = [c.name if isinstance(c, ClassDescription) else str(c) for c in classes]
    known = set(names)
    unknown: dict[str, list[str]] = {}
    for row in rows:
        if row.label is not None and row.label not in known:
            unknown.setdefault(row.label, []).append(row.slide_id)
    if unknown:
        parts = []
        for label, ids in sorted(unknown.items()):
            shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
            parts.append(f"{label!r} ({len(ids)} slide{'s' if len(ids) > 1 else ''}: {shown})")
        raise CohortError(f"labels not among the classes {names}: {'; '.join(parts)}")


def check_patient_labels(rows: Sequence[CohortRow]) -> None:
    """Refuse patients whose labelled slides carry different labels (a patient is one unit
    of splits, shots and patient-level metrics).

    Raises:
        CohortError: naming each such patient with its labels.

    Example:
        >>> check_patient_labels([CohortRow("a", "LUAD", None, None, "p1"),
        ...                       CohortRow("b", "LUSC", None, None, "p1")])
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fivewsi.cohort.table.CohortError: 1 patient has ...: 'p1' (a: LUAD, b: LUSC)
    """
    slides: dict[str, list[CohortRow]] = {}
    for row in rows:
        if row.patient_id is not None and row.label is not None:
            slides.setdefault(row.patient_id, []).append(row)
    mixed = {p: members for p, members in slides.items()
             if len({r.label for r in members}) > 1}
    if mixed:
        parts = []
        for patient, members in sorted(mixed.items())[:10]:
            shown = ", ".join(f"{r.slide_id}: {r.label}" for r in members[:6])
            parts.append(f"{patient!r} ({shown}{', ...' if len(members) > 6 else ''})")
        more = f"; ... and {len(mixed) - 10} more" if len(mixed) > 10 else ""
        raise CohortError(
            f"{len(mixed)} patient{'s have' if len(mixed) > 1 else ' has'} slides of different "
            f"labels (a patient must have one label): {'; '.join(parts)}{more}"
        )


# --- helpers -------------------------------------------------------------------------------


def _cell(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The trimmed header and ``(line number, record)`` pairs of a CSV (blank lines skipped)."""
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise CohortError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: cannot read: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        raw_header = next(reader, None)
        if raw_header is None:
            raise CohortError(f"{path}: empty file (a header line is needed)")
        header = [h.strip() for h in raw_header]
        dupes = sorted({h for h in header if h and header.count(h) > 1})
        if dupes:
            raise CohortError(f"{path}: line 1: duplicate columns {dupes}")
        records = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            line = reader.line_num
            if len(values) > len(header):
                raise CohortError(
                    f"{path}: line {line}: {len(values)} cells but the header has "
                    f"{len(header)} columns (quote cells that hold commas)"
                )
            # csv_value: cells guarded against formula injection on writing read back exactly.
            records.append((line, dict(zip(header, map(csv_value, values), strict=False))))
    except csv.Error as exc:
        raise CohortError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    return header, records


def _write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[str | None]]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else csv_cell(v) for v in row])
    write_text_atomic(path, buffer.getvalue())


def _raise_problems(path: Path, problems: list[str], verb: str = "") -> None:
    if not problems:
        return
    shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10 else [])
    lead = f"{path}: {verb + ': ' if verb else ''}{len(problems)} problem(s):\n  "
    raise CohortError(lead + "\n  ".join(shown))
