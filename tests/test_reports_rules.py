"""The lung rule set of the offline rules backend: hand-written report snippets per field,
robustness on arbitrary text, evidence, question-set checks, and agreement with GPT-4 on the
shared TCGA lung reports. (Every registered rule set: tests/test_reports_rule_sets.py.)"""

from __future__ import annotations

import csv
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED_REPORTS
from fivewsi.reports.questions import Question, QuestionSet, load_question_set
from fivewsi.reports.rules import RuleSetMismatchError, extract_rules, get_rule_set

LUNG = load_question_set("lung")
LUNG_RULES = get_rule_set("lung")
FIELDS = LUNG_RULES.keys
CATEGORIES = {key: rule.categories for key, rule in LUNG_RULES.fields.items()}
REPORTS_CSV = SHARED_REPORTS


def answer(text: str, key: str) -> str:
    return extract_rules(text, LUNG)[key].category


# --- one field at a time, from snippets written for these tests ----------------------------

DIFFERENTIATION = [
    ("Adenocarcinoma, moderately differentiated, 3.1 cm.", "moderate"),
    ("INFILTRATING POORLY. DIFFERENTIATED ADENOCARCINOMA (2.5 CM)", "poor"),
    ("Squamous cell carcinoma, moderately to poorly differentiated.", "moderate_to_poor"),
    ("Adenocarcinoma, well to moderately differentiated, lepidic pattern.", "well_to_moderate"),
    ("Histologic grade: G1: Well differentiated.", "well"),
    ("Tumor classification: M-8140/3, G. 3, pT 2, pV 0, pN 2, pMx, R0.", "poor"),
    ("Lung, lobectomy: invasive grade 3 of 4 adenocarcinoma.", "poor"),
    ("Lung, lobectomy: Grade 4 (of 4) squamous cell carcinoma.", "undifferentiated"),
    ("HISTOLOGIC GRADE: 2/4. TUMOR FOCALITY: UNIFOCAL.", "moderate"),
    ("F.Grade: 3. 1. well. 2. moderate. 3. poor/undifferentiated. G.Origin: 1.", "poor"),
    ("Squamous cell carcinoma, high grade (4.0 cm).", "poor"),
    ("Grade/Differentiation. II. Pathological T. T2.", "moderate"),
    ("pT2, pNo (0/37), pMx, G2.", "moderate"),
    ("Histologic grade: GX, cannot be assessed.", "unknown"),
    ("Tumor grade: 1-2 out of 3. Mitotic index: 0.", "well_to_moderate"),
    ("Adenocarcinoma of histologically mixed differentiation (G3), with necrosis.", "poor"),
    ("G. Nuclear grade: 3. 1. Low. 2. Intermediate. 3. High. H. Next: 1.", "unknown"),
    ("Although squamous, it could also be an undifferentiated carcinoma.", "unknown"),
    ("Adenocarcinoma with focal squamous differentiation.", "unknown"),
    ("Sections submitted in cassettes G1 and G3.", "unknown"),
]

STAS = [
    ("Spread through air spaces (STAS): not identified.", "absent"),
    ("STAS is present.", "present"),
    ("Tumour cells are seen lying freely within adjacent alveolar spaces.", "present"),
    ("Angiolymphatic invasion with lymphangitic spread is present.", "unknown"),
    ("Emphysema with dilated air spaces.", "unknown"),
]

VASCULAR = [
    ("Lymphovascular invasion: Not identified.", "absent"),
    ("- NO ANGIOLYMPHATIC INVASION IDENTIFIED. - MARGINS FREE.", "absent"),
    ("No pleural, vascular, lymphatic or perineural invasion identified.", "absent"),
    (
        "Venous (Large Vessel) Invasion (V): Not identified. "
        "Lymphatic (Small Vessel) Invasion (L): Present.",
        "present",
    ),
    ("Classification: pT2 pN0 L1 V0 R0, stage IB.", "present"),
    ("Classification: pT2a pN0 L0 V0 R0, stage IB.", "absent"),
    ("Focus suspicious for lymphovascular invasion is seen.", "unknown"),
    ("K.Angiolymphatic invasion: 2. 1. yes. 2. no. L.Necrosis: 1.", "absent"),
    ("Lymph nodes negative for tumor, lymphovascular invasion present.", "present"),
    ("There is focal vascular invasion within the tumor.", "present"),
    ("Tumor emboli are noted within lymphatic spaces.", "present"),
    ("Invasion: angiolymphatic - not identified. perineural - present.", "absent"),
    ("LYMPHATIC INVASION: fNOT IDENTIFIED. LYMPH NODES: 0/3.", "absent"),
    (
        "Lymphovascular space invasion: Findings present suspicious for lymphovascular invasion.",
        "unknown",
    ),
    ("Stasis in the capillary vessels, without tumoral infiltration.", "unknown"),
    ("Vascular margin: negative. Bronchial margin: negative.", "unknown"),
    ("Block summary: L1- Level X lymph node. V1- Level IV lymph node.", "unknown"),
]

PLEURAL = [
    ("Visceral pleural invasion: Present (PL1).", "present"),
    ("The tumor invades through the visceral pleura.", "present"),
    ("The tumor extends up to but not through the visceral pleura.", "absent"),
    ("THE TUMOR IS ADJACENT TO, BUT DOES NOT INVADE THROUGH THE. VISCERAL PLEURA.", "absent"),
    ("The carcinoma abuts the pleura.", "absent"),
    ("Pleura: uninvolved.", "absent"),
    ("Extent: pT2a, Pl 0, pN0.", "absent"),
    ("VISCERAL PLEURAL INVASION. Not identified.", "absent"),
    ("H.Visceral pleural invasion: 1. 1. yes. 2. no. I.Parietal: 2.", "present"),
    ("The tumor invades into but not through the visceral pleura.", "present"),
    ("Invasion into but not through the pleura by tumor is absent.", "absent"),
    ("The tumor involves the visceral but not the parietal pleura.", "present"),
    (
        "The tumor extends to the pleura; however, it does not disrupt the pleural surface.",
        "absent",
    ),
    ("Tumor distance from pleural surface: focally in contact but not through it.", "absent"),
    ("No tumour is present on the pleural surface; stains are pending.", "unknown"),
    (
        "Primary tumor: pT2a: Tumor greater than 3 cm but 5 cm or less; invades the visceral "
        "pleura. Regional lymph nodes: pN0.",
        "unknown",
    ),
    ("Small right pleural effusion.", "unknown"),
]

ADJACENT = [
    ("The carcinoma invades the chest wall and the 5th rib.", "present"),
    ("Tumor invades through the visceral pleura into the parietal pleura (PL3).", "present"),
    ("Direct extension of tumor: Not identified.", "absent"),
    ("Tumor extension: Tumor confined to lung parenchyma.", "absent"),
    ("Metastatic carcinoma in 2 of 10 lymph nodes with extranodal extension.", "unknown"),
    ("The tumor invades the visceral pleura and a segmental bronchus.", "unknown"),
    (
        "pT3: Tumor of any size that directly invades any of the following: chest wall, diaphragm, "
        "mediastinal pleura. Regional lymph nodes: pN0.",
        "unknown",
    ),
    ("Chest wall margin: negative for tumor.", "unknown"),
    ("The tumor does not invade the chest wall.", "unknown"),
    ("The mass abuts the chest wall.", "unknown"),
    ("Tumor involves main bronchus 2 cm or more distal to the carina.", "unknown"),
    ("Tumor cells are present in the diaphragm.", "present"),
    ("The tumor involves the visceral but not the parietal pleura.", "unknown"),
]

MARGINS = [
    ("Margins of resection: Negative.", "clear"),
    ("All surgical margins are free of tumor (R0).", "clear"),
    ("Bronchial margin: close (0.2 cm) but negative.", "clear"),
    ("The resection margin of the bronchus and vessels are tumor-. free.", "clear"),
    ("SURGICAL MARGIN INVOLVEMENT: No. INFLAMMATORY REACTION: Mild.", "clear"),
    ("Carcinoma present at the inked stapled margin.", "involved"),
    ("L.Surgical margins involved: 1. 1. yes. 2. no. M.Next: 1.", "involved"),
    ("TNM classification pT3 pN0 pMX V1 R1, stage IIB.", "involved"),
    ("Margin status: R0, negative.", "clear"),
    ("Lymph nodes, 4R and R2, excision: negative for carcinoma (0/5).", "unknown"),
    ("Specimen D, labeled R 2 lymph node.", "unknown"),
    ("TNM classification pT2 pN2 V1 RX, stage IIIA.", "unknown"),
    ("Visceral pleural margin: positive.", "unknown"),
    ("MARGINS: BRONCHIAL: NEGATIVE. PARENCHYMAL: NEGATIVE.", "clear"),
    ("- Negative pleura and inked resection margin. - Emphysema.", "clear"),
    ("6. Bronchial margin: Lymph nodes: 0/1 positive for metastasis.", "unknown"),
    ("The tumour is 4 mm from the closest bronchial resection margin.", "clear"),
]


def _cases(rows: list[tuple[str, str]], key: str) -> list[tuple[str, str, str]]:
    return [(text, key, expected) for text, expected in rows]


ALL_CASES = (
    _cases(DIFFERENTIATION, "differentiation")
    + _cases(STAS, "stas")
    + _cases(VASCULAR, "vascular_invasion")
    + _cases(PLEURAL, "pleural_invasion")
    + _cases(ADJACENT, "adjacent_invasion")
    + _cases(MARGINS, "margins")
)


@pytest.mark.parametrize(("text", "key", "expected"), ALL_CASES)
def test_field_from_snippet(text: str, key: str, expected: str) -> None:
    assert answer(text, key) == expected


def test_all_fields_of_one_synoptic_report() -> None:
    report = (
        "FINAL DIAGNOSIS: Lung, right upper lobe, lobectomy: invasive squamous cell carcinoma. "
        "Histologic Grade: G3: Poorly differentiated. Visceral Pleura Invasion: Not identified. "
        "Tumor Extension: Not identified. Bronchial Margin: Uninvolved by invasive carcinoma. "
        "Lymph-Vascular Invasion: Present. Regional lymph nodes: 2/14 (levels 4R, 7)."
    )
    got = {k: a.category for k, a in extract_rules(report, LUNG).items()}
    assert got == {
        "differentiation": "poor",
        "stas": "unknown",
        "vascular_invasion": "present",
        "pleural_invasion": "absent",
        "adjacent_invasion": "absent",
        "margins": "clear",
    }


def test_gross_description_only_fills_a_silence() -> None:
    # The gross impression "abuts the pleura" loses to the microscopic statement.
    report = (
        "GROSS DESCRIPTION: The mass abuts the pleura. "
        "MICROSCOPIC DESCRIPTION: The carcinoma invades the visceral pleura (PL1)."
    )
    assert answer(report, "pleural_invasion") == "present"
    assert answer("GROSS DESCRIPTION: The mass abuts the pleura.", "pleural_invasion") == "absent"


# --- evidence -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            "Pleura unremarkable.  Lymphovascular\n invasion:   not identified.",
            "vascular_invasion",
            "Lymphovascular invasion: not identified",
        ),
        (
            "Adenocarcinoma, moderately differentiated.",
            "differentiation",
            "moderately differentiated",
        ),
        ("Tumor invades the chest wall.", "adjacent_invasion", "invades the chest wall"),
        ("Margins of resection: Negative.", "margins", "Margins of resection"),
    ],
)
def test_evidence_quotes_the_deciding_words(text: str, key: str, words: str) -> None:
    evidence = extract_rules(text, LUNG)[key].evidence
    assert words in evidence
    assert "  " not in evidence and "\n" not in evidence  # whitespace collapsed


def test_evidence_is_short_and_empty_for_silence() -> None:
    text = "x " * 500 + "Margins: negative. " + "y " * 500
    answers = extract_rules(text, LUNG)
    assert "Margins: negative" in answers["margins"].evidence
    assert len(answers["margins"].evidence) < 200
    assert answers["stas"].evidence == ""


# --- question sets --------------------------------------------------------------------------


def _question_set(keys: list[str], categories: tuple[str, ...] = ("yes", "unknown")) -> QuestionSet:
    """A set named ``lung`` (so the lung rules answer it) with only ``keys``."""
    questions = [
        Question(
            key=k,
            question=f"{k}?",
            categories=categories,
            render={c: c for c in categories if c != "unknown"},
        )
        for k in keys
    ]
    return QuestionSet(
        name="lung", version="1", organ="lung", instruction="Answer.", questions=questions
    )


def test_unknown_question_keys_raise_naming_them() -> None:
    with pytest.raises(RuleSetMismatchError, match=r"tumour_size"):
        extract_rules("Margins negative.", _question_set(["margins", "tumour_size"]))


def test_missing_categories_raise() -> None:
    with pytest.raises(RuleSetMismatchError, match=r"involved"):
        extract_rules("Margins negative.", _question_set(["margins"], ("clear", "unknown")))


def test_a_subset_of_the_lung_keys_is_answered() -> None:
    qs = _question_set(["margins"], CATEGORIES["margins"])
    assert set(extract_rules("Margins negative.", qs)) == {"margins"}


# --- never raises ---------------------------------------------------------------------------


def _check_answers(text: str) -> None:
    answers = extract_rules(text, LUNG)
    assert list(answers) == list(FIELDS)
    for key, a in answers.items():
        assert a.category in CATEGORIES[key]
        assert isinstance(a.evidence, str)
        assert len(a.evidence) < 1000


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_arbitrary_unicode_never_raises(text: str) -> None:
    _check_answers(text)


# Report vocabulary, so that the generated texts reach deep into the rules.
WORDS = [
    "margin",
    "margins:",
    "negative",
    "R0",
    "R1",
    "RX",
    "4R",
    "pT2",
    "pN0",
    "L1",
    "V0",
    "G3",
    "G.",
    "3",
    "grade",
    "of",
    "4",
    "poorly",
    "differentiated",
    "pleura",
    "visceral",
    "PL1",
    "invades",
    "not",
    "through",
    "but",
    "no",
    "vascular",
    "invasion:",
    "identified",
    "chest",
    "wall",
    "confined",
    "to",
    "lung",
    "STAS",
    "alveoli",
    "1.",
    "2.",
    "yes.",
    "no.",
    ".",
    ";",
    "-",
    ":",
    "(",
    ")",
    "GROSS",
    "DESCRIPTION:",
    "DIAGNOSIS:",
    "Tumor",
    "extension",
    "İ",
    "\n",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=80))
def test_report_like_word_salad_never_raises(words: list[str]) -> None:
    _check_answers(" ".join(words))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \n\t ",
        "." * 1000,
        "Bronchial margin: " * 20000,
        "pT2 pN0 L1 V0 R0 G3 " * 10000,
        "no vascular invasion identified " * 5000,
        "İ" * 10000 + " margin negative",
        "Angiolymphatic invasion: 2. 1. yes. 2. no. " * 5000,
    ],
)
def test_empty_and_huge_inputs_never_raise(text: str) -> None:
    start = time.perf_counter()
    _check_answers(text)
    assert time.perf_counter() - start < 5  # linear time, no catastrophic backtracking


# --- agreement with GPT-4 on the shared TCGA reports ----------------------------------------

# Measured on the 474 dev reports (docs/reports-rules.md): macro 0.888; differentiation 0.924,
# stas 0.970, vascular 0.883, pleural 0.900, adjacent 0.693, margins 0.957. The floors sit one
# to three points under that, so a regression fails but a one-report wobble does not. The
# macro goal of 0.90 is out of reach on purpose: the rules follow the report-field definitions
# (../shared/docs) where GPT-4 does not ("Direct extension: not identified" is absent,
# lymph-node spread is not adjacent invasion, lymphatic invasion makes vascular invasion
# present, "grade 4 of 4" is undifferentiated), and those ~260 field disagreements alone cost
# about nine macro points.
FIELD_FLOORS = {
    "differentiation": 0.90,
    "stas": 0.95,
    "vascular_invasion": 0.86,
    "pleural_invasion": 0.88,
    "adjacent_invasion": 0.67,
    "margins": 0.94,
}
MACRO_FLOOR = 0.87


@pytest.mark.shared
@pytest.mark.skipif(not REPORTS_CSV.exists(), reason="../shared/data/reports not available")
def test_agreement_with_gpt4_reference() -> None:
    with open(REPORTS_CSV, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    answers = [extract_rules(row["report"], LUNG) for row in rows]
    agreement = {}
    for key in FIELDS:
        pairs = [(a[key].category, row[key]) for a, row in zip(answers, rows, strict=True)]
        scored = [got == ref for got, ref in pairs if ref]
        agreement[key] = sum(scored) / len(scored)
    macro = sum(agreement.values()) / len(agreement)
    low = {k: round(v, 3) for k, v in agreement.items() if v < FIELD_FLOORS[k]}
    assert not low, f"fields under their floor: {low}"
    assert macro >= MACRO_FLOOR, f"macro agreement {macro:.3f} < {MACRO_FLOOR}"
