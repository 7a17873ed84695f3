"""``fivewsi reports`` end to end, in subprocesses: extract, normalize, evaluate, exit codes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fivewsi.reports import load_question_set

FIVEWSI = [sys.executable, "-m", "fivewsi", "reports"]
KEYS = load_question_set("lung").keys

REPORTS = [
    (
        "p1",
        "Right upper lobe, lobectomy: invasive adenocarcinoma, poorly differentiated (G3). "
        "Angiolymphatic invasion: identified. Tumour invades through the visceral pleura (PL2). "
        "Bronchial and vascular margins free of tumour.",
    ),
    (
        "p2",
        "Left lower lobe: squamous cell carcinoma, moderately differentiated. No lymphovascular "
        "invasion. Visceral pleura not involved. Tumour confined to the lung. Margins negative.",
    ),
    ("p3", "   "),
]
ANSWERS = [
    ("p1", "Poorly differentiated; Unknown; Present (L1); PL2; Unknown; R0"),
    ("p2", "Moderately differentiated; Unknown; No; No; Confined to the lung; Negative"),
]


def run(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **(extra_env or {})}
    return subprocess.run(
        [*FIVEWSI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def write_csv(path: Path, header: list[str], rows: list[tuple[str, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def needs_rules() -> None:
    if importlib.util.find_spec("fivewsi.reports.rules") is None:
        pytest.skip("rules backend (fivewsi.reports.rules) not there yet")


def test_extract_rules_keeps_failed_rows(tmp_path: Path) -> None:
    needs_rules()
    reports = write_csv(tmp_path / "reports.csv", ["patient_id", "report"], REPORTS)
    out = tmp_path / "labels.csv"
    result = run("extract", str(reports), "--out", str(out), "--no-progress")
    assert result.returncode == 1, result.stderr  # p3 is empty: failed, batch went on
    rows = read_rows(out)
    assert [r["patient_id"] for r in rows] == ["p1", "p2", "p3"]
    assert list(rows[0])[:7] == ["patient_id", *KEYS]
    assert {f"{k}_evidence" for k in KEYS} | {"fine_grained_label", "backend", "status"} <= set(
        rows[0]
    )
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["backend"] == "rules" and rows[0]["differentiation"] == "poor"
    assert rows[2]["fine_grained_label"] == "" and rows[2]["error"]
    assert "1 failed" in result.stderr


def test_extract_all_ok_exits_zero(tmp_path: Path) -> None:
    needs_rules()
    reports = write_csv(tmp_path / "reports.csv", ["id", "text"], REPORTS[:2])
    out = tmp_path / "labels.csv"
    result = run(
        "extract", str(reports), "-o", str(out), "--id-column", "id", "--text-column", "text"
    )
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in read_rows(out)] == ["p1", "p2"]


@pytest.mark.parametrize(
    ("rows", "args", "message"),
    [
        ([("p1", "x")], ["--text-column", "body"], "available columns: patient_id, report"),
        ([("p1", "x"), ("p1", "y")], [], "duplicate patient_id"),
        ([("p1", "x")], ["--backend", "magic"], "unknown backend"),
        ([("p1", "x")], ["--backend", "llm"], "--model"),
        ([("p1", "x")], ["--questions", "no-such-set"], "lung"),
    ],
)
def test_extract_usage_errors_exit_two(
    tmp_path: Path, rows: list[tuple[str, str]], args: list[str], message: str
) -> None:
    reports = write_csv(tmp_path / "reports.csv", ["patient_id", "report"], rows)
    out = tmp_path / "labels.csv"
    result = run("extract", str(reports), "--out", str(out), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not out.exists()


def test_missing_input_file_exits_two(tmp_path: Path) -> None:
    result = run("extract", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "l.csv"))
    assert result.returncode == 2
    assert "nope.csv" in result.stderr


def test_normalize_and_evaluate(tmp_path: Path) -> None:
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"], ANSWERS)
    labels = tmp_path / "labels.csv"
    result = run("normalize", str(answers), "--answer-column", "answer", "--out", str(labels))
    assert result.returncode == 0, result.stderr
    rows = read_rows(labels)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert rows[0]["fine_grained_label"] == (
        "poorly differentiated; vascular invasion present; pleural invasion present; margins clear"
    )
    assert rows[1]["adjacent_invasion"] == "absent" and rows[1]["backend"] == "normalize"

    ref = tmp_path / "ref.csv"
    reference = [("p1", "poor", "present", "clear"), ("p2", "well", "absent", "clear")]
    write_csv(ref, ["patient_id", "differentiation", "vascular_invasion", "margins"], reference)
    metrics_path = tmp_path / "metrics.json"
    result = run(
        "evaluate", str(labels), str(ref), "--id-column", "patient_id", "--json", str(metrics_path)
    )
    assert result.returncode == 0, result.stderr
    assert "differentiation" in result.stderr and "50.0%" in result.stderr
    metrics = json.loads(metrics_path.read_text())
    assert metrics["fields"]["differentiation"]["agreement"] == 0.5
    assert metrics["fields"]["margins"]["agreement"] == 1.0
    assert metrics["fields"]["stas"]["n"] == 0  # no reference column: not scored


def test_normalize_unreadable_answer_exits_one(tmp_path: Path) -> None:
    rows = [*ANSWERS, ("p3", "Poorly differentiated; no idea")]
    answers = write_csv(tmp_path / "answers.csv", ["patient_id", "answer"], rows)
    labels = tmp_path / "labels.csv"
    result = run("normalize", str(answers), "--answer-column", "answer", "--out", str(labels))
    assert result.returncode == 1
    assert [r["status"] for r in read_rows(labels)] == ["ok", "ok", "failed"]


def test_evaluate_usage_errors_exit_two(tmp_path: Path) -> None:
    pred = write_csv(tmp_path / "pred.csv", ["patient_id", "margins"], [("p1", "clear")])
    result = run("evaluate", str(pred), str(pred), "--id-column", "case")
    assert result.returncode == 2 and "case" in result.stderr
    no_fields = write_csv(tmp_path / "ref.csv", ["patient_id", "x"], [("p1", "y")])
    result = run("evaluate", str(pred), str(no_fields), "--id-column", "patient_id")
    assert result.returncode == 2 and "field columns" in result.stderr


def test_reports_help_lists_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("extract", "normalize", "evaluate"):
        assert command in result.stdout


def test_extract_llm_against_a_local_server(tmp_path: Path) -> None:
    if importlib.util.find_spec("fivewsi.reports.llm") is None:
        pytest.skip("llm backend not there yet")
    fake = pytest.importorskip("fake_llm_server")
    reports = write_csv(tmp_path / "reports.csv", ["patient_id", "report"], REPORTS)
    out = tmp_path / "labels.csv"
    secret = "sk-test-secret-never-shown"
    with fake.FakeLLMServer() as server:
        server.script("Margins negative", "malformed", "malformed")  # p2 only
        result = run(
            "extract", str(reports), "--out", str(out), "--backend", "llm",
            "--base-url", server.url, "--model", "fake-model", "--api-key-env", "FIVEWSI_KEY",
            "--max-retries", "1", "--timeout", "5", "--no-progress",
            extra_env={"FIVEWSI_KEY": secret},
        )  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = read_rows(out)
    assert [r["status"] for r in rows] == ["ok", "needs_review", "failed"]
    assert rows[0]["backend"] == "llm:fake-model"
    assert secret not in result.stderr + result.stdout + out.read_text()
