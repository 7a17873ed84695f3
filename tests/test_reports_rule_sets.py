"""Every registered rule set tests itself; an unknown question set fails clearly; and a new
organ's rules are one new module plus its question-set YAML, end to end through the backend."""

from __future__ import annotations

import csv
import importlib
import importlib.util
import textwrap
from pathlib import Path

import pytest

from fivewsi.errors import ReportStageError
from fivewsi.reports import extract_reports, load_question_set
from fivewsi.reports.rules import (
    NoRuleSetError,
    RuleSet,
    extract_rules,
    get_rule_set,
    list_rule_sets,
    registry,
)
from fivewsi.reports.schema import UNKNOWN

RULE_SETS = sorted(list_rule_sets())

# Report-like texts every rule set must read without error, whatever its organ.
SAMPLE_REPORTS = [
    "",
    "FINAL DIAGNOSIS: invasive carcinoma, moderately differentiated (G2), pT2 pN0 L0 V1 R0. "
    "Margins: negative. Lymphovascular invasion: not identified.",
    "GROSS DESCRIPTION: 3 cm mass abutting the pleura. DIAGNOSIS: poorly differentiated "
    "carcinoma invading the chest wall; margins involved.",
    "Grade: 2. 1. well. 2. moderately. 3. poorly. Invasion: 2. 1. yes. 2. no.",
    "İ" * 50 + " ; - : ( ) 4R R2 lymph node",
]


def test_the_registry_holds_the_bundled_lung_rules() -> None:
    assert "lung" in RULE_SETS


@pytest.mark.parametrize("name", RULE_SETS)
def test_rule_set_covers_its_question_set(name: str) -> None:
    rule_set = get_rule_set(name)
    assert rule_set.name == name
    questions = load_question_set(name)
    assert questions.name == name
    assert set(questions.keys) == set(rule_set.keys), "every question has a rule, and no more"
    for question in questions.questions:
        rule = rule_set.fields[question.key]
        assert UNKNOWN in rule.categories
        assert set(rule.categories) <= set(question.categories), question.key
    assert rule_set.check(questions) == questions.keys


@pytest.mark.parametrize("name", RULE_SETS)
def test_rule_set_reads_sample_reports(name: str) -> None:
    questions = load_question_set(name)
    texts = SAMPLE_REPORTS + [example.report for example in questions.examples]
    for text in texts:
        answers = extract_rules(text, questions)
        assert list(answers) == list(questions.keys)
        for key, answer in answers.items():
            assert answer.category in get_rule_set(name).fields[key].categories
            assert answer.category in questions.question(key).categories
            assert isinstance(answer.evidence, str)
            if answer.category != UNKNOWN:
                assert answer.evidence.strip(), "a stated category quotes its evidence"


@pytest.mark.parametrize("name", RULE_SETS)
def test_builtin_rule_set_module_is_named_after_its_question_set(name: str) -> None:
    # The registry finds a built-in rule set by its module name: they must agree.
    assert name in registry.builtin_rule_sets()
    module = importlib.import_module(f"{registry.SETS_PACKAGE}.{name}")
    assert any(value is get_rule_set(name) for value in vars(module).values())


def test_unknown_question_set_gives_one_clear_error(tmp_path: Path) -> None:
    questions = load_question_set(_write_toy_yaml(tmp_path, name="kidney"))
    with pytest.raises(NoRuleSetError, match=r"'kidney'.*rule sets: lung") as caught:
        extract_rules("Necrosis present.", questions)
    assert isinstance(caught.value, ReportStageError)
    assert isinstance(caught.value, ValueError)  # the CLI's usage-error path (exit 2)
    with pytest.raises(NoRuleSetError, match=r"kidney"):
        extract_reports(_write_reports(tmp_path), tmp_path / "l.csv", questions=questions)


def test_registering_a_second_rule_set_under_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match=r"already registered"):
        registry.register_rule_set(RuleSet("lung", {}))


# --- a new organ: one module + its YAML -------------------------------------------------------

TOY_MODULE = '''
"""Toy rules: tumour necrosis, present or absent."""

import re

from fivewsi.reports.rules import FieldRule, RuleSet, by_precedence, register_rule_set
from fivewsi.reports.rules.polarity import polar

_NECROSIS = re.compile(r"necrosis")


def _necrosis(doc):
    for m in _NECROSIS.finditer(doc.low):
        yield from polar(doc, m.span(), label=True, yes="present", no="absent")


TOY = register_rule_set(
    RuleSet(
        "toy",
        {"necrosis": FieldRule(("present", "absent", "unknown"),
                               by_precedence(_necrosis, ("present", "absent")))},
    )
)
'''


def _write_toy_yaml(folder: Path, name: str = "toy") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            version: "{name}-1"
            organ: {name}
            instruction: Answer the question.
            questions:
              - key: necrosis
                question: Is there tumour necrosis?
                categories: [present, absent, unknown]
                render:
                  present: necrosis present
                  absent: necrosis absent
            """
        ),
        encoding="utf-8",
    )
    return path


def _write_reports(folder: Path) -> Path:
    path = folder / "reports.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "report"])
        writer.writerow(["p1", "Carcinoma. Necrosis: not identified."])
        writer.writerow(["p2", "Carcinoma with extensive necrosis."])
        writer.writerow(["p3", "Carcinoma, 2 cm."])
    return path


def test_a_new_organ_is_one_module_and_its_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # leave no trace
    module_path = tmp_path / "toy_rules.py"
    module_path.write_text(TOY_MODULE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("toy_rules", module_path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # registers its rule set
    assert "toy" in list_rule_sets()

    out = tmp_path / "labels.csv"
    summary = extract_reports(
        _write_reports(tmp_path), out, questions=_write_toy_yaml(tmp_path), progress=False
    )
    assert summary.ok
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["necrosis"] for r in rows] == ["absent", "present", "unknown"]
    assert rows[0]["necrosis_evidence"] == "Carcinoma. Necrosis: not identified."
    assert rows[1]["fine_grained_label"] == "necrosis present"
    assert [r["backend"] for r in rows] == ["rules"] * 3
