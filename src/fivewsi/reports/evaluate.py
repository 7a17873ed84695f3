"""Agreement of predicted labels with reference labels, per field, plus confusion matrices.

Rows are plain mappings (``csv.DictReader`` rows). Only ids present in both sides count; a
field is scored where the reference is non-empty. An empty prediction counts as ``unknown``; a
prediction that is not a category of the question counts as a disagreement (``invalid``).

Example:
    >>> from fivewsi.reports.questions import load_question_set
    >>> qs = load_question_set("lung")
    >>> pred = [{"id": "a", "stas": "absent"}, {"id": "b", "stas": "unknown"}]
    >>> ref = [{"id": "a", "stas": "absent"}, {"id": "b", "stas": "present"}]
    >>> m = evaluate_labels(pred, ref, "id", qs)
    >>> m["fields"]["stas"]["agreement"], m["fields"]["stas"]["n"]
    (0.5, 2)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from fivewsi.reports.questions import Question, QuestionSet
from fivewsi.reports.schema import UNKNOWN, ReportsInputError

Row = Mapping[str, str]


def index_rows(rows: Iterable[Row], id_column: str, side: str = "rows") -> dict[str, Row]:
    """Rows by stripped id; ReportsInputError on a missing id column, blank or duplicate ids.

    Example:
        >>> sorted(index_rows([{"id": " x "}, {"id": "y"}], "id"))
        ['x', 'y']
    """
    indexed: dict[str, Row] = {}
    for number, row in enumerate(rows, start=1):
        if id_column not in row:
            raise ReportsInputError(f"{side}: no column {id_column!r}; columns: {sorted(row)}")
        row_id = (row[id_column] or "").strip()
        if not row_id:
            raise ReportsInputError(f"{side}: row {number} has an empty {id_column!r}")
        if row_id in indexed:
            raise ReportsInputError(f"{side}: duplicate {id_column} {row_id!r}")
        indexed[row_id] = row
    return indexed


def evaluate_labels(
    pred: Iterable[Row], ref: Iterable[Row], id_column: str, questions: QuestionSet
) -> dict[str, Any]:
    """Per-field agreement (with n, Cohen's kappa, ref × pred confusion) and its macro average.

    Example:
        >>> from fivewsi.reports.questions import load_question_set
        >>> qs = load_question_set("lung")
        >>> m = evaluate_labels([{"id": "a", "margins": "clear"}],
        ...                     [{"id": "a", "margins": "clear"}], "id", qs)
        >>> m["macro_agreement"], m["fields"]["margins"]["confusion"][0]
        (1.0, [1, 0, 0])
    """
    pred_rows = index_rows(pred, id_column, "predictions")
    ref_rows = index_rows(ref, id_column, "reference")
    common = [i for i in ref_rows if i in pred_rows]
    fields = {
        q.key: _field_metrics(q, [(ref_rows[i], pred_rows[i]) for i in common])
        for q in questions.questions
    }
    scored = [f["agreement"] for f in fields.values() if f["agreement"] is not None]
    return {
        "id_column": id_column,
        "question_set": questions.name,
        "question_set_version": questions.version,
        "n_pred": len(pred_rows),
        "n_ref": len(ref_rows),
        "n_common": len(common),
        "fields": fields,
        "macro_agreement": sum(scored) / len(scored) if scored else None,
    }


def _field_metrics(question: Question, pairs: list[tuple[Row, Row]]) -> dict[str, Any]:
    labels = list(question.categories)
    position = {c: i for i, c in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    n = agree = invalid = 0
    for ref_row, pred_row in pairs:
        ref_cat = (ref_row.get(question.key) or "").strip()
        if not ref_cat:
            continue  # the reference gave no usable answer
        pred_cat = (pred_row.get(question.key) or "").strip() or UNKNOWN
        n += 1
        agree += pred_cat == ref_cat
        if ref_cat in position and pred_cat in position:
            matrix[position[ref_cat]][position[pred_cat]] += 1
        else:
            invalid += 1
    return {
        "n": n,
        "agreement": agree / n if n else None,
        "kappa": cohen_kappa(matrix),
        "invalid": invalid,
        "labels": labels,
        "confusion": matrix,
    }


def cohen_kappa(matrix: list[list[int]]) -> float | None:
    """Cohen's kappa of a square confusion matrix (None when empty or chance agreement is 1).

    Example:
        >>> cohen_kappa([[5, 0], [0, 5]])
        1.0
    """
    total = sum(map(sum, matrix))
    if not total:
        return None
    observed = sum(matrix[i][i] for i in range(len(matrix))) / total
    rows = [sum(r) / total for r in matrix]
    cols = [sum(r[j] for r in matrix) / total for j in range(len(matrix))]
    expected = sum(r * c for r, c in zip(rows, cols, strict=True))
    return None if expected >= 1 else (observed - expected) / (1 - expected)


def print_evaluation(
    metrics: Mapping[str, Any], console: Console | None = None, confusion: bool = False
) -> None:
    """Print the per-field table (and, with ``confusion``, each field's matrix) with rich."""
    from fivewsi.utils.logs import console as default_console

    out = console or default_console
    table = Table(title=f"agreement over {metrics['n_common']} common ids")
    for column in ("field", "n", "agreement", "kappa", "invalid"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for key, f in metrics["fields"].items():
        table.add_row(key, str(f["n"]), _pct(f["agreement"]), _num(f["kappa"]), str(f["invalid"]))
    table.caption = (
        f"macro agreement {_pct(metrics['macro_agreement'])}; "
        f"{metrics['n_pred']} predicted, {metrics['n_ref']} reference rows"
    )
    out.print(table)
    if confusion:
        for key, f in metrics["fields"].items():
            out.print(_confusion_table(key, f))


def _confusion_table(key: str, field: Mapping[str, Any]) -> Table:
    # Numbered columns keep a wide category list readable in an 80-column terminal.
    table = Table(title=f"{key}: reference (rows) × predicted (columns)")
    table.add_column("ref \\ pred", no_wrap=True)
    for number in range(1, len(field["labels"]) + 1):
        table.add_column(str(number), justify="right")
    for number, (label, row) in enumerate(zip(field["labels"], field["confusion"], strict=True)):
        table.add_row(f"{number + 1} {label}", *(str(v) if v else "·" for v in row))
    return table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
