"""Question sets, answer splitting and normalization, label rendering, evaluation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.reports import (
    FieldAnswer,
    QuestionSetError,
    evaluate_labels,
    list_question_sets,
    load_question_set,
    normalize_answer,
    normalize_field,
    render_label,
    split_answer,
)
from fivewsi.reports.evaluate import cohen_kappa
from fivewsi.reports.normalize import classify_field
from fivewsi.reports.pipeline import ReportsInputError, normalize_file, read_csv_rows

LUNG = load_question_set("lung")
KEYS = LUNG.keys

KIDNEY_YAML = """
name: kidney
version: kidney-1
organ: kidney
instruction: Answer briefly; 'Unknown' when the report does not tell.
examples:
  - report: Clear cell RCC, ISUP grade 3, renal vein invasion present.
    answer: High grade; Renal vein invasion present
questions:
  - key: nuclear_grade
    question: What is the ISUP / Fuhrman nuclear grade?
    categories: [low, high, unknown]
    render: {low: low nuclear grade, high: high nuclear grade}
    synonyms: {low: [grade 1, grade 2, isup 1, isup 2], high: [grade 3, grade 4, isup 3, isup 4]}
  - key: renal_vein_invasion
    question: Is there renal vein invasion?
    categories: [present, absent, unknown]
    render: {present: renal vein invasion present, absent: renal vein invasion absent}
"""


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "set.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# --- question sets ------------------------------------------------------------------------------


def test_lung_set_is_bundled_with_fixed_keys_and_categories() -> None:
    assert "lung" in list_question_sets()
    assert LUNG.keys == KEYS
    assert LUNG.question("differentiation").categories == (
        "well", "well_to_moderate", "moderate", "moderate_to_poor", "poor",
        "undifferentiated", "mixed", "unknown",
    )  # fmt: skip
    for key in KEYS[1:5]:
        assert LUNG.question(key).categories == ("present", "absent", "unknown")
    assert LUNG.question("margins").categories == ("clear", "involved", "unknown")
    assert len(LUNG.examples) == 3 and LUNG.version and LUNG.instruction


def test_every_example_answer_normalizes_cleanly() -> None:
    for example in LUNG.examples:
        _, status = normalize_answer(example.answer, LUNG)
        assert status == "ok", example.answer


def test_load_is_cached_and_fingerprint_stable() -> None:
    assert load_question_set("lung") is LUNG
    assert load_question_set(LUNG) is LUNG
    assert LUNG.fingerprint() == load_question_set("lung").fingerprint()


def test_unknown_name_lists_bundled_sets() -> None:
    with pytest.raises(QuestionSetError, match="lung"):
        load_question_set("no-such-organ")


def test_question_lookup_names_keys() -> None:
    with pytest.raises(KeyError, match="margins"):
        LUNG.question("nope")


def test_custom_set_for_another_organ(tmp_path: Path) -> None:
    kidney = load_question_set(str(write_yaml(tmp_path, KIDNEY_YAML)))
    assert kidney.organ == "kidney" and kidney.keys == ("nuclear_grade", "renal_vein_invasion")
    fields, status = normalize_answer("ISUP grade 3; No renal vein invasion", kidney)
    assert status == "ok"
    assert {k: a.category for k, a in fields.items()} == {
        "nuclear_grade": "high",
        "renal_vein_invasion": "absent",
    }
    assert normalize_field("nuclear_grade", "low nuclear grade", kidney) == "low"
    assert render_label({"nuclear_grade": "low"}, kidney) == "low nuclear grade"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("categories: [low, high, unknown]", "categories: [low, high]"), "unknown"),
        (("render: {low: low nuclear grade, ", "render: {"), "no render phrase"),
        (("key: renal_vein_invasion", "key: nuclear_grade"), "duplicate question keys"),
        (("answer: High grade; Renal", "answer: High grade, Renal"), "expected 2"),
        (("version: kidney-1", "version: ''"), "version"),
        (("categories: [low, high, unknown]", "categories: [low, low, high, unknown]"), "dup"),
        (("organ: kidney", "organ: kidney\ncolour: blue"), "colour"),
        (("render: {low: low", "render: {medium: x, low: low"), "name no category"),
    ],
)
def test_invalid_sets_are_refused(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in KIDNEY_YAML
    with pytest.raises(QuestionSetError, match=message):
        load_question_set(str(write_yaml(tmp_path, KIDNEY_YAML.replace(old, new, 1))))


def test_broken_yaml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuestionSetError, match="not valid YAML"):
        load_question_set(str(write_yaml(tmp_path, "name: [unclosed")))
    with pytest.raises(QuestionSetError, match="mapping"):
        load_question_set(str(write_yaml(tmp_path, "- a list")))


# --- split_answer -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Poorly; Unknown; No",
        "```\nAnswer: Poorly; Unknown; No\n```",
        "Here are the answers:\n1. Poorly; 2. Unknown; 3. No\nHope this helps.",
        '"Poorly; Unknown; No;"',
        "(1) Poorly; (2) Unknown; (3) No",
        "**Answer:** Poorly; Unknown; No",
        "1. Poorly\n2. Unknown\n3. No",
        "  Poorly ;Unknown;   No  ",
    ],
)
def test_split_answer_tolerates_wrappers(line: str) -> None:
    assert split_answer(line, 3) == ["Poorly", "Unknown", "No"]


@pytest.mark.parametrize("line", ["", "Poorly; Unknown", "a; b; c; d", "a;;b", "\n\n"])
def test_split_answer_needs_exactly_n_parts(line: str) -> None:
    assert split_answer(line, 3) is None


# --- normalize_field ----------------------------------------------------------------------------

CASES = {
    "differentiation": [
        ("Poorly differentiated", "poor"),
        ("G3", "poor"),
        ("grade 3 of 4", "poor"),
        ("Grade III", "poor"),
        ("high-grade", "poor"),
        ("well-differentiated (G1)", "well"),
        ("Lesion is moderately differentiated (G2)", "moderate"),
        ("moderately to poorly", "moderate_to_poor"),
        ("Grade II-III", "moderate_to_poor"),
        ("well to moderately differentiated", "well_to_moderate"),
        ("moderately well differentiated", "well_to_moderate"),
        ("G1-G2", "well_to_moderate"),
        ("poorly differentiated in A and well differentiated in B", "mixed"),
        ("mixed", "mixed"),
        ("largely undifferentiated", "undifferentiated"),
        ("G4", "undifferentiated"),
        ("poorly differentiated (grade 4 of 4)", "poor"),
        ("GX", "unknown"),
        ("Unknown", "unknown"),
        ("cannot be assessed", "unknown"),
        ("not graded", "unknown"),
    ],
    "vascular_invasion": [
        ("Vascular invasion: not identified", "absent"),
        ("No", "absent"),
        ("Not identified", "absent"),
        ("negative", "absent"),
        ("absent", "absent"),
        ("free of tumour", "absent"),
        ("No unequivocal lymphovascular invasion identified", "absent"),
        ("L0 V0", "absent"),
        ("L1 V0", "present"),
        ("pV1", "present"),
        ("Angiolymphatic invasion present", "present"),
        ("Lymphovascular invasion not identified, indicating no vascular invasion", "absent"),
        ("suspicious for lymphovascular invasion", "unknown"),
        ("indeterminate", "unknown"),
        ("Not mentioned", "unknown"),
        ("Unknown.", "unknown"),
        ("Present, as the tumour invades a vein", "present"),
    ],
    "pleural_invasion": [
        ("PL1", "present"),
        ("PL0", "absent"),
        ("Tumour invades through the visceral pleura", "present"),
        ("extends up to but not through the visceral pleura", "absent"),
        ("abuts the pleura", "absent"),
        ("No pleural invasion, but the tumour is close to the bronchial margin", "absent"),
        ("Focal pleural invasion cannot be excluded", "unknown"),
        ("Pleural invasion is not specified, but the tumour touches the pleura", "unknown"),
    ],
    "adjacent_invasion": [
        ("Tumour confined to the lung", "absent"),
        ("Invades the chest wall", "present"),
        ("No direct extension of tumour", "absent"),
    ],
    "stas": [
        ("Tumour cells in air spaces beyond the tumour edge (STAS)", "present"),
        ("STAS not identified", "absent"),
    ],
    "margins": [
        ("R0", "clear"),
        ("negative", "clear"),
        ("free", "clear"),
        ("clear", "clear"),
        ("close but negative", "clear"),
        ("Margins of the excised tissue are clear of disease (R0).", "clear"),
        ("uninvolved", "clear"),
        ("R1", "involved"),
        ("R2", "involved"),
        ("involved", "involved"),
        ("positive", "involved"),
        ("not clear of disease", "involved"),
        ("Tumour present at the bronchial margin", "involved"),
        ("Rx", "unknown"),
        ("Margins are unclear of disease (RX)", "unknown"),
        ("cannot be assessed", "unknown"),
        ("Unknown.", "unknown"),
        ("margin involvement not identified", "clear"),
        ("Margins: involvement by tumour: none", "clear"),
    ],
}


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [(key, text, expected) for key, cases in CASES.items() for text, expected in cases],
)
def test_normalize_field(key: str, text: str, expected: str) -> None:
    assert normalize_field(key, text, LUNG) == expected


def test_unreadable_part_is_unknown_and_not_confident() -> None:
    assert classify_field("margins", "lorem ipsum", LUNG) == ("unknown", False)
    assert classify_field("margins", "Unknown", LUNG) == ("unknown", True)


def test_normalize_answer_statuses_and_evidence() -> None:
    line = "Poorly differentiated; Unknown; V1; No pleural invasion; Unknown; R0"
    fields, status = normalize_answer(line, LUNG)
    assert status == "ok"
    assert fields["vascular_invasion"] == FieldAnswer("present", "V1")
    assert fields["pleural_invasion"].evidence == "No pleural invasion"
    _, status = normalize_answer(line.replace("R0", "lorem ipsum"), LUNG)
    assert status == "needs_review"
    fields, status = normalize_answer("Poorly differentiated; Unknown", LUNG)
    assert status == "failed" and {a.category for a in fields.values()} == {"unknown"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=1, max_value=8))
def test_split_answer_never_raises(text: str, n: int) -> None:
    parts = split_answer(text, n)
    assert parts is None or len(parts) == n


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(KEYS))
def test_normalize_field_never_raises(text: str, key: str) -> None:
    assert normalize_field(key, text, LUNG) in LUNG.question(key).categories


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=0, max_size=8))
def test_normalize_answer_never_raises(parts: list[str]) -> None:
    fields, status = normalize_answer(";".join(parts), LUNG)
    assert set(fields) == set(KEYS) and status in {"ok", "needs_review", "failed"}


# --- render_label -------------------------------------------------------------------------------


def test_render_label_in_question_order_without_unknown() -> None:
    categories = {
        "margins": "clear",
        "pleural_invasion": "absent",
        "vascular_invasion": "present",
        "stas": "unknown",
        "differentiation": "poor",
    }
    expected = (
        "poorly differentiated; vascular invasion present; pleural invasion absent; margins clear"
    )
    assert render_label(categories, LUNG) == expected
    assert render_label(dict(reversed(categories.items())), LUNG) == expected
    assert render_label({}, LUNG) == ""


def test_render_label_refuses_invalid_category() -> None:
    with pytest.raises(ValueError, match="margins"):
        render_label({"margins": "maybe"}, LUNG)


# --- evaluate_labels ----------------------------------------------------------------------------


def test_evaluate_labels_counts_common_ids_and_nonempty_reference() -> None:
    ref = [
        {"id": "a", "margins": "clear", "stas": "unknown"},
        {"id": "b", "margins": "involved", "stas": ""},
        {"id": "c", "margins": "clear", "stas": "absent"},
        {"id": "only-ref", "margins": "clear", "stas": "absent"},
    ]
    pred = [
        {"id": "a", "margins": "clear", "stas": ""},
        {"id": "b", "margins": "clear", "stas": "present"},
        {"id": "c", "margins": "bogus", "stas": "absent"},
        {"id": "only-pred", "margins": "clear", "stas": "absent"},
    ]
    metrics = evaluate_labels(pred, ref, "id", LUNG)
    assert metrics["n_common"] == 3
    margins, stas = metrics["fields"]["margins"], metrics["fields"]["stas"]
    assert (margins["n"], margins["agreement"], margins["invalid"]) == (3, 1 / 3, 1)
    assert margins["confusion"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert (stas["n"], stas["agreement"]) == (2, 1.0)  # empty prediction counts as unknown
    assert metrics["fields"]["differentiation"]["agreement"] is None
    assert metrics["macro_agreement"] == pytest.approx((1 / 3 + 1.0) / 2)


def test_evaluate_labels_refuses_duplicate_ids() -> None:
    rows = [{"id": "a", "margins": "clear"}, {"id": "a", "margins": "clear"}]
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_labels(rows, rows[:1], "id", LUNG)


def test_cohen_kappa() -> None:
    assert cohen_kappa([[5, 0], [0, 5]]) == 1.0
    assert cohen_kappa([[0, 0], [0, 0]]) is None
    assert cohen_kappa([[4, 0], [0, 0]]) is None
    assert cohen_kappa([[2, 2], [2, 2]]) == pytest.approx(0.0)


# --- pipeline helpers in-process ------------------------------------------------------------------


def test_read_csv_rows_names_available_columns(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,text\n1," + "x" * 300_000 + "\n")  # beyond csv's default field limit
    assert len(read_csv_rows(path, ["id"])[0]["text"]) == 300_000
    with pytest.raises(ReportsInputError, match="available columns: id, text"):
        read_csv_rows(path, ["report"])


def test_normalize_file_keeps_failed_rows(tmp_path: Path) -> None:
    src = tmp_path / "answers.csv"
    src.write_text(
        'pid,answer\np1,Poorly; Unknown; V1; PL0; Unknown; R0\np2,\np3,"only; three; parts"\n'
    )
    summary = normalize_file(src, tmp_path / "labels.csv", answer_column="answer", id_column="pid")
    assert (summary.n_ok, summary.n_failed, summary.ok) == (1, 2, False)
    rows = read_csv_rows(tmp_path / "labels.csv", ["pid"])
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert rows[0]["vascular_invasion_evidence"] == "V1" and rows[0]["backend"] == "normalize"
    assert rows[1]["fine_grained_label"] == "" and rows[1]["error"] == "empty answer"
