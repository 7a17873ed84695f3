"""``fivewsi cohort merge``: the slide table + LABELS.csv → the training cohort CSV.

The user keeps a slide table (``slide_id``, ``label`` — may be empty —, optional ``split`` and
any other columns, e.g. ``patient_id``) and gets LABELS.csv from ``fivewsi reports extract``.
This joins the two into ``cohort.csv`` (``slide_id, label, report_label, split``, and
``patient_id`` when the slide table has one), which
``fivewsi train`` and ``fivewsi evaluate`` read.

Join: each slide's key (by default the slide table's column named like LABELS.csv's id column,
e.g. ``patient_id``, so every slide of a patient gets the patient's report; else ``slide_id``)
is looked up among LABELS.csv's ids; the slide's ``report_label`` is that report's
``fine_grained_label``.

- A slide without a report gets an empty ``report_label`` (it can still train on its label).
- A report whose ``status`` is ``failed`` gives an empty ``report_label``, with a warning.
- Reports matching no slide are counted and reported (a typo in ids shows up here).
- No slide matching any report is an error: the id columns are almost surely wrong.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "slides.csv").write_text("slide_id,label,split\\ns1,LUAD,train\\ns2,,test\\n")
    >>> _ = (folder / "LABELS.csv").write_text(
    ...     "slide_id,fine_grained_label,status\\ns1,poorly differentiated,ok\\n")
    >>> summary = merge_cohort(folder / "slides.csv", folder / "LABELS.csv", folder / "c.csv")
    >>> (folder / "c.csv").read_text().splitlines()
    ['slide_id,label,report_label,split', 's1,LUAD,poorly differentiated,train', 's2,,,test']
    >>> summary.n_without_report
    1
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fivewsi.utils.outputs import check_output_file, csv_value

log = logging.getLogger(__name__)

#: Spellings accepted for the splits (lower-cased), as :func:`fivewsi.cohort.table.read_cohort`.
_SPLITS = {"train": "train", "val": "val", "test": "test", "validation": "val", "valid": "val",
           "dev": "val"}
_FAILED = "failed"
_NEEDS_REVIEW = "needs_review"


@dataclass
class MergeSummary:
    """What :func:`merge_cohort` wrote and what did not match.

    Attributes:
        out: the cohort CSV written.
        n_slides: rows of the cohort (one per slide).
        n_with_report: slides that got a non-empty ``report_label``.
        n_without_report: slides whose key is not among the reports' ids.
        n_failed_reports: slides whose report has status ``failed`` (empty ``report_label``).
        n_needs_review: slides whose report has status ``needs_review`` (label kept).
        unmatched_reports: report ids that match no slide.
        id_column, slide_key: the LABELS.csv and slide-table columns that were joined.
    """

    out: Path
    n_slides: int
    n_with_report: int
    n_without_report: int
    n_failed_reports: int
    n_needs_review: int
    unmatched_reports: list[str] = field(default_factory=list)
    id_column: str = ""
    slide_key: str = ""

    def summary(self) -> str:
        """One line for logs and the terminal."""
        parts = [
            f"{self.n_slides} slides → {self.out}: {self.n_with_report} with a report label",
            f"{self.n_without_report} without a report",
        ]
        if self.n_failed_reports:
            parts.append(f"{self.n_failed_reports} with a failed report")
        if self.n_needs_review:
            parts.append(f"{self.n_needs_review} with a report needing review")
        parts.append(f"{len(self.unmatched_reports)} reports without a slide")
        return ", ".join(parts)


def merge_cohort(
    slides_csv: str | os.PathLike[str],
    labels_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    id_column: str | None = None,
    slide_key: str | None = None,
) -> MergeSummary:
    """Join the slide table with LABELS.csv into the cohort CSV ``out`` (written atomically).

    Args:
        slides_csv: CSV with ``slide_id`` and optionally ``label``, ``split`` and a key column.
        labels_csv: LABELS.csv of ``fivewsi reports extract`` / ``normalize``
            (id column, ``fine_grained_label``, optional ``status``).
        out: the cohort CSV to write.
        id_column: LABELS.csv's id column; None takes its first column (where ``fivewsi
            reports`` writes the id).
        slide_key: the slide-table column holding the report id; None uses ``id_column`` when
            the slide table has it, else ``slide_id``.

    Raises:
        fivewsi.cohort.table.CohortError: missing columns, empty or duplicate ids, bad split
            values, or no slide matching any report.
        fivewsi.utils.outputs.OutputError: ``out`` is a folder, an input, or not writable
            (checked before anything is read).
        FileNotFoundError: an input is missing.

    Example:
        >>> merge_cohort  # doctest: +ELLIPSIS
        <function merge_cohort at ...>
    """
    from fivewsi.cohort.table import CohortError, CohortRow, write_cohort

    slides_path, labels_path = Path(slides_csv), Path(labels_csv)
    check_output_file(out, inputs=[slides_path, labels_path])  # before any work
    slide_header, slides = _read(slides_path)
    label_header, reports = _read(labels_path)
    if "slide_id" not in slide_header:
        raise CohortError(f"{slides_path}: the slide table needs a 'slide_id' column; found "
                          f"{slide_header}")
    if id_column is None:
        if not label_header:
            raise CohortError(f"{labels_path}: empty file (a header line is needed)")
        id_column = label_header[0]
    missing = [c for c in (id_column, "fine_grained_label") if c not in label_header]
    if missing:
        raise CohortError(f"{labels_path}: no column {', '.join(map(repr, missing))}; found "
                          f"{label_header}")
    if slide_key is None:
        slide_key = id_column if id_column in slide_header else "slide_id"
    elif slide_key not in slide_header:
        raise CohortError(f"{slides_path}: no column {slide_key!r} to join on; found "
                          f"{slide_header}")
    if "report_label" in slide_header:
        log.info("%s: its report_label column is replaced by the labels of %s", slides_path,
                 labels_path)

    by_id = _reports_by_id(reports, id_column, labels_path)
    rows, problems = [], []
    seen: dict[str, int] = {}
    used: set[str] = set()
    failed: list[str] = []
    review: list[str] = []
    without: list[str] = []
    for line, record in slides:
        slide_id = record.get("slide_id", "")
        if not slide_id:
            problems.append(f"line {line}: empty slide_id")
            continue
        if slide_id in seen:
            problems.append(f"line {line}: duplicate slide_id {slide_id!r} (first on line "
                            f"{seen[slide_id]})")
            continue
        seen[slide_id] = line
        split = record.get("split", "")
        if split and split.lower() not in _SPLITS:
            problems.append(f"line {line}: split {split!r} of {slide_id!r} is not train, val or "
                            "test (or empty)")
            continue
        key = record.get(slide_key, "")
        report = by_id.get(key) if key else None
        report_label = None
        if report is None:
            without.append(slide_id)
        else:
            used.add(key)
            status = report.get("status", "")
            if status == _FAILED:
                failed.append(slide_id)
            else:
                if status == _NEEDS_REVIEW:
                    review.append(slide_id)
                report_label = report.get("fine_grained_label") or None
        rows.append(CohortRow(slide_id, record.get("label") or None, report_label,
                              _SPLITS[split.lower()] if split else None,
                              record.get("patient_id") or None))
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"] if len(problems) > 10
                                 else [])
        raise CohortError(f"{slides_path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown))
    if rows and by_id and not used:
        raise CohortError(
            f"no slide of {slides_path} matches a report of {labels_path}: slide column "
            f"{slide_key!r} (e.g. {rows[0].slide_id!r} → {slides[0][1].get(slide_key)!r}) vs. "
            f"report ids in {id_column!r} (e.g. {next(iter(by_id))!r}); pass the columns to "
            "join with --id-column / --slide-key"
        )
    write_cohort(rows, out)
    unmatched = [i for i in by_id if i not in used]
    summary = MergeSummary(
        out=Path(out),
        n_slides=len(rows),
        n_with_report=sum(r.report_label is not None for r in rows),
        n_without_report=len(without),
        n_failed_reports=len(failed),
        n_needs_review=len(review),
        unmatched_reports=unmatched,
        id_column=id_column,
        slide_key=slide_key,
    )
    _log_problems(summary, without, failed, review)
    return summary


def _read(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Trimmed header and ``(line, record)`` pairs with trimmed cells; blank lines skipped."""
    from fivewsi.cohort.table import CohortError

    _allow_big_fields()
    try:
        # utf-8-sig: spreadsheets often save a byte-order mark before the header.
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"{path}: cannot read: {exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        records = []
        for values in reader:
            if any(v.strip() for v in values):
                # csv_value: ids fivewsi guarded against formula injection ('=x) read as =x.
                cells = dict(zip(header, (csv_value(v).strip() for v in values), strict=False))
                records.append((reader.line_num, cells))
    except csv.Error as exc:
        raise CohortError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    return header, records


def _allow_big_fields() -> None:
    # A LABELS.csv carries evidence quotes: lift csv's 128 kB field limit as `reports` does.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _reports_by_id(
    reports: list[tuple[int, dict[str, str]]], id_column: str, path: Path
) -> dict[str, dict[str, str]]:
    from fivewsi.cohort.table import CohortError

    by_id: dict[str, dict[str, str]] = {}
    blank = [line for line, r in reports if not r.get(id_column)]
    if blank:
        raise CohortError(f"{path}: empty {id_column!r} on line(s) {blank[:10]}")
    counts = Counter(r[id_column] for _, r in reports)
    dupes = sorted(i for i, n in counts.items() if n > 1)
    if dupes:
        raise CohortError(f"{path}: duplicate {id_column} values ({len(dupes)}): "
                          f"{', '.join(dupes[:10])}")
    for _, record in reports:
        by_id[record[id_column]] = record
    return by_id


def _log_problems(
    summary: MergeSummary, without: list[str], failed: list[str], review: list[str]
) -> None:
    def few(ids: list[str]) -> str:
        return ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")

    if without:
        log.info("%d slides have no report (empty report_label): %s", len(without), few(without))
    if failed:
        log.warning("%d slides have a failed report (empty report_label): %s", len(failed),
                    few(failed))
    if review:
        log.warning("%d slides have a report that needs review (label kept): %s", len(review),
                    few(review))
    if summary.unmatched_reports:
        log.warning("%d reports match no slide (by %s = %s): %s",
                    len(summary.unmatched_reports), summary.slide_key, summary.id_column,
                    few(summary.unmatched_reports))
    log.info("%s", summary.summary())
