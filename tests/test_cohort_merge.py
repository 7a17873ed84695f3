"""`fivewsi cohort merge`: the slide table joined with LABELS.csv into cohort.csv."""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fivewsi.cli import app
from fivewsi.cohort.merge import merge_cohort
from fivewsi.cohort.table import CohortError, CohortRow, read_cohort


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


LABEL_HEADER = ["slide_id", "differentiation", "fine_grained_label", "status", "error"]


def test_join_by_slide_id_keeps_slide_order_labels_and_splits(tmp_path):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label", "split"], [
        ["b", "LUSC", "train"], ["a", "", " Validation "], ["c", "LUAD", "TEST"], ["d", "", ""],
    ])
    labels = write_csv(tmp_path / "LABELS.csv", LABEL_HEADER, [
        ["a", "poor", "poorly differentiated", "ok", ""],
        ["b", "well", "well differentiated; margins clear", "ok", ""],
        ["c", "unknown", "", "ok", ""],
    ])
    summary = merge_cohort(slides, labels, tmp_path / "out" / "cohort.csv")
    assert read_cohort(summary.out) == [
        CohortRow("b", "LUSC", "well differentiated; margins clear", "train"),
        CohortRow("a", None, "poorly differentiated", "val"),
        CohortRow("c", "LUAD", None, "test"),  # every field unknown: nothing to train on
        CohortRow("d", None, None, None),
    ]
    assert (summary.n_slides, summary.n_with_report, summary.n_without_report) == (4, 2, 1)
    assert summary.unmatched_reports == [] and summary.id_column == "slide_id"


def test_patient_reports_reach_every_slide_of_the_patient(tmp_path):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id", "label"], [
        ["TCGA-01-DX1", "TCGA-01", "LUAD"], ["TCGA-01-DX2", "TCGA-01", "LUAD"],
        ["TCGA-02-DX1", "TCGA-02", "LUSC"],
    ])
    labels = write_csv(tmp_path / "LABELS.csv", ["patient_id", "fine_grained_label", "status"], [
        ["TCGA-01", "STAS present", "ok"], ["TCGA-03", "margins clear", "ok"],
    ])
    summary = merge_cohort(slides, labels, tmp_path / "cohort.csv")
    rows = read_cohort(tmp_path / "cohort.csv")
    assert [r.report_label for r in rows] == ["STAS present", "STAS present", None]
    assert summary.slide_key == "patient_id" and summary.unmatched_reports == ["TCGA-03"]


def test_explicit_columns_join_other_names(tmp_path):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "case", "label"], [["s1", "p1", "A"]])
    labels = write_csv(tmp_path / "LABELS.csv", ["other", "report_id", "fine_grained_label"],
                       [["x", "p1", "margins clear"]])
    merge_cohort(slides, labels, tmp_path / "c.csv", id_column="report_id", slide_key="case")
    assert read_cohort(tmp_path / "c.csv")[0].report_label == "margins clear"
    with pytest.raises(CohortError, match="no column 'nope'"):
        merge_cohort(slides, labels, tmp_path / "c.csv", id_column="report_id", slide_key="nope")


def test_failed_and_review_reports_are_flagged(tmp_path, caplog):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label"],
                       [["s1", "A"], ["s2", "B"], ["s3", "A"]])
    labels = write_csv(tmp_path / "LABELS.csv", LABEL_HEADER, [
        ["s1", "unknown", "", "failed", "empty report text"],
        ["s2", "poor", "poorly differentiated", "needs_review", "odd category"],
        ["s3", "well", "well differentiated", "ok", ""],
        ["s9", "well", "well differentiated", "ok", ""],
    ])
    with caplog.at_level(logging.INFO, logger="fivewsi.cohort.merge"):
        summary = merge_cohort(slides, labels, tmp_path / "c.csv")
    rows = read_cohort(tmp_path / "c.csv")
    assert [r.report_label for r in rows] == [None, "poorly differentiated", "well differentiated"]
    assert (summary.n_failed_reports, summary.n_needs_review) == (1, 1)
    assert summary.unmatched_reports == ["s9"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("failed report" in w and "s1" in w for w in warnings)
    assert any("match no slide" in w and "s9" in w for w in warnings)
    assert "1 reports without a slide" in summary.summary()


@pytest.mark.parametrize(
    ("slides", "labels", "message"),
    [
        ([["slide", "label"], ["a", "X"]], [["slide_id", "fine_grained_label"], ["a", "l"]],
         "needs a 'slide_id' column"),
        ([["slide_id", "label"], ["a", "X"]], [["slide_id", "answer"], ["a", "l"]],
         "no column 'fine_grained_label'"),
        ([["slide_id", "label"], ["a", "X"], ["a", "Y"]],
         [["slide_id", "fine_grained_label"], ["a", "l"]], "duplicate slide_id 'a'"),
        ([["slide_id", "split"], ["a", "holdout"]],
         [["slide_id", "fine_grained_label"], ["a", "l"]], "'holdout' of 'a' is not train"),
        ([["slide_id", "label"], ["a", "X"]],
         [["slide_id", "fine_grained_label"], ["a", "l"], ["a", "m"]], "duplicate slide_id values"),
        ([["slide_id", "label"], ["a", "X"]], [["slide_id", "fine_grained_label"], ["b", "l"]],
         "no slide of .* matches a report"),
    ],
)
def test_bad_tables_are_refused_and_nothing_written(tmp_path, slides, labels, message):
    s = write_csv(tmp_path / "slides.csv", slides[0], slides[1:])
    lab = write_csv(tmp_path / "LABELS.csv", labels[0], labels[1:])
    with pytest.raises(CohortError, match=message):
        merge_cohort(s, lab, tmp_path / "cohort.csv")
    assert not (tmp_path / "cohort.csv").exists()


def test_missing_file(tmp_path):
    labels = write_csv(tmp_path / "LABELS.csv", ["slide_id", "fine_grained_label"], [["a", "l"]])
    with pytest.raises(FileNotFoundError, match=r"slides\.csv"):
        merge_cohort(tmp_path / "slides.csv", labels, tmp_path / "cohort.csv")


def test_command_exit_status(tmp_path):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label"], [["a", "X"], ["b", "Y"]])
    labels = write_csv(tmp_path / "LABELS.csv", ["slide_id", "fine_grained_label", "status"],
                       [["a", "margins clear", "ok"]])
    runner = CliRunner()
    ok = runner.invoke(app, ["cohort", "merge", str(slides), "--labels", str(labels),
                             "--out", str(tmp_path / "c.csv")])
    assert ok.exit_code == 0, ok.output
    assert [r.report_label for r in read_cohort(tmp_path / "c.csv")] == ["margins clear", None]
    bad = runner.invoke(app, ["cohort", "merge", str(slides), "--labels", str(labels),
                              "--out", str(tmp_path / "d.csv"), "--slide-key", "nope"])
    assert bad.exit_code == 2 and not (tmp_path / "d.csv").exists()


def test_extracted_synthetic_reports_round_trip(tmp_path):
    """The rules extractor reads the synthetic reports back; merge carries their labels over."""
    from fivewsi.reports.pipeline import extract_reports
    from fivewsi.reports.questions import load_question_set
    from fivewsi.reports.render import render_label
    from fivewsi.synthetic import draw_categories, report_text

    qs = load_question_set("lung")
    rng = np.random.default_rng(3)
    expected, reports = {}, []
    for i in range(8):
        label = ("LUAD", "LUSC")[i % 2]
        reported = {k: ("unknown" if rng.random() < 0.3 else c)
                    for k, c in draw_categories(label, rng).items()}
        reports.append([f"s{i}", report_text(label, reported, rng)])
        expected[f"s{i}"] = render_label(reported, qs) or None
    write_csv(tmp_path / "reports.csv", ["slide_id", "report"], reports)
    extract_reports(tmp_path / "reports.csv", tmp_path / "LABELS.csv", id_column="slide_id",
                    progress=False)
    write_csv(tmp_path / "slides.csv", ["slide_id", "label"],
              [[f"s{i}", ("LUAD", "LUSC")[i % 2]] for i in range(8)])
    merge_cohort(tmp_path / "slides.csv", tmp_path / "LABELS.csv", tmp_path / "cohort.csv")
    assert {r.slide_id: r.report_label for r in read_cohort(tmp_path / "cohort.csv")} == expected


ids = st.text(alphabet="abcdef-1", min_size=1, max_size=3)
statuses = st.sampled_from(["ok", "needs_review", "failed", ""])
label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    slide_ids=st.lists(ids, min_size=1, max_size=8, unique=True),
    reports=st.dictionaries(ids, st.tuples(label_text, statuses), min_size=1, max_size=8),
)
def test_merge_properties(slide_ids, reports):
    if not set(slide_ids) & set(reports):
        return  # nothing matching is refused; covered above
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_csv(root / "slides.csv", ["slide_id", "label"], [[s, "X"] for s in slide_ids])
        write_csv(root / "LABELS.csv", ["slide_id", "fine_grained_label", "status"],
                  [[i, text, status] for i, (text, status) in reports.items()])
        summary = merge_cohort(root / "slides.csv", root / "LABELS.csv", root / "cohort.csv")
        rows = read_cohort(root / "cohort.csv")
    assert [r.slide_id for r in rows] == slide_ids
    for row in rows:
        text, status = reports.get(row.slide_id, ("", "failed"))
        wanted = None if status == "failed" else (text.strip() or None)
        assert row.report_label == wanted
    assert summary.n_without_report == len(set(slide_ids) - set(reports))
    assert set(summary.unmatched_reports) == set(reports) - set(slide_ids)
    assert summary.n_failed_reports == sum(reports[s][1] == "failed" for s in slide_ids
                                           if s in reports)


def test_merge_carries_the_patient_column(tmp_path):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "patient_id", "label"], [
        ["TCGA-01-DX1", "TCGA-01", "LUAD"], ["TCGA-02-DX1", "TCGA-02", "LUSC"], ["x", "", ""],
    ])
    labels = write_csv(tmp_path / "LABELS.csv", ["patient_id", "fine_grained_label", "status"], [
        ["TCGA-01", "STAS present", "ok"],
    ])
    merge_cohort(slides, labels, tmp_path / "cohort.csv")
    assert [r.patient_id for r in read_cohort(tmp_path / "cohort.csv")] == [
        "TCGA-01", "TCGA-02", None]
