"""CSV in, LABELS.csv out: run a backend over every report, or normalize given answers.

LABELS.csv has one row per input row, in input order: the id, one category column per question
key, one ``<key>_evidence`` column per key, ``fine_grained_label``, ``backend``, ``status``
(``ok`` / ``needs_review`` / ``failed``) and ``error``. A report that fails (empty text, an
exception, an unreadable answer) keeps its row, with every field ``unknown``, and the batch
goes on. The file is written atomically.

Example:
    >>> import csv, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with open(folder / "answers.csv", "w", newline="") as f:
    ...     w = csv.writer(f)
    ...     _ = w.writerow(["patient_id", "answer"])
    ...     _ = w.writerow(["p1", "Poorly; Unknown; V1; PL0; Unknown; R0"])
    >>> summary = normalize_file(folder / "answers.csv", folder / "labels.csv",
    ...                          answer_column="answer")
    >>> summary.n_ok, next(csv.DictReader(open(folder / "labels.csv")))["fine_grained_label"]
    (1, 'poorly differentiated; vascular invasion present; pleural invasion absent; margins clear')
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fivewsi.reports.evaluate import evaluate_labels
from fivewsi.reports.normalize import normalize_answer
from fivewsi.reports.questions import QuestionSet, load_question_set
from fivewsi.reports.render import render_label
from fivewsi.reports.schema import (
    STATUS_FAILED,
    STATUS_NEEDS_REVIEW,
    STATUS_OK,
    UNKNOWN,
    FieldAnswer,
    ReportsInputError,
    unknown_answers,
    worst_status,
)
from fivewsi.utils.atomic import atomic_path, write_json_atomic
from fivewsi.utils.logs import make_progress
from fivewsi.utils.outputs import check_output_file, csv_cell, csv_value

if TYPE_CHECKING:
    from fivewsi.reports.llm import LLMConfig

log = logging.getLogger(__name__)

BACKENDS = ("rules", "llm")


@dataclass(frozen=True)
class LabelRow:
    """One LABELS.csv row before it is written.

    Example:
        >>> LabelRow("p1", {"stas": FieldAnswer("absent")}, "rules", "ok").status
        'ok'
    """

    report_id: str
    fields: dict[str, FieldAnswer]
    backend: str
    status: str
    error: str = ""


@dataclass(frozen=True)
class ExtractSummary:
    """What a run wrote and how it went.

    Example:
        >>> ExtractSummary(Path("l.csv"), "rules", 3, 3, 0, 0, 0.1).ok
        True
    """

    out: Path
    backend: str
    n_reports: int
    n_ok: int
    n_needs_review: int
    n_failed: int
    seconds: float
    #: Backend statistics (LLM requests, retries, tokens, cache hits), '' for others.
    stats: str = ""

    @property
    def ok(self) -> bool:
        """True when every report got status ``ok``."""
        return self.n_failed == 0 and self.n_needs_review == 0

    def summary(self) -> str:
        """One line for logs and the terminal."""
        rate = self.n_reports / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"{self.n_reports} reports → {self.out}: {self.n_ok} ok, {self.n_needs_review} "
            f"need review, {self.n_failed} failed ({self.seconds:.1f} s, {rate:.1f} reports/s)"
        )
        return f"{line}; {self.stats}" if self.stats else line


# --- reading -----------------------------------------------------------------------------------


def read_csv_rows(path: str | Path, required: Iterable[str]) -> list[dict[str, str]]:
    """All rows of a CSV (big text fields allowed), checking that ``required`` columns exist.

    Raises:
        FileNotFoundError: no such file.
        ReportsInputError: a required column is missing (the message lists the available ones).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = p.write_text("id,text\\n1,hello\\n")
        >>> read_csv_rows(p, ["id"])
        [{'id': '1', 'text': 'hello'}]
    """
    _allow_big_fields()
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            missing = [c for c in required if c not in columns]
            if missing:
                raise ReportsInputError(
                    f"{path}: no column {', '.join(map(repr, missing))}; available columns: "
                    f"{', '.join(columns) or '(none)'}"
                )
            # csv_value: cells that fivewsi guarded against formula injection read back exactly.
            return [
                {k: csv_value(v or "") for k, v in row.items() if k is not None} for row in reader
            ]
    except UnicodeDecodeError as exc:
        raise ReportsInputError(
            f"{path}: not UTF-8 text (byte {exc.start} of a line is {exc.object[exc.start]:#04x});"
            " save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ReportsInputError(f"{path}: malformed CSV: {exc}") from None


def _require_rows(rows: list[dict[str, str]], path: Path) -> None:
    if not rows:
        raise ReportsInputError(f"{path}: no rows below the header; nothing to do")


def _allow_big_fields() -> None:
    # Whole reports (and addenda) live in one field: lift csv's 128 kB default limit.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def _ids(rows: list[dict[str, str]], id_column: str, path: Path) -> list[str]:
    ids = [row[id_column].strip() for row in rows]
    blank = [i + 2 for i, row_id in enumerate(ids) if not row_id]  # +2: header, 1-based
    if blank:
        raise ReportsInputError(f"{path}: empty {id_column!r} on line(s) {blank[:10]}")
    dupes = sorted(i for i, count in Counter(ids).items() if count > 1)
    if dupes:
        raise ReportsInputError(
            f"{path}: duplicate {id_column} values ({len(dupes)}): {', '.join(dupes[:10])}"
        )
    return ids


# --- backends --------------------------------------------------------------------------------


def extract_reports(
    reports_csv: str | Path,
    out_csv: str | Path,
    *,
    backend: str = "rules",
    id_column: str = "patient_id",
    text_column: str = "report",
    questions: str | Path | QuestionSet = "lung",
    llm_config: LLMConfig | None = None,
    progress: bool = True,
) -> ExtractSummary:
    """Answer every report of ``reports_csv`` with ``backend`` and write LABELS.csv.

    Raises:
        ReportsInputError: missing columns, blank or duplicate ids.
        fivewsi.utils.outputs.OutputError: ``out_csv`` is a folder, an input (or the LLM
            cache), or not writable; checked before any report is read or asked.
        ValueError: unknown backend, a question set the backend cannot answer (for the rules
            backend: no rule set registered under its name, or keys it does not cover), no
            LLM config.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "r.csv").write_text("patient_id,report\\np1,\\n")
        >>> extract_reports(folder / "r.csv", folder / "l.csv", progress=False).n_failed
        1
    """
    if backend not in BACKENDS:
        raise ReportsInputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    cache = llm_config.cache if backend == "llm" and llm_config is not None else None
    # Before any work: a read-only or misnamed output fails now, not after every request.
    check_output_file(out_csv, inputs=[reports_csv, *([cache] if cache else [])])
    started = time.perf_counter()
    qs = load_question_set(questions)
    path = Path(reports_csv)
    rows = read_csv_rows(path, [id_column, text_column])
    _require_rows(rows, path)
    reports = list(zip(_ids(rows, id_column, path), (r[text_column] for r in rows), strict=True))
    if backend == "rules":
        labels, stats = _run_rules(reports, qs, progress), ""
    else:
        if llm_config is None:
            raise ReportsInputError("the llm backend needs llm_config (at least a model)")
        labels, stats = _run_llm(reports, qs, llm_config, progress)
    return _finish(labels, out_csv, id_column, qs, started, stats)


def _run_rules(reports: list[tuple[str, str]], qs: QuestionSet, progress: bool) -> list[LabelRow]:
    from fivewsi.reports.rules import get_rule_set

    rule_set = get_rule_set(qs.name)
    keys = rule_set.check(qs)  # a set the rules cannot answer fails here, once, not per report
    return _map_reports(
        reports, qs, "rules", lambda text: rule_set.answer_text(text, keys), progress
    )


def _map_reports(
    reports: list[tuple[str, str]],
    qs: QuestionSet,
    backend: str,
    answer: Callable[[str], dict[str, FieldAnswer]],
    progress: bool,
) -> list[LabelRow]:
    labels = []
    with make_progress(progress) as bar:
        task = bar.add_task(backend, total=len(reports), rate="")
        started = time.perf_counter()
        for done, (report_id, text) in enumerate(reports, start=1):
            labels.append(_answer_one(report_id, text, qs, backend, answer))
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:.0f} reports/s")
    return labels


def _answer_one(
    report_id: str,
    text: str,
    qs: QuestionSet,
    backend: str,
    answer: Callable[[str], dict[str, FieldAnswer]],
) -> LabelRow:
    if not text.strip():
        return _failed(report_id, qs, backend, "empty report text")
    try:
        fields = answer(text)
    except Exception as exc:  # one bad report must not stop the batch
        log.warning("report %s failed: %s: %s", report_id, type(exc).__name__, exc)
        return _failed(report_id, qs, backend, f"{type(exc).__name__}: {exc}")
    return LabelRow(report_id, fields, backend, STATUS_OK)


def _failed(report_id: str, qs: QuestionSet, backend: str, error: str) -> LabelRow:
    return LabelRow(report_id, unknown_answers(qs.keys), backend, STATUS_FAILED, error)


def _run_llm(
    reports: list[tuple[str, str]], qs: QuestionSet, config: LLMConfig, progress: bool
) -> tuple[list[LabelRow], str]:
    from fivewsi.reports.llm import extract_llm

    backend = f"llm:{config.model}"
    # Empty reports are never sent: they fail here, without a request.
    to_ask = [(i, t) for i, t in reports if t.strip()]
    results, stats = extract_llm(to_ask, qs, config, progress=progress)
    by_id = {r.report_id: r for r in results}
    labels = []
    for report_id, _ in reports:
        result = by_id.get(report_id)
        if result is None:
            labels.append(_failed(report_id, qs, backend, "empty report text"))
        else:
            labels.append(LabelRow(report_id, result.fields, backend, result.status, result.error))
    return labels, stats.summary()


# --- normalizing given answers ------------------------------------------------------------------


def normalize_file(
    answers_csv: str | Path,
    out_csv: str | Path,
    *,
    answer_column: str,
    id_column: str = "patient_id",
    questions: str | Path | QuestionSet = "lung",
) -> ExtractSummary:
    """Normalize one answer line per row (e.g. GPT-4's) into LABELS.csv (backend ``normalize``).

    Example:
        >>> normalize_file  # doctest: +ELLIPSIS
        <function normalize_file at ...>
    """
    check_output_file(out_csv, inputs=[answers_csv])
    started = time.perf_counter()
    qs = load_question_set(questions)
    path = Path(answers_csv)
    rows = read_csv_rows(path, [id_column, answer_column])
    _require_rows(rows, path)
    labels = []
    for report_id, row in zip(_ids(rows, id_column, path), rows, strict=True):
        line = row[answer_column]
        if not line.strip():
            labels.append(_failed(report_id, qs, "normalize", "empty answer"))
            continue
        fields, status = normalize_answer(line, qs)
        error = (
            f"answer does not split into {len(qs.keys)} parts" if status == STATUS_FAILED else ""
        )
        labels.append(LabelRow(report_id, fields, "normalize", status, error))
    return _finish(labels, out_csv, id_column, qs, started, "")


# --- writing -----------------------------------------------------------------------------------


def label_columns(id_column: str, qs: QuestionSet) -> list[str]:
    """The LABELS.csv header.

    Example:
        >>> label_columns("id", load_question_set("lung"))[:3]
        ['id', 'differentiation', 'stas']
    """
    keys = list(qs.keys)
    return [
        id_column,
        *keys,
        *(f"{k}_evidence" for k in keys),
        "fine_grained_label",
        "backend",
        "status",
        "error",
    ]


def _checked(row: LabelRow, qs: QuestionSet) -> tuple[dict[str, FieldAnswer], str, str]:
    """Fields with every key present and valid; a bad category becomes unknown + needs_review."""
    fields, problems = {}, []
    for q in qs.questions:
        answer = row.fields.get(q.key) or FieldAnswer(UNKNOWN)
        if answer.category not in q.categories:
            problems.append(f"{q.key}: invalid category {answer.category!r}")
            answer = FieldAnswer(UNKNOWN, answer.evidence)
        fields[q.key] = answer
    if not problems:
        return fields, row.status, row.error
    status = worst_status([row.status, STATUS_NEEDS_REVIEW])
    return fields, status, "; ".join(filter(None, [row.error, *problems]))


def _csv_row(row: LabelRow, id_column: str, qs: QuestionSet) -> dict[str, str]:
    fields, status, error = _checked(row, qs)
    out = {id_column: row.report_id}
    out.update({k: a.category for k, a in fields.items()})
    out.update({f"{k}_evidence": _one_line(a.evidence) for k, a in fields.items()})
    out["fine_grained_label"] = render_label({k: a.category for k, a in fields.items()}, qs)
    out.update(backend=row.backend, status=status, error=_one_line(error))
    return out


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


def write_labels(
    labels: list[LabelRow], out_csv: str | Path, id_column: str, qs: QuestionSet
) -> list[dict[str, str]]:
    """Write LABELS.csv atomically; return the rows as written."""
    rows = [_csv_row(row, id_column, qs) for row in labels]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=label_columns(id_column, qs))
    writer.writeheader()
    # Text cells (ids, evidence, errors) never start a spreadsheet formula.
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    with atomic_path(out_csv) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    return rows


def _finish(
    labels: list[LabelRow],
    out_csv: str | Path,
    id_column: str,
    qs: QuestionSet,
    started: float,
    stats: str,
) -> ExtractSummary:
    rows = write_labels(labels, out_csv, id_column, qs)
    counts = {s: sum(r["status"] == s for r in rows) for s in (STATUS_OK, STATUS_NEEDS_REVIEW)}
    summary = ExtractSummary(
        out=Path(out_csv),
        backend=labels[0].backend if labels else "",
        n_reports=len(rows),
        n_ok=counts[STATUS_OK],
        n_needs_review=counts[STATUS_NEEDS_REVIEW],
        n_failed=sum(r["status"] == STATUS_FAILED for r in rows),
        seconds=time.perf_counter() - started,
        stats=stats,
    )
    log.debug("%s", summary.summary())  # the CLI prints it; library callers get the object
    return summary


# --- evaluating --------------------------------------------------------------------------------


def evaluate_files(
    pred_csv: str | Path,
    ref_csv: str | Path,
    *,
    id_column: str = "patient_id",
    questions: str | Path | QuestionSet = "lung",
    json_out: str | Path | None = None,
) -> dict[str, Any]:
    """Agreement of a LABELS.csv with a reference CSV (same id column, category columns).

    Reference columns missing for some keys are reported and skipped (n = 0).

    Example:
        >>> evaluate_files  # doctest: +ELLIPSIS
        <function evaluate_files at ...>
    """
    if json_out is not None:
        check_output_file(json_out, inputs=[pred_csv, ref_csv], what="--json")
    qs = load_question_set(questions)
    pred = read_csv_rows(pred_csv, [id_column])
    ref = read_csv_rows(ref_csv, [id_column])
    _warn_missing_keys(pred, qs, pred_csv)
    _warn_missing_keys(ref, qs, ref_csv)
    metrics = evaluate_labels(pred, ref, id_column, qs)
    if metrics["n_common"] == 0:
        raise ReportsInputError(
            f"no id in column {id_column!r} is in both {pred_csv} ({metrics['n_pred']} ids) and "
            f"{ref_csv} ({metrics['n_ref']} ids); nothing to compare"
        )
    metrics.update(pred_csv=str(pred_csv), ref_csv=str(ref_csv))
    if json_out is not None:
        write_json_atomic(json_out, metrics)
    return metrics


def _warn_missing_keys(rows: list[Mapping[str, str]], qs: QuestionSet, path: str | Path) -> None:
    if not rows:
        return
    missing = [k for k in qs.keys if k not in rows[0]]
    if len(missing) == len(qs.keys):
        raise ReportsInputError(
            f"{path}: none of the field columns {list(qs.keys)}; columns: {list(rows[0])}"
        )
    if missing:
        log.warning("%s: no column for %s; those fields are not scored", path, missing)
