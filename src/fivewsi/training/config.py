"""Settings of ``fivewsi train``: one validated pydantic model, stored verbatim in ``run.json``.

The config holds training settings, the model's registry name (``model``) and its own options
(``model_options``), validated against the options class the model declares
(:attr:`fivewsi.model.registry.ModelSpec.options`) when the config is built, so a misspelt
option fails at start-up; the stored config holds them with every default filled in.

Defaults are for the CPU recipe: a frozen text encoder (its embeddings cached per string) and a
trainable text projection, prompts and TFS aggregator. The paper's GPU recipe (Bio_ClinicalBERT
with LoRA, lr 3e-6 for the text side and 3e-5 for the aggregator, 100 epochs, batch 1 with
gradient accumulation 8) is ``model_options={"lora": True}, lr=3e-5, epochs=100, batch_size=1,
accumulate=8``.

Example:
    >>> config = TrainConfig(features="feats", cohort="cohort.csv", out="runs/r0")
    >>> config.lr, config.sample_ratio, config.negatives
    (0.0003, 0.25, 'all')
    >>> config.model_options["dim"], config.model_options["attention"]
    (512, 'local')
    >>> TrainConfig(features="f", cohort="c.csv", out="r", model="abmil",
    ...             model_options={"dimm": 8})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainConfig
    ...dimm...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fivewsi.errors import TrainStageError
from fivewsi.training.recipes import Recipe

#: Settings that may change between a run and its resumption without changing the result
#: (where it runs, how it reports progress, whether to overwrite).
NON_RESULT_SETTINGS = frozenset({"out", "progress", "overwrite", "device", "workers", "cache_gb"})


class TrainError(TrainStageError):
    """Training cannot start as asked (no usable slides, mismatched run, bad --init)."""


class TrainConfig(BaseModel):
    """Everything that defines a training run.

    ``lr`` is the learning rate of the aggregator, prompts and text projection; LoRA weights of
    the text encoder train at ``lr * text_lr_ratio`` (the paper's ×10 ratio). Warm-up is linear
    over ``warmup_epochs``, then the rate follows a cosine to zero at ``epochs``.
    """

    model_config = ConfigDict(extra="forbid")

    features: Path = Field(description="folder of bags (<slide_id>.h5/.pt, any layout below it)")
    cohort: Path = Field(description="cohort CSV: slide_id,label,report_label,split")
    out: Path = Field(description="run folder")
    classes: Path | None = Field(None, description="classes CSV: name,description")
    questions: str = Field("lung", description="question set name or YAML file")
    init: Path | None = Field(None, description="run whose FiVE weights start this one")
    model: str = "five"
    objective: Literal["auto", "reports", "classes"] = "auto"

    epochs: int = Field(30, ge=1, le=100_000)
    min_steps: int = Field(
        200, ge=0, description="optimizer steps at least: small (few-shot) sets get more epochs"
    )
    batch_size: int = Field(8, ge=1)
    accumulate: int = Field(1, ge=1, description="batches per optimizer step")
    lr: float = Field(3e-4, gt=0, le=1.0)
    text_lr_ratio: float = Field(0.1, gt=0, le=10.0)
    weight_decay: float = Field(1e-3, ge=0)
    warmup_epochs: float = Field(2.0, ge=0)
    seed: int = Field(1024, ge=0)
    negatives: Literal["batch", "all"] = "all"
    max_drop_fraction: float = Field(0.5, ge=0, lt=1, description="of question fields per step")

    shots: int | None = Field(None, ge=1, description="labelled slides per class (few-shot)")
    sample_ratio: float = Field(0.25, gt=0, le=1, description="patches drawn per training slide")
    max_patches: int = Field(4096, ge=1, description="cap on patches per training slide")
    val_fraction: float = Field(0.15, ge=0, lt=1)
    val_rows: bool | None = Field(
        None,
        description="use the cohort's val rows for validation; None: yes without shots, no with "
        "shots (a k-shot run's only labelled slides are its shots)",
    )
    patience: int | None = Field(10, ge=1, description="early stopping (needs a validation set)")

    model_options: dict[str, Any] = Field(
        default_factory=dict, description="the model's own options over its defaults"
    )
    recipe: Recipe = Field(
        default_factory=Recipe,
        description="few-shot recipe of a classes run (fivewsi.training.recipes); auto: "
        "partial for a text-aligned model from --init, full otherwise",
    )

    device: str = "auto"
    precision: str = "auto"
    workers: int = Field(0, ge=0, description="data loader processes")
    cache_gb: float = Field(2.0, ge=0, description="memory for loaded bags (LRU)")
    progress: bool = True
    overwrite: bool = False

    @field_validator("features", "cohort", "out", "classes", "init")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        # Absolute paths make a stored config comparable from any working directory.
        return None if value is None else value.expanduser().resolve()

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, value: str) -> str:
        known = {"auto", "32", "32-true", "16-mixed", "bf16-mixed", "64", "64-true"}
        if value not in known:
            raise ValueError(f"precision must be one of {sorted(known)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        from fivewsi.model.registry import get_model_spec

        try:
            spec = get_model_spec(self.model)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        try:
            self.model_options = spec.validate_options(self.model_options)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '(options)'}: {e['msg']}" for e in exc.errors()
            )
            raise ValueError(f"model_options of {self.model!r}: {problems}") from None
        if self.objective == "classes" and self.classes is None and spec.text_aligned:
            raise ValueError(
                f"objective 'classes' with {self.model} needs --classes (descriptions)"
            )
        if self.objective == "reports" and "reports" not in spec.objectives:
            raise ValueError(f"{self.model} cannot learn from reports (objectives: "
                             f"{', '.join(spec.objectives)})")
        if self.objective == "reports" and self.classes is not None:
            raise ValueError("objective 'reports' ignores --classes; leave one of them out")
        if self.recipe.name not in ("auto", "full") and (
            not spec.text_aligned or self.init is None or self.objective == "reports"
        ):
            raise ValueError(
                f"recipe {self.recipe.name!r} needs a text-aligned model trained on classes "
                "from a report-pretrained run (--init); use recipe 'full'"
            )
        if self.shots is not None and self.objective == "reports":
            raise ValueError("--shots selects labelled slides; it has no meaning for reports")
        return self

    def stored(self) -> dict[str, Any]:
        """The config as plain JSON values (paths as strings), as written to ``run.json``."""
        return json.loads(self.model_dump_json())

    def result_settings(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one."""
        return {k: v for k, v in self.stored().items() if k not in NON_RESULT_SETTINGS}
