"""Cohort and classes tables: round trips, trimming, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.cohort import (
    ClassDescription,
    CohortError,
    CohortRow,
    check_labels,
    read_classes,
    read_cohort,
    write_classes,
    write_cohort,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_cohort_round_trip(tmp_path: Path) -> None:
    rows = [
        CohortRow("s1", "LUAD", "poorly differentiated; margins clear", "train"),
        CohortRow("s2", None, "a, quoted; label", None),
        CohortRow("s3", "LUSC", None, "test"),
        CohortRow("s4", "LUSC", None, "val"),
    ]
    path = tmp_path / "cohort.csv"
    write_cohort(rows, path)
    assert read_cohort(path) == rows
    assert path.read_text().splitlines()[0] == "slide_id,label,report_label,split"
    assert [p.name for p in tmp_path.iterdir()] == ["cohort.csv"]  # no temporary left behind


def test_cohort_trims_and_normalises(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.csv",
        "\ufeff slide_id , label,report_label,split,extra\n"
        "  a  , LUAD ,  , Train ,x\n"
        "\n"
        "b,,margins clear,validation,\n"
        "c,LUSC,,,\n",
    )
    assert read_cohort(path) == [
        CohortRow("a", "LUAD", None, "train"),
        CohortRow("b", None, "margins clear", "val"),
        CohortRow("c", "LUSC", None, None),
    ]


def test_cohort_without_split_or_report_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "slide_id,label\na,LUAD\n")
    assert read_cohort(path) == [CohortRow("a", "LUAD", None, None)]
    path = _write(tmp_path / "d.csv", "slide_id,report_label\na,margins clear\n")
    assert read_cohort(path) == [CohortRow("a", None, "margins clear", None)]


def test_cohort_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "id,label\na,LUAD\n")
    with pytest.raises(CohortError, match=r"c\.csv.*'slide_id' column.*found \['id', 'label'\]"):
        read_cohort(path)
    path = _write(tmp_path / "d.csv", "slide_id,class\na,LUAD\n")
    with pytest.raises(CohortError, match="'label' or 'report_label'"):
        read_cohort(path)


def test_cohort_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "slide_id,label\na,LUAD\nb,LUSC\n a ,LUSC\n")
    with pytest.raises(CohortError, match=r"line 4: duplicate slide_id 'a' \(first on line 2\)"):
        read_cohort(path)


def test_cohort_bad_split_and_empty_id(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.csv", "slide_id,label,split\na,LUAD,training\n,LUSC,test\n")
    with pytest.raises(CohortError) as info:
        read_cohort(path)
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "line 2: split 'training' of 'a' is not one of train, val, test" in message
    assert "line 3: empty slide_id" in message


def test_cohort_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="file not found"):
        read_cohort(tmp_path / "missing.csv")
    with pytest.raises(CohortError, match="empty file"):
        read_cohort(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(CohortError, match=r"line 2: 3 cells but the header has 2 columns"):
        read_cohort(_write(tmp_path / "wide.csv", "slide_id,label\na,LUAD,extra\n"))
    with pytest.raises(CohortError, match=r"line 1: duplicate columns \['label'\]"):
        read_cohort(_write(tmp_path / "dup.csv", "slide_id,label,label\na,b,c\n"))


def test_write_cohort_refuses_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    with pytest.raises(CohortError, match="duplicate slide_id 'a'"):
        write_cohort([CohortRow("a", "x", None), CohortRow("a", "y", None)], path)
    with pytest.raises(CohortError, match="split 'Test'"):
        write_cohort([CohortRow("a", "x", None, "Test")], path)
    assert not path.exists()


def test_classes_round_trip(tmp_path: Path) -> None:
    classes = [
        ClassDescription("LUAD", "Lung adenocarcinoma, glandular, often with STAS"),
        ClassDescription("LUSC", 'Squamous cell carcinoma; "keratinising"'),
    ]
    path = tmp_path / "classes.csv"
    write_classes(classes, path)
    assert read_classes(path) == classes


def test_classes_errors(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="no classes"):
        read_classes(_write(tmp_path / "a.csv", "class,description\n\n"))
    with pytest.raises(CohortError, match=r"line 3: duplicate class 'A' \(first on line 2\)"):
        read_classes(_write(tmp_path / "b.csv", "name,description\nA,x\n A ,y\n"))
    with pytest.raises(CohortError, match=r"missing \['description'\]"):
        read_classes(_write(tmp_path / "c.csv", "name,text\nA,x\n"))
    with pytest.raises(CohortError, match="line 2: empty description"):
        read_classes(_write(tmp_path / "d.csv", "name,description\nA,  \n"))
    with pytest.raises(CohortError, match="no classes"):
        write_classes([], tmp_path / "e.csv")
    with pytest.raises(CohortError, match="duplicate class 'A'"):
        write_classes([ClassDescription("A", "x"), ClassDescription("A", "y")], tmp_path / "f.csv")


def test_check_labels() -> None:
    classes = [ClassDescription("LUAD", "a"), ClassDescription("LUSC", "b")]
    rows = [CohortRow("a", "LUAD", None), CohortRow("b", None, "x"), CohortRow("c", "LUSC", None)]
    check_labels(rows, classes)
    check_labels(rows, ["LUAD", "LUSC"])
    bad = [*rows, *(CohortRow(f"n{i}", "NSCLC", None) for i in range(5)), CohortRow("z", "x", None)]
    with pytest.raises(CohortError) as info:
        check_labels(bad, classes)
    message = str(info.value)
    assert "'NSCLC' (5 slides: n0, n1, n2, ...)" in message
    assert "'x' (1 slide: z)" in message
    assert "['LUAD', 'LUSC']" in message


_cell = st.one_of(
    st.none(),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(_cell, _cell, st.sampled_from([None, "train", "val", "test"])),
        max_size=8,
    )
)
def test_cohort_round_trip_property(tmp_path_factory: pytest.TempPathFactory, cells: list) -> None:
    rows = [CohortRow(f"s{i}", label, report, split)
            for i, (label, report, split) in enumerate(cells)]
    path = tmp_path_factory.mktemp("prop") / "cohort.csv"
    write_cohort(rows, path)
    assert read_cohort(path) == rows


def test_reads_the_shared_class_descriptions() -> None:
    from conftest import SHARED

    path = SHARED / "reports" / "class_descriptions.csv"
    if not path.exists():
        pytest.skip("shared class descriptions not available")
    classes = read_classes(path)
    assert [c.name for c in classes] == ["LUAD", "LUSC"]
    assert all(len(c.description) > 40 for c in classes)


def test_patient_id_round_trips_and_is_written_only_when_present(tmp_path: Path) -> None:
    rows = [CohortRow("s1", "LUAD", None, "train", "p1"), CohortRow("s2", "LUAD", None, None, "p1"),
            CohortRow("s3", "LUSC", None, "test", "=p2")]
    path = tmp_path / "cohort.csv"
    write_cohort(rows, path)
    assert path.read_text().splitlines()[0] == "slide_id,label,report_label,split,patient_id"
    assert read_cohort(path) == rows
    write_cohort([CohortRow("s1", "LUAD", None)], path)
    assert path.read_text().splitlines()[0] == "slide_id,label,report_label,split"
    assert read_cohort(path)[0].patient_id is None
