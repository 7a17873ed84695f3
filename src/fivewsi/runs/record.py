"""``run.json``: the typed record of a trained run, and the file names of a run folder.

Layout of ``RUN/``:

- ``run.json`` — :class:`RunRecord`: status, the training config, the model (architecture +
  validated model arguments, enough to rebuild it), classes and their descriptions, the question
  set, the patch encoder read from the bags, preprocess settings, versions, seed, split, shots,
  skipped slides, the result and (fine-tuned runs) the calibration temperature.
- ``model.safetensors`` — the final weights, without frozen pretrained weights (a FiVE run's
  text encoder is recorded by name; LoRA weights are included).
- ``texts.safetensors`` — text-aligned runs: the text encoder's outputs for the run's own texts
  (question prompts, class descriptions, attribute phrases), so loading the run to predict never
  loads the text model for them.
- ``adapter.safetensors`` — ``tip-adapter`` runs only: the cache of the shots' slide embeddings
  and labels added to the class scores (:mod:`fivewsi.runs.adapter`).
- ``split.csv`` — the slides used for training and validation (``slide_id,role,label``).
- ``checkpoints/last.ckpt`` — Lightning checkpoint for exact resumption.
- ``logs/`` — metrics as CSV (and TensorBoard when installed).

Example:
    >>> record = ModelRecord(architecture="abmil", in_dim=16, n_classes=2, args={"dim": 32})
    >>> record.task().n_classes
    2
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fivewsi.errors import RunError
from fivewsi.model.interfaces import ModelTask
from fivewsi.utils.atomic import write_json_atomic

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
TEXTS_FILE = "texts.safetensors"
SPLIT_FILE = "split.csv"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
#: Where ``fivewsi evaluate`` writes by default (``RUN/evaluation/SPLIT``).
EVALUATION = "evaluation"
#: What an evaluation writes; the few-shot grid writes them at the top of each cell's run.
EVALUATION_FILES = (
    "metrics.json", "predictions.csv", "patient_predictions.csv",
    *(f"{level}{name}.png" for level in ("", "patient_")
      for name in ("roc", "confusion", "reliability")),
)

#: Version of the ``run.json`` layout this code writes; older layouts are converted on reading.
RUN_FORMAT = 2


class ClassRecord(BaseModel):
    """A class of the run and the description a text-aligned model scores it by."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str


class ModelRecord(BaseModel):
    """How to rebuild the run's model: registry architecture + model arguments.

    Attributes:
        architecture: the registered model name (``fivewsi.model.registry``).
        in_dim: patch feature size.
        n_classes: classes of the head (0 for a reports-only run).
        questions: question prompts' texts (text-aligned models), in prompt order.
        question_keys: the questions' keys, in the same order.
        args: the model's options, validated, defaults filled in.
        prompt_names: names of the rows of ``prompt_attention`` ([] without prompts).
    """

    model_config = ConfigDict(extra="forbid")

    architecture: str
    in_dim: int = Field(ge=1)
    n_classes: int = Field(0, ge=0)
    questions: list[str] = Field(default_factory=list)
    question_keys: list[str] = Field(default_factory=list)
    args: dict[str, Any] = Field(default_factory=dict)
    prompt_names: list[str] = Field(default_factory=list)

    def task(self) -> ModelTask:
        return ModelTask(self.in_dim, self.n_classes, tuple(self.questions))


class CalibrationRecord(BaseModel):
    """The temperature a fine-tuned run divides its class scores by before the softmax.

    Attributes:
        temperature: T (1: probabilities are the plain softmax of the scores).
        fitted_on: ``"val"`` (the run's validation slides), ``"train"`` (its training slides:
            no validation slides; T is then kept ≥ 1) or ``"none"`` (too few slides or a single
            class: T = 1).
        n_slides: slides T was fitted on.
        nll_before / nll_after: mean negative log-likelihood of those slides at T = 1 / at T.
    """

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, gt=0)
    fitted_on: Literal["val", "train", "none"] = "none"
    n_slides: int = Field(0, ge=0)
    nll_before: float | None = None
    nll_after: float | None = None


class RunRecord(BaseModel):
    """The contents of ``run.json``.

    The sections kept as plain dicts (``config``, ``question_set``, ``feature_encoder``,
    ``preprocess``, ``versions``, ``split``, ``skipped_slides``, ``result``) are written by
    training and read back as they are.
    """

    model_config = ConfigDict(extra="forbid")

    format: int = RUN_FORMAT
    status: Literal["running", "finished"] = "running"
    created: str | None = None
    finished: str | None = None
    fivewsi_version: str | None = None
    stage: Literal["reports", "classes"]
    config: dict[str, Any] = Field(default_factory=dict)
    model: ModelRecord
    classes: list[ClassRecord] | None = None
    question_set: dict[str, Any] = Field(default_factory=dict)
    feature_encoder: dict[str, Any] = Field(default_factory=dict)
    preprocess: dict[str, Any] | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    shots: int | None = None
    init: str | None = None
    split: dict[str, Any] = Field(default_factory=dict)
    skipped_slides: dict[str, Any] = Field(default_factory=dict)
    texts_file: str | None = None
    result: dict[str, Any] | None = None
    #: Fine-tuned runs: the fitted temperature; None (older runs, pretrained runs) means T = 1.
    calibration: CalibrationRecord | None = None
    #: ``tip-adapter`` runs: the shots' cache file (``fivewsi.runs.adapter``), applied to the
    #: run's own classes by ``load_model``; None for every other run.
    adapter_file: str | None = None

    @property
    def finished_ok(self) -> bool:
        return self.status == "finished"

    @property
    def temperature(self) -> float:
        """The temperature of the class scores (1 when the run has no calibration)."""
        return self.calibration.temperature if self.calibration is not None else 1.0


def read_record(run: str | os.PathLike[str]) -> RunRecord:
    """The :class:`RunRecord` of a run folder; :class:`RunError` when there is none, it is
    not JSON, or it does not fit (unknown format version, missing or misspelt fields)."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a fivewsi run folder: no {RUN_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a run record (a JSON object)")
    version = data.get("format", 1)
    if version == 1:
        data = _from_format_1(data)
    elif version != RUN_FORMAT:
        raise RunError(
            f"{path}: run format {version!r} is not known to this fivewsi (it reads formats 1 "
            f"and {RUN_FORMAT}); update fivewsi or retrain the run"
        )
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(record)'}: {e['msg']}" for e in exc.errors()
        )
        raise RunError(f"{path}: not a valid run record ({problems})") from None


def write_record(run: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``record`` as ``RUN/run.json`` atomically."""
    path = Path(run) / RUN_FILE
    write_json_atomic(path, record.model_dump(mode="json"))
    return path


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A run.json written before the typed record (fivewsi 0.1 main) in the current layout."""
    data = dict(data)
    old = dict(data.get("model") or {})
    if "name" not in old:
        raise RunError("run.json has no model section (name, options)")
    args = dict(old.get("options") or {})
    text = old.get("text_encoder") or {}
    if text:
        args["text_encoder"] = text.get("name")
        lora_keys = ("lora", "lora_r", "lora_alpha", "lora_dropout")
        args.update({key: text[key] for key in lora_keys if key in text})
    classes = data.get("classes") or []
    data["model"] = {
        "architecture": old["name"],
        "in_dim": old.get("in_dim", data.get("in_dim")),
        "n_classes": old.get("n_classes", len(classes)),
        "questions": old.get("questions") or [],
        "question_keys": old.get("question_keys") or [],
        "args": args,
        "prompt_names": data.get("prompt_names") or [],
    }
    data.pop("in_dim", None)
    data.pop("prompt_names", None)
    data["format"] = RUN_FORMAT
    return data
