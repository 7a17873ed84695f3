"""Fine-grained label parsing (rendered and raw LLM answers) and FiVE's label augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.cohort import LabelPart, augment_label, parse_report_label, sample_drop_keys
from fivewsi.reports.questions import load_question_set
from fivewsi.reports.render import render_label
from fivewsi.reports.schema import UNKNOWN

QS = load_question_set("lung")
KEYS = QS.keys

# One category per question (unknown included), as a fixed dictionary strategy.
_categories = st.fixed_dictionaries(
    {q.key: st.sampled_from(q.categories) for q in QS.questions}
)


def test_rendered_label() -> None:
    parts = parse_report_label(
        "poorly differentiated; vascular invasion present; margins clear", QS
    )
    assert parts == [
        LabelPart("differentiation", "poorly differentiated", False),
        LabelPart("vascular_invasion", "vascular invasion present", False),
        LabelPart("margins", "margins clear", False),
    ]


def test_rendered_label_any_case_order_and_spacing() -> None:
    parts = parse_report_label("  Margins   CLEAR ;Well Differentiated;", QS)
    assert [(p.key, p.text, p.unknown) for p in parts] == [
        ("margins", "Margins CLEAR", False),
        ("differentiation", "Well Differentiated", False),
    ]


def test_raw_answer_keeps_text_and_flags_unknown() -> None:
    raw = (
        "Moderately differentiated (G2); Unknown; No vascular invasion (angiolymphatic invasion "
        "not identified); Suspicious for pleural invasion; Not mentioned; Margins clear (R0)"
    )
    parts = parse_report_label(raw, QS)
    assert [p.key for p in parts] == list(KEYS)
    assert parts[0].text == "Moderately differentiated (G2)"
    assert parts[2].text.startswith("No vascular invasion")
    # "Unknown", a hedge and "not mentioned" are unknown by the normalizer's reading.
    assert [p.unknown for p in parts] == [False, True, False, True, True, False]


def test_raw_answer_with_prefix_and_numbering() -> None:
    raw = "Answer: 1. Poorly; 2. Unknown; 3. V1; 4. PL0; 5. Unknown; 6. R1"
    parts = parse_report_label(raw, QS)
    assert [p.text for p in parts] == ["Poorly", "Unknown", "V1", "PL0", "Unknown", "R1"]
    assert [p.unknown for p in parts] == [False, True, False, False, True, False]


def test_unreadable_raw_part_stays_known() -> None:
    # The normalizer finds no verdict in "lorem ipsum": still text worth training on.
    parts = parse_report_label("lorem ipsum; Unknown; Unknown; Unknown; Unknown; Unknown", QS)
    assert parts[0] == LabelPart("differentiation", "lorem ipsum", False)


def test_out_of_order_six_parts_are_not_read_by_position() -> None:
    # Six parts, but "margins clear" in first place: not a raw answer in question order.
    text = "margins clear; some text; more; words; here; Unknown"
    parts = parse_report_label(text, QS)
    assert parts[0] == LabelPart("margins", "margins clear", False)
    assert [p.key for p in parts[1:]] == [""] * 5
    assert parts[-1].unknown


def test_unmatched_parts_keep_empty_key() -> None:
    parts = parse_report_label("well differentiated; tumour is large; Unknown", QS)
    assert parts == [
        LabelPart("differentiation", "well differentiated", False),
        LabelPart("", "tumour is large", False),
        LabelPart("", "Unknown", True),
    ]


@pytest.mark.parametrize("text", ["", "   ", ";", " ; ;; ", None, 3.5])
def test_empty_or_odd_input_gives_no_parts(text: object) -> None:
    assert parse_report_label(text, QS) == []  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_parse_never_raises(text: str) -> None:
    parts = parse_report_label(text, QS)
    for part in parts:
        assert part.key in (*KEYS, "")
        assert part.text and part.text == part.text.strip()
        assert ";" not in part.text


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(["; ", ";", "Unknown", "poorly differentiated", "R0", "\n", "1. ", "x"]),
        max_size=20,
    )
)
def test_parse_never_raises_on_label_like_text(pieces: list[str]) -> None:
    text = "".join(pieces)
    for part in parse_report_label(text, QS):
        assert part.key in (*KEYS, "")


@settings(max_examples=200, deadline=None)
@given(_categories, st.booleans())
def test_render_parse_round_trip(categories: dict[str, str], upper: bool) -> None:
    label = render_label(categories, QS)
    text = label.upper() if upper else label
    parts = parse_report_label(text, QS)
    known = [k for k in KEYS if categories[k] != UNKNOWN]
    assert [p.key for p in parts] == known
    assert [p.text.lower() for p in parts] == [
        QS.render_phrase(k, categories[k]).lower() for k in known
    ]
    assert not any(p.unknown for p in parts)


@settings(max_examples=200, deadline=None)
@given(_categories)
def test_raw_answer_round_trip(categories: dict[str, str]) -> None:
    # An LLM-style answer: one part per question, 'Unknown' for unknown fields.
    answers = [
        "Unknown" if categories[k] == UNKNOWN else QS.render_phrase(k, categories[k]).capitalize()
        for k in KEYS
    ]
    parts = parse_report_label("; ".join(answers), QS)
    # With every field known it is also a rendered label; either way, one part per question.
    assert [p.key for p in parts] == list(KEYS)
    assert [p.text for p in parts if not p.unknown] == [
        a for a, k in zip(answers, KEYS, strict=True) if categories[k] != UNKNOWN
    ]
    assert [p.key for p in parts if p.unknown] == [k for k in KEYS if categories[k] == UNKNOWN]


# --- augmentation -----------------------------------------------------------------------------

_parts = st.lists(
    st.tuples(
        st.sampled_from([*KEYS, ""]),
        st.text(alphabet="abcdefgh xyz", min_size=1, max_size=12).map(str.strip).filter(bool),
        st.booleans(),
    ),
    max_size=10,
).map(lambda items: [LabelPart(k, f"{t} #{i}", u) for i, (k, t, u) in enumerate(items)])


@settings(max_examples=200, deadline=None)
@given(_parts, st.sets(st.sampled_from(KEYS)), st.integers(0, 2**32 - 1), st.booleans())
def test_augment_label_properties(
    parts: list[LabelPart], drop: set[str], seed: int, drop_unknown: bool
) -> None:
    text = augment_label(parts, np.random.default_rng(seed), drop_keys=drop,
                         drop_unknown=drop_unknown)
    out = text.split("; ") if text else []
    kept = [p.text for p in parts if p.key not in drop and not (drop_unknown and p.unknown)]
    assert sorted(out) == sorted(kept)  # a permutation of the kept parts
    removed = {p.text for p in parts} - set(kept)
    assert not removed & set(out)  # no dropped key's part, no unknown part
    again = augment_label(parts, np.random.default_rng(seed), drop_keys=drop,
                          drop_unknown=drop_unknown)
    assert again == text  # deterministic for a seed


def test_augment_label_shuffles_and_keeps_order_when_asked() -> None:
    parts = [LabelPart(k, f"part {i}") for i, k in enumerate(KEYS)]
    ordered = augment_label(parts, np.random.default_rng(0), drop_keys=set(), shuffle=False)
    assert ordered == "; ".join(p.text for p in parts)
    rng = np.random.default_rng(0)
    seen = {augment_label(parts, rng, drop_keys=set()) for _ in range(50)}
    assert len(seen) > 10  # different orders across steps


def test_augment_label_keeps_unknown_when_asked() -> None:
    parts = [LabelPart("stas", "Unknown", True), LabelPart("margins", "R0")]
    rng = np.random.default_rng(0)
    assert augment_label(parts, rng, drop_keys=set(), drop_unknown=False, shuffle=False) == (
        "Unknown; R0"
    )
    assert augment_label(parts, rng, drop_keys={"margins"}) == ""


def test_sample_drop_keys() -> None:
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        dropped = sample_drop_keys(KEYS, rng)
        assert dropped <= set(KEYS)
        sizes.append(len(dropped))
    assert set(sizes) == {0, 1, 2, 3}  # floor(0.5 * 6) = 3 at most, every size drawn
    assert sample_drop_keys(KEYS, np.random.default_rng(0), max_fraction=0.0) == set()
    all_sizes = {len(sample_drop_keys(KEYS, rng, max_fraction=1.0)) for _ in range(400)}
    assert all_sizes == set(range(7))
    assert sample_drop_keys(KEYS, np.random.default_rng(5)) == sample_drop_keys(
        KEYS, np.random.default_rng(5)
    )
    assert sample_drop_keys([], rng) == set()
    with pytest.raises(ValueError, match="max_fraction"):
        sample_drop_keys(KEYS, rng, max_fraction=1.5)


def test_sample_drop_keys_covers_every_key() -> None:
    rng = np.random.default_rng(1)
    counts = dict.fromkeys(KEYS, 0)
    for _ in range(600):
        for key in sample_drop_keys([*KEYS, *KEYS], rng):  # duplicates count once
            counts[key] += 1
    assert min(counts.values()) > 100
