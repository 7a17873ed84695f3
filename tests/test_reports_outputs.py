"""Outputs of ``fivewsi reports`` and ``fivewsi cohort merge``: checked before any work, never
written over an input (issue 10: M6, M7)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_llm_server import FakeLLMServer
from fivewsi.cli import app

ANSWER = "Poorly differentiated; Unknown; Present (L1); PL2; Unknown; R0"


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def reports_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "reports.csv", ["patient_id", "report"],
                     [["p1", "Adenocarcinoma, poorly differentiated."], ["p2", "No tumour."]])


# --------------------------------------------------------------------------- M6


def test_extract_refuses_to_overwrite_its_input(reports_csv):
    before = reports_csv.read_bytes()
    code, output = invoke("reports", "extract", str(reports_csv), "--out", str(reports_csv))
    assert code == 2 and "input" in one_error_line(output)
    assert reports_csv.read_bytes() == before


def test_extract_refuses_the_llm_cache_as_output(reports_csv, tmp_path):
    cache = tmp_path / "llm.sqlite"
    code, output = invoke("reports", "extract", str(reports_csv), "--out", str(cache),
                          "--backend", "llm", "--model", "m", "--base-url",
                          "http://127.0.0.1:9/v1", "--cache", str(cache))
    assert code == 2 and "input" in one_error_line(output)


def test_normalize_refuses_to_overwrite_its_input(tmp_path):
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"], [["p1", ANSWER]])
    before = answers.read_bytes()
    code, output = invoke("reports", "normalize", str(answers), "--answer-column", "answer",
                          "--out", str(tmp_path / "." / "answers.csv"))
    assert code == 2 and "input" in one_error_line(output)
    assert answers.read_bytes() == before


def test_evaluate_json_refuses_an_input(tmp_path):
    pred = write_csv(tmp_path / "pred.csv", ["patient_id", "margins"], [["p1", "clear"]])
    before = pred.read_bytes()
    code, output = invoke("reports", "evaluate", str(pred), str(pred), "--id-column",
                          "patient_id", "--json", str(pred))
    assert code == 2 and "input" in one_error_line(output)
    assert pred.read_bytes() == before


@pytest.mark.parametrize("which", ["slides", "labels"])
def test_merge_refuses_to_overwrite_an_input(tmp_path, which):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label"], [["a", "X"]])
    labels = write_csv(tmp_path / "LABELS.csv", ["slide_id", "fine_grained_label", "status"],
                       [["a", "margins clear", "ok"]])
    target = slides if which == "slides" else labels
    before = target.read_bytes()
    code, output = invoke("cohort", "merge", str(slides), "--labels", str(labels),
                          "--out", str(target))
    assert code == 2 and "input" in one_error_line(output)
    assert target.read_bytes() == before


# --------------------------------------------------------------------------- M7


def test_extract_checks_a_read_only_out_before_asking_anyone(reports_csv, mount_tmpfs):
    read_only = mount_tmpfs(readonly=True)
    with FakeLLMServer() as server:
        code, output = invoke("reports", "extract", str(reports_csv), "--out",
                              str(read_only / "labels.csv"), "--backend", "llm", "--model", "m",
                              "--base-url", server.url, "--no-progress")
        assert server.count == 0  # no report was asked: the output was checked first
    assert code == 2 and "not writable" in one_error_line(output)


def test_extract_out_is_a_folder(reports_csv, tmp_path):
    with FakeLLMServer() as server:
        code, output = invoke("reports", "extract", str(reports_csv), "--out", str(tmp_path),
                              "--backend", "llm", "--model", "m", "--base-url", server.url,
                              "--no-progress")
        assert server.count == 0
    assert code == 2 and "folder" in one_error_line(output)


def test_normalize_read_only_out(tmp_path, mount_tmpfs):
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"], [["p1", ANSWER]])
    read_only = mount_tmpfs(readonly=True)
    code, output = invoke("reports", "normalize", str(answers), "--answer-column", "answer",
                          "--out", str(read_only / "labels.csv"))
    assert code == 2 and "not writable" in one_error_line(output)


def test_evaluate_json_read_only_or_folder_fails_before_scoring(tmp_path, mount_tmpfs):
    pred = write_csv(tmp_path / "pred.csv", ["patient_id", "margins"], [["p1", "clear"]])
    ref = write_csv(tmp_path / "ref.csv", ["patient_id", "margins"], [["p1", "clear"]])
    read_only = mount_tmpfs(readonly=True)
    for target, message in [(read_only / "m.json", "not writable"), (tmp_path, "folder")]:
        code, output = invoke("reports", "evaluate", str(pred), str(ref), "--id-column",
                              "patient_id", "--json", str(target))
        # one line: the metrics table was not printed first
        assert code == 2 and message in one_error_line(output)


def test_merge_read_only_out(tmp_path, mount_tmpfs):
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label"], [["a", "X"]])
    labels = write_csv(tmp_path / "LABELS.csv", ["slide_id", "fine_grained_label"],
                       [["a", "margins clear"]])
    read_only = mount_tmpfs(readonly=True)
    for target, message in [(read_only / "c.csv", "not writable"), (tmp_path, "folder")]:
        code, output = invoke("cohort", "merge", str(slides), "--labels", str(labels),
                              "--out", str(target))
        assert code == 2 and message in one_error_line(output)


# --------------------------------------------------------------------------- bad input, minors


def test_base_url_is_checked_up_front(reports_csv, tmp_path):
    for bad in ["not-a-url", "ftp://host/v1", "http:///v1"]:
        code, output = invoke("reports", "extract", str(reports_csv), "--out",
                              str(tmp_path / "l.csv"), "--backend", "llm", "--model", "m",
                              "--base-url", bad, "--max-retries", "5", "--no-progress")
        assert code == 2 and "base_url" in one_error_line(output), bad
        assert not (tmp_path / "l.csv").exists()


def test_non_utf8_reports_csv_names_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("patient_id,report\np1,Tumeur de 3 cm, marge saine \xe9\n".encode("latin-1"))
    code, output = invoke("reports", "extract", str(path), "--out", str(tmp_path / "l.csv"))
    line = one_error_line(output)
    assert code == 2 and "latin1.csv" in line and "UTF-8" in line


def test_reports_csv_without_rows_exits_two(tmp_path):
    path = write_csv(tmp_path / "reports.csv", ["patient_id", "report"], [])
    code, output = invoke("reports", "extract", str(path), "--out", str(tmp_path / "l.csv"))
    assert code == 2 and "reports.csv" in one_error_line(output)
    assert not (tmp_path / "l.csv").exists()
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"], [])
    code, output = invoke("reports", "normalize", str(answers), "--answer-column", "answer",
                          "--out", str(tmp_path / "l.csv"))
    assert code == 2 and "answers.csv" in one_error_line(output)


def test_evaluate_with_no_common_id_exits_two(tmp_path):
    pred = write_csv(tmp_path / "pred.csv", ["patient_id", "margins"], [["p1", "clear"]])
    ref = write_csv(tmp_path / "ref.csv", ["patient_id", "margins"], [["P-001", "clear"]])
    code, output = invoke("reports", "evaluate", str(pred), str(ref), "--id-column",
                          "patient_id", "--json", str(tmp_path / "m.json"))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output
    assert "pred.csv" in errors[0] and "ref.csv" in errors[0] and "patient_id" in errors[0]
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- CSV injection


def test_formula_ids_are_guarded_in_labels_and_cohort_and_round_trip(tmp_path):
    from fivewsi.cohort.table import read_cohort

    ids = ["=HYPERLINK(\"http://x\")", "+1", "-2", "@p", "plain"]
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"],
                        [[i, ANSWER] for i in ids])
    labels = tmp_path / "LABELS.csv"
    code, output = invoke("reports", "normalize", str(answers), "--answer-column", "answer",
                          "--out", str(labels))
    assert code == 0, output
    with open(labels, newline="", encoding="utf-8") as handle:
        written = [row[0] for row in csv.reader(handle)][1:]
    assert written == ["'" + i for i in ids[:4]] + ["plain"]  # no cell starts a formula

    # reports evaluate reads them back: every id matches itself
    code, output = invoke("reports", "evaluate", str(labels), str(labels), "--id-column",
                          "patient_id", "--json", str(tmp_path / "m.json"))
    assert code == 0, output
    import json
    assert json.loads((tmp_path / "m.json").read_text())["n_common"] == len(ids)

    # cohort merge joins the guarded LABELS.csv ids with the user's raw slide ids
    slides = write_csv(tmp_path / "slides.csv", ["slide_id", "label"], [[i, "X"] for i in ids])
    cohort = tmp_path / "cohort.csv"
    code, output = invoke("cohort", "merge", str(slides), "--labels", str(labels),
                          "--out", str(cohort))
    assert code == 0, output
    rows = read_cohort(cohort)
    assert [r.slide_id for r in rows] == ids
    assert all(r.report_label for r in rows)
    with open(cohort, newline="", encoding="utf-8") as handle:
        cells = [row[0] for row in csv.reader(handle)][1:]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
