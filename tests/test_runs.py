"""The run record (run.json): round trip, format versions, and refusing bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fivewsi.errors import RunError
from fivewsi.runs.record import (
    RUN_FILE,
    RUN_FORMAT,
    ClassRecord,
    ModelRecord,
    RunRecord,
    read_record,
    write_record,
)


def _record() -> RunRecord:
    return RunRecord(
        stage="classes",
        config={"lr": 0.0003, "model": "abmil"},
        model=ModelRecord(architecture="abmil", in_dim=16, n_classes=2, args={"dim": 32}),
        classes=[ClassRecord(name="LUAD", description="adenocarcinoma"),
                 ClassRecord(name="LUSC", description="squamous cell carcinoma")],
        split={"n_train": 4, "n_val": 0},
    )


def test_round_trip(tmp_path: Path) -> None:
    record = _record()
    path = write_record(tmp_path, record)
    assert path == tmp_path / RUN_FILE and not list(tmp_path.glob(".*tmp*"))
    again = read_record(tmp_path)
    assert again == record and again.format == RUN_FORMAT
    assert again.model.task().in_dim == 16 and again.status == "running"
    finished = again.model_copy(update={"status": "finished", "result": {"epochs": 3}})
    write_record(tmp_path, finished)
    assert read_record(tmp_path).result == {"epochs": 3}


def _write(folder: Path, data: object) -> Path:
    (folder / RUN_FILE).write_text(json.dumps(data) if not isinstance(data, str) else data)
    return folder


def test_refuses_missing_broken_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"no run\.json"):
        read_record(tmp_path)
    with pytest.raises(RunError, match="not valid JSON"):
        read_record(_write(tmp_path, "{not json"))
    with pytest.raises(RunError, match="not a run record"):
        read_record(_write(tmp_path, [1, 2]))
    data = _record().model_dump(mode="json")
    with pytest.raises(RunError, match="format 99 is not known"):
        read_record(_write(tmp_path, {**data, "format": 99}))
    with pytest.raises(RunError, match="stagee"):
        read_record(_write(tmp_path, {**data, "stagee": "classes"}))
    without_model = {k: v for k, v in data.items() if k != "model"}
    with pytest.raises(RunError, match="model"):
        read_record(_write(tmp_path, without_model))
    with pytest.raises(RunError, match="status"):
        read_record(_write(tmp_path, {**data, "status": "half-done"}))


def test_reads_the_layout_before_the_typed_record(tmp_path: Path) -> None:
    """Format 1 (no "format" key): the model as name + kind + options + text encoder."""
    old = {
        "status": "finished", "stage": "classes", "config": {"dim": 32},
        "model": {"name": "five", "kind": "text", "in_dim": 16,
                  "options": {"dim": 32, "heads": 4, "n_learnable_prompts": 2},
                  "questions": ["Q1?"], "question_keys": ["q1"],
                  "text_encoder": {"name": "all-minilm-l6-v2", "lora": True, "lora_r": 4}},
        "in_dim": 16, "prompt_names": ["Q1?", "learnable-1", "learnable-2"],
        "classes": [{"name": "A", "description": "a"}, {"name": "B", "description": "b"}],
    }
    record = read_record(_write(tmp_path, old))
    assert record.model.architecture == "five" and record.model.n_classes == 2
    assert record.model.args == {"dim": 32, "heads": 4, "n_learnable_prompts": 2,
                                 "text_encoder": "all-minilm-l6-v2", "lora": True, "lora_r": 4}
    assert record.model.prompt_names[-1] == "learnable-2" and record.texts_file is None
