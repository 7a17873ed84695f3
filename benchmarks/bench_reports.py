"""Report → label quality and speed on the shared TCGA lung dev reports.

Two rows per field: the normalizer fed GPT-4's own ``reference_answer`` (how faithfully free
text maps onto categories), and the offline rules backend fed the raw report (when
``fivewsi.reports.rules`` exists), both as agreement with the reference category columns.
Speed is reports per second on one core (the process is pinned to one CPU where the OS allows),
the median of ``--repeat`` passes over all reports.

Usage:
    python benchmarks/bench_reports.py
    python benchmarks/bench_reports.py --json benchmarks/out/reports.json --repeat 5
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fivewsi.reports import FieldAnswer, QuestionSet, load_question_set, normalize_answer
from fivewsi.reports.evaluate import evaluate_labels
from fivewsi.utils.atomic import write_json_atomic

log = logging.getLogger("fivewsi.bench")

DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared/data/reports/tcga_lung_reports_dev.csv"


def pin_one_core() -> str:
    """Pin this process to one CPU where possible; say which."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def read_rows(path: Path) -> list[dict[str, str]]:
    """All rows of the reports CSV."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def timed_labels(
    rows: list[dict[str, str]],
    answer: Callable[[dict[str, str]], dict[str, FieldAnswer]],
    repeat: int,
) -> tuple[list[dict[str, str]], float]:
    """Prediction rows (patient_id + categories) and the median reports/s over ``repeat`` runs."""
    rates, preds = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        preds = [{"patient_id": r["patient_id"], **_categories(answer(r))} for r in rows]
        rates.append(len(rows) / (time.perf_counter() - started))
    return preds, statistics.median(rates)


def _categories(fields: dict[str, FieldAnswer]) -> dict[str, str]:
    return {key: answer.category for key, answer in fields.items()}


def run(path: Path, repeat: int) -> dict[str, Any]:
    """Normalizer and rules-backend agreement per field, macro averages and speeds."""
    questions = load_question_set("lung")
    rows = read_rows(path)
    results: dict[str, Any] = {"csv": str(path), "n_reports": len(rows), "cpu": pin_one_core()}
    preds, rate = timed_labels(
        rows, lambda r: normalize_answer(r["reference_answer"], questions)[0], repeat
    )
    results["normalizer"] = _scored(preds, rows, questions, rate)
    if importlib.util.find_spec("fivewsi.reports.rules") is not None:
        from fivewsi.reports.rules import extract_rules

        preds, rate = timed_labels(rows, lambda r: extract_rules(r["report"], questions), repeat)
        results["rules"] = _scored(preds, rows, questions, rate)
    results["python"] = platform.python_version()
    return results


def _scored(
    preds: list[dict[str, str]], rows: list[dict[str, str]], qs: QuestionSet, rate: float
) -> dict[str, Any]:
    metrics = evaluate_labels(preds, rows, "patient_id", qs)
    return {
        "agreement": {k: f["agreement"] for k, f in metrics["fields"].items()},
        "n": {k: f["n"] for k, f in metrics["fields"].items()},
        "macro_agreement": metrics["macro_agreement"],
        "reports_per_second": rate,
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table: one column per method."""
    methods = [m for m in ("normalizer", "rules") if m in results]
    any_method = results[methods[0]]
    lines = [
        "| field | n | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for key, n in any_method["n"].items():
        cells = [_pct(results[m]["agreement"][key]) for m in methods]
        lines.append(f"| {key} | {n} | " + " | ".join(cells) + " |")
    lines.append(
        "| **macro** | | " + " | ".join(_pct(results[m]["macro_agreement"]) for m in methods) + " |"
    )
    lines.append(
        "| reports/s (1 core) | | "
        + " | ".join(f"{results[m]['reports_per_second']:.0f}" for m in methods)
        + " |"
    )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="reports CSV")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.csv.exists():
        log.error("no reports CSV at %s", args.csv)
        raise SystemExit(2)
    results = run(args.csv, max(1, args.repeat))
    if "rules" not in results:
        log.warning("fivewsi.reports.rules not found: rules backend not benchmarked")
    log.info("%s reports, %s", results["n_reports"], results["cpu"])
    sys.stdout.write(markdown(results) + "\n")
    if args.json is not None:
        write_json_atomic(args.json, results)
        log.info("results written to %s", args.json)


if __name__ == "__main__":
    main()
