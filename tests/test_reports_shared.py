"""The normalizer on GPT-4's real answers: ≥ 97% agreement with the reference categories."""

from __future__ import annotations

import csv
import sys

import pytest

from conftest import SHARED_REPORTS
from fivewsi.reports import load_question_set, normalize_answer

REPORTS_CSV = SHARED_REPORTS

pytestmark = pytest.mark.shared


def dev_rows() -> list[dict[str, str]]:
    if not REPORTS_CSV.exists():
        pytest.skip("shared TCGA lung reports not available")
    csv.field_size_limit(sys.maxsize)
    with open(REPORTS_CSV, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_normalizer_agrees_with_reference_on_every_field() -> None:
    questions = load_question_set("lung")
    rows = dev_rows()
    agree = dict.fromkeys(questions.keys, 0)
    total = dict.fromkeys(questions.keys, 0)
    for row in rows:
        fields, _ = normalize_answer(row["reference_answer"], questions)
        for key in questions.keys:
            if row[key]:
                total[key] += 1
                agree[key] += fields[key].category == row[key]
    rates = {key: agree[key] / total[key] for key in questions.keys}
    assert min(total.values()) > 400
    assert all(rate >= 0.97 for rate in rates.values()), rates


def test_six_part_answers_parse_and_others_fail() -> None:
    questions = load_question_set("lung")
    for row in dev_rows():
        _, status = normalize_answer(row["reference_answer"], questions)
        assert (status == "failed") == (not row["differentiation"]), row["patient_id"]
