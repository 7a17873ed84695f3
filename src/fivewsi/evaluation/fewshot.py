"""The few-shot grid: every model × k labelled slides per class × seed, trained and tested.

Each cell trains one run (``fivewsi.training.train`` with ``shots=k, seed=seed``) into
``OUT/runs/<model>/k<k>/seed<seed>`` and evaluates it on the cohort's test split into the same
folder (``metrics.json``, ``predictions.csv``). With a report-pretrained FiVE run
(``pretrained``), a ``five+reports`` row starts from it with the default few-shot recipe
(``fivewsi.training.recipes``: ``partial`` unless ``train_options`` or the row's
``overrides`` set ``recipe``), and a zero-shot cell (k = 0,
``OUT/runs/five+reports/k0``) scores the pretrained run against the class descriptions alone.

The grid resumes: a cell whose ``metrics.json`` exists is read back, not redone (after checking
that its run was trained with the same settings), and an interrupted run resumes from its
checkpoint. Seeds fix the draw of the k slides per class (the same draw for every model, so
models are compared on the same slides), the initialisation and the patch sampling; the
evaluation never tunes anything on the test split. A class with fewer than k training slides
trains on all of them: ``k_used`` records the labelled slides per class a cell really had (its
smallest class), and a column whose runs had fewer is titled by what was used
(``k=4 (asked 100)``).

Results: ``OUT/fewshot.csv`` (long format: model, k, k_used, metric, mean, sd, n_seeds,
values), ``OUT/fewshot.md`` (a table per metric, rows models, columns k, best mean per column
in bold; then, for balanced accuracy and AUC, each model's paired difference from the best
label-only baseline at each k with a 95 % interval, see :func:`paired_differences`),
``OUT/fewshot_paired.csv`` (those differences, long format), ``OUT/cells.csv`` (one line per
cell with its metrics, status and timings) and ``OUT/fewshot.png`` (balanced accuracy and AUC
against k for every model, mean ± 95 % Student-t interval over seeds, zero-shot as a horizontal
line; linked from ``fewshot.md``).

Example:
    >>> config = FewshotConfig(features="feats", cohort="cohort.csv", classes="classes.csv",
    ...                        out="fewshot", models=["five", "abmil"], shots=[1, 4])
    >>> result = run_fewshot(config)  # doctest: +SKIP
    >>> result.mean("abmil", 4)  # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fivewsi.runs.record import RunRecord
    from fivewsi.training.config import TrainConfig

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fivewsi.errors import EvaluationStageError, RunError
from fivewsi.evaluation.metrics import METRICS
from fivewsi.utils.atomic import write_text_atomic
from fivewsi.utils.outputs import check_output_folder

log = logging.getLogger(__name__)

#: The row of FiVE fine-tuned from a report-pretrained run.
PRETRAINED_ROW = "five+reports"
#: The figure of the grid (balanced accuracy and AUC against k), linked from ``fewshot.md``.
FIGURE_FILE = "fewshot.png"
#: The headline metric of the tables.
HEADLINE = "balanced_accuracy"
#: Epochs of every model when not set: few-shot training sets are tiny, so an epoch is a few
#: steps.
DEFAULT_EPOCHS = 40
#: TrainConfig settings the grid sets itself.
_GRID_SETTINGS = frozenset(
    {"features", "cohort", "out", "classes", "init", "model", "model_options", "shots", "seed",
     "objective", "epochs"}
)
#: Few-shot training defaults: no validation slides carved out of k shots, fixed epochs.
_FEWSHOT_TRAIN_DEFAULTS: dict[str, Any] = {"val_fraction": 0.0, "patience": None}
#: Calibration metrics of each cell (``metrics.json``), lower is better; absent in old cells.
CALIBRATION_METRICS = ("ece", "brier", "log_loss")
#: Every metric a cell keeps: the discrimination metrics, then calibration.
CELL_METRICS = (*METRICS, *CALIBRATION_METRICS)
_CELL_COLUMNS = ("model", "k", "k_used", "seed", "status", *CELL_METRICS, "n_test", "train_seconds",
                 "eval_seconds", "run", "error")


class FewshotError(EvaluationStageError, ValueError):
    """The grid cannot run as configured, or its folder holds results of other settings."""


class FewshotConfig(BaseModel):
    """Settings of the few-shot grid (``fivewsi fewshot``), validated whole when built.

    Every row's training config (the base ``train_options``, the row's ``overrides`` and its
    ``model_options``) is built once at construction, so a misspelt setting or model option
    fails at start-up, naming the row, before any cell runs.

    Attributes:
        features: folder of bags.
        cohort: cohort CSV with train and test splits (shots are drawn from train).
        classes: classes CSV (name, description); FiVE scores slides against the descriptions.
        out: the grid's folder.
        models: model names (see ``fivewsi.model.registry``); None: ``five`` and every
            label-only model. ``five+reports`` is added when ``pretrained`` is set.
        pretrained: a report-pretrained FiVE run: adds the ``five+reports`` row (fine-tuned
            from it, with its model options) and its zero-shot cell (k = 0).
        shots: labelled slides per class.
        seeds: one run per seed and k; at least 5 for a usable sd (fewer are allowed, with a
            warning, for quick checks).
        epochs: epochs for every model (an int) or per model name ({"abmil": 60}); models
            not named use :data:`DEFAULT_EPOCHS`. Training raises them to make at least
            ``TrainConfig.min_steps`` optimizer steps (set it in ``train_options``).
        train_options: ``TrainConfig`` training settings for every run (lr, batch_size,
            device, min_steps, ...); few-shot runs hold out no validation slides from the k
            shots and stop at a fixed budget. A cohort's ``val`` rows are not used (the k shots
            are a run's only labels) unless ``train_options`` sets ``val_rows: true``.
        overrides: per row, ``TrainConfig`` training settings over ``train_options``.
        model_options: per row, the model's own options (e.g. ``{"five": {"attention":
            "full"}, "abmil": {"dim": 256}}``); not for ``five+reports``, which keeps the
            pretrained run's.
        n_bootstrap: bootstrap resamples of each cell's confidence intervals.
        progress: show a progress bar over the cells.
    """

    model_config = ConfigDict(extra="forbid")

    features: Path
    cohort: Path
    classes: Path | None = None
    out: Path
    models: list[str] | None = None
    pretrained: Path | None = None
    shots: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    epochs: int | dict[str, int] | None = None
    train_options: dict[str, Any] = Field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    n_bootstrap: int = Field(1000, ge=0)
    progress: bool = True

    @field_validator("features", "cohort", "classes", "out", "pretrained")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("shots")
    @classmethod
    def _check_shots(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError(f"shots must be positive integers, got {value}")
        return sorted(set(value))

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, value: list[int]) -> list[int]:
        if not value or any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct non-negative integers, got {value}")
        return value

    @field_validator("epochs")
    @classmethod
    def _check_epochs(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        values = [value] if isinstance(value, int) else list((value or {}).values())
        if any(v < 1 for v in values):
            raise ValueError(f"epochs must be positive, got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> FewshotConfig:
        for options in (self.train_options, *self.overrides.values()):
            managed = sorted(_GRID_SETTINGS & set(options))
            if managed:
                raise ValueError(f"the grid sets {managed} itself; use the grid's own settings")
        if self.models is not None:
            if not self.models:
                raise ValueError("models is empty")
            if len(set(self.models)) != len(self.models):
                raise ValueError(f"models listed twice: {self.models}")
            if PRETRAINED_ROW in self.models and self.pretrained is None:
                raise ValueError(f"model {PRETRAINED_ROW!r} needs pretrained (a reports run)")
        if self.pretrained is not None and self.classes is None:
            raise ValueError("pretrained needs classes (descriptions to score slides against)")
        if PRETRAINED_ROW in self.model_options:
            raise ValueError(f"{PRETRAINED_ROW} keeps the pretrained run's model options")
        rows = self.model_names()
        for what, per_row in (("overrides", self.overrides), ("model_options", self.model_options)):
            stray = sorted(set(per_row) - set(rows))
            if stray:
                raise ValueError(f"{what} for {stray}, which are not rows of the grid {rows}")
        for row in rows:  # every row's training config, once, before any cell runs
            if row != PRETRAINED_ROW:
                try:
                    self.train_config(row, k=self.shots[0], seed=self.seeds[0])
                except ValidationError as exc:
                    problems = "; ".join(
                        f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}"
                        for e in exc.errors()
                    )
                    raise ValueError(f"row {row!r}: {problems}") from None
        return self

    def model_names(self) -> list[str]:
        """The grid's rows: the report-pretrained FiVE first, then the models in order."""
        from fivewsi.model.registry import list_models

        if self.models is None:
            labels = [n for n, spec in list_models().items() if not spec.text_aligned]
            names = ["five", *labels]
        else:
            known = set(list_models())
            unknown = [m for m in self.models if m not in known and m != PRETRAINED_ROW]
            if unknown:
                raise FewshotError(f"unknown models {unknown}; known: {sorted(known)}")
            names = list(self.models)
        if self.pretrained is not None and PRETRAINED_ROW not in names:
            names.insert(0, PRETRAINED_ROW)
        return names

    def epochs_for(self, model: str) -> int:
        """Epochs of ``model`` in this grid."""
        if isinstance(self.epochs, int):
            return self.epochs
        if self.epochs and model in self.epochs:
            return self.epochs[model]
        return DEFAULT_EPOCHS

    def train_config(
        self, row: str, *, k: int, seed: int, pretrained: RunRecord | None = None
    ) -> TrainConfig:
        """The training config of the cell (``row``, ``k``, ``seed``); ``pretrained`` is the
        record of the pretrained run (the ``five+reports`` row trains its architecture)."""
        from fivewsi.training.config import TrainConfig

        options: dict[str, Any] = {
            **_FEWSHOT_TRAIN_DEFAULTS,
            "progress": False,
            **self.train_options,
            **self.overrides.get(row, {}),
        }
        if row == PRETRAINED_ROW:
            assert pretrained is not None
            model, model_options = pretrained.model.architecture, pretrained.model.args
        else:
            model, model_options = row, self.model_options.get(row, {})
        return TrainConfig(
            features=self.features,
            cohort=self.cohort,
            out=self.out / "runs" / row / f"k{k}" / f"seed{seed}",
            classes=self.classes,
            init=self.pretrained if row == PRETRAINED_ROW else None,
            model=model,
            model_options=model_options,
            objective="classes",
            epochs=self.epochs_for(row),
            shots=k,
            seed=seed,
            **options,
        )


@dataclass
class FewshotCell:
    """One cell of the grid: a model trained on k slides per class with one seed, tested.

    ``seed`` is None for the zero-shot cell (k = 0); ``status`` is "trained" (done now),
    "reused" (read back) or "failed" (``error`` says why).
    """

    model: str
    k: int
    seed: int | None
    run: Path
    status: str = "pending"
    metrics: dict[str, float | None] = field(default_factory=dict)
    n_test: int = 0
    k_used: int | None = None  # labelled training slides of the smallest class (k when enough)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    error: str | None = None


@dataclass
class TableRow:
    """Mean and sample sd over seeds of one metric for one model and k."""

    model: str
    k: int
    metric: str
    mean: float | None
    sd: float | None
    n_seeds: int
    values: list[float]
    k_used: int | None = None  # fewest labelled training slides per class in any seed's run
    seeds: list[int | None] = field(default_factory=list)  # the seed of each of ``values``


#: Metrics of the paired comparison with the best label-only baseline.
PAIRED_METRICS = ("balanced_accuracy", "auc")
#: Confidence of the paired intervals.
PAIRED_CONFIDENCE = 0.95


@dataclass
class PairedRow:
    """One model's difference from the best label-only baseline at one k, for one metric.

    ``differences`` are (model − baseline) per seed, over the seeds both have values for (same
    seed: same shots, same initialisation draw, same test slides); ``mean`` is their mean and
    ``low``/``high`` the Student-t interval of that mean (None with fewer than 2 pairs).
    """

    model: str
    k: int
    metric: str
    baseline: str
    mean: float
    low: float | None
    high: float | None
    n_pairs: int
    differences: list[float]
    seeds: list[int]


@dataclass
class FewshotResult:
    """The grid's cells, its summary table and the files written."""

    out: Path
    models: list[str]
    shots: list[int]
    cells: list[FewshotCell]
    table: list[TableRow]
    csv: Path
    markdown: Path
    seconds: float
    figure: Path | None = None  # fewshot.png (None when no cell had a value to draw)

    @property
    def failed(self) -> list[FewshotCell]:
        return [c for c in self.cells if c.status == "failed"]

    def mean(self, model: str, k: int, metric: str = HEADLINE) -> float | None:
        """Mean over seeds of ``metric`` for ``model`` at ``k`` (None when it has no value)."""
        for row in self.table:
            if (row.model, row.k, row.metric) == (model, k, metric):
                return row.mean
        return None


def run_fewshot(config: FewshotConfig) -> FewshotResult:
    """Train and test every model × k × seed cell (resuming finished cells); write the tables.

    Cells that fail are logged and recorded (``cells.csv``) and left out of the tables; the
    others go on.
    """
    from fivewsi.runs.record import read_record
    from fivewsi.utils.logs import make_progress

    start = time.perf_counter()
    check_output_folder(config.out)  # writable, not a file: before any cell is trained
    models = config.model_names()
    if len(config.seeds) < 5:
        log.warning("%d seeds: mean ± sd over fewer than 5 seeds is unreliable", len(config.seeds))
    pretrained = None
    if config.pretrained is not None:
        try:
            pretrained = read_record(config.pretrained)
        except RunError as exc:
            raise FewshotError(f"pretrained run: {exc}") from None
        config.train_config(PRETRAINED_ROW, k=config.shots[0], seed=config.seeds[0],
                            pretrained=pretrained)  # fails now, not in every cell
    runs = config.out / "runs"
    cells: list[FewshotCell] = []
    if config.pretrained is not None:
        cells.append(FewshotCell(PRETRAINED_ROW, 0, None, runs / PRETRAINED_ROW / "k0"))
    # k, then seed, then model: an interrupted grid already compares the models at small k.
    cells += [
        FewshotCell(model, k, seed, runs / model / f"k{k}" / f"seed{seed}")
        for k in config.shots
        for seed in config.seeds
        for model in models
    ]
    log.info(
        "few-shot grid: %d models × %d shots × %d seeds = %d cells → %s",
        len(models), len(config.shots), len(config.seeds), len(cells), config.out,
    )
    with make_progress(config.progress) as bars:
        bar = bars.add_task("few-shot cells", total=len(cells), rate="")
        for cell in cells:
            bars.update(bar, rate=f"{cell.model} k={cell.k}")
            _run_cell(cell, config, pretrained)
            _write_cells(config.out / "cells.csv", cells)
            bars.advance(bar)

    # Other processes may fill the same grid with other models (one process per model
    # subset): the tables cover every finished cell of this grid's shots and seeds.
    others = _finished_elsewhere(config, cells)
    if others:
        log.info("tables include %d finished cells of other models found in %s",
                 len(others), runs)
    table = summarize([*cells, *others])
    csv_path, md_path, figure = write_tables(config.out, table, n_seeds=len(config.seeds))
    result = FewshotResult(
        out=config.out,
        models=[*models, *dict.fromkeys(c.model for c in others)],
        shots=([0] if config.pretrained is not None else []) + list(config.shots),
        cells=cells,
        table=table,
        csv=csv_path,
        markdown=md_path,
        seconds=time.perf_counter() - start,
        figure=figure,
    )
    _log_summary(result)
    return result


def _finished_elsewhere(config: FewshotConfig, cells: Sequence[FewshotCell]) -> list[FewshotCell]:
    """Finished cells under ``OUT/runs`` of models this call did not run, for this grid's
    shots and seeds (and the zero-shot cell)."""
    runs = config.out / "runs"
    mine = {c.model for c in cells}
    found = []
    paths = [*sorted(runs.glob("*/k*/metrics.json")), *sorted(runs.glob("*/k*/seed*/metrics.json"))]
    for path in paths:
        seeded = path.parent.name.startswith("seed")
        model_dir = path.parents[2] if seeded else path.parents[1]
        k_text = (path.parents[1] if seeded else path.parent).name[1:]
        seed_text = path.parent.name[4:] if seeded else None
        if model_dir.name in mine or not k_text.isdigit():
            continue
        k, seed = int(k_text), int(seed_text) if seed_text and seed_text.isdigit() else None
        if (k == 0 and seed is not None) or (k > 0 and (k not in config.shots
                                                        or seed not in config.seeds)):
            continue
        cell = FewshotCell(model_dir.name, k, seed, path.parent, "reused")
        try:
            _read_metrics(cell, path)
        except (OSError, ValueError, KeyError):
            continue
        found.append(cell)
    return found


def _run_cell(cell: FewshotCell, config: FewshotConfig, pretrained: RunRecord | None) -> None:
    from fivewsi.evaluation.evaluate import evaluate_run

    metrics_path = cell.run / "metrics.json"
    try:
        train_config = None
        if cell.k > 0:
            assert cell.seed is not None
            train_config = config.train_config(
                cell.model, k=cell.k, seed=cell.seed, pretrained=pretrained
            )
        if metrics_path.is_file():
            _check_same_settings(cell, train_config, config)
            _read_metrics(cell, metrics_path)
            cell.status = "reused"
            return
        if train_config is not None:
            from fivewsi.training.train import train

            tic = time.perf_counter()
            train(train_config)
            cell.train_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        evaluate_run(
            config.pretrained if cell.k == 0 else cell.run,
            config.features,
            config.cohort,
            split="test",
            classes=config.classes if cell.k == 0 else None,
            out=cell.run,
            n_bootstrap=config.n_bootstrap,
            device=_eval_device(config),
        )
        cell.eval_seconds = time.perf_counter() - tic
        _read_metrics(cell, metrics_path)
        cell.status = "trained"
    except FewshotError:
        raise
    except Exception as exc:  # one failed cell is recorded; the grid goes on
        log.error("cell %s k=%d seed=%s failed: %s", cell.model, cell.k, cell.seed, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        cell.status = "failed"
        cell.error = f"{type(exc).__name__}: {exc}"


def _eval_device(config: FewshotConfig) -> str:
    device = str(config.train_options.get("device", "auto"))
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _check_same_settings(cell: FewshotCell, train_config: Any, config: FewshotConfig) -> None:
    """Refuse to reuse a finished cell whose run was trained (or scored) with other settings."""
    if train_config is None:  # zero-shot: the evaluated run and descriptions must match
        info = json.loads((cell.run / "metrics.json").read_text(encoding="utf-8"))
        expected = {"run": str(config.pretrained), "classes_source": str(config.classes)}
        found = {key: info.get(key) for key in expected}
        if found != expected:
            raise FewshotError(
                f"{cell.run} holds a zero-shot result of other settings ({found}, now "
                f"{expected}); use another out folder or delete it"
            )
        return
    from fivewsi.runs.record import RUN_FILE, read_record

    if not (cell.run / RUN_FILE).is_file():
        return
    try:
        stored = read_record(cell.run).config
    except RunError as exc:
        raise FewshotError(f"{cell.run}: {exc}") from None
    wanted = train_config.result_settings()
    differ = sorted(
        key for key, value in wanted.items() if key in stored and stored[key] != value
    )
    if differ:
        raise FewshotError(
            f"{cell.run} was trained with other settings ({', '.join(differ)}); use another out "
            "folder, or delete that cell to redo it"
        )


def _read_metrics(cell: FewshotCell, path: Path) -> None:
    info = json.loads(path.read_text(encoding="utf-8"))
    metrics = info["metrics"]
    cell.metrics = {name: metrics[name]["value"] for name in CELL_METRICS if name in metrics}
    cell.n_test = int(metrics["n"])
    cell.k_used = _k_used(cell)


def _k_used(cell: FewshotCell) -> int | None:
    """Labelled training slides of the smallest class in the cell's run (``split.csv``): k,
    or fewer when a class has fewer than k training slides."""
    from fivewsi.runs.record import SPLIT_FILE
    from fivewsi.utils.outputs import csv_value

    path = cell.run / SPLIT_FILE
    if cell.k == 0 or not path.is_file():
        return None
    counts: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("role") == "train" and row.get("label"):
                label = csv_value(row["label"])
                counts[label] = counts.get(label, 0) + 1
    used = min(counts.values(), default=0)
    if used < cell.k:
        log.warning("%s k=%d seed=%s: a class has only %d training slides, so k=%d was used",
                    cell.model, cell.k, cell.seed, used, used)
    return used


def summarize(cells: Sequence[FewshotCell]) -> list[TableRow]:
    """Mean and sample sd over seeds per model, k and metric, of the cells that have values.

    Example:
        >>> cells = [FewshotCell("m", 1, s, Path("."), "trained", {"auc": v})
        ...          for s, v in enumerate([0.6, 0.8])]
        >>> row = [r for r in summarize(cells) if r.metric == "auc"][0]
        >>> round(row.mean, 3), round(row.sd, 3), row.n_seeds
        (0.7, 0.141, 2)
    """
    groups: dict[tuple[str, int], list[FewshotCell]] = {}
    for cell in cells:
        if cell.status in ("trained", "reused"):
            groups.setdefault((cell.model, cell.k), []).append(cell)
    rows = []
    for (model, k), group in groups.items():
        for metric in CELL_METRICS:
            values = [float(c.metrics[metric]) for c in group if c.metrics.get(metric) is not None]
            mean = sum(values) / len(values) if values else None
            sd = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                if mean is not None and len(values) > 1
                else None
            )
            used = [c.k_used for c in group if c.k_used is not None]
            seeds = [c.seed for c in group if c.metrics.get(metric) is not None]
            rows.append(TableRow(model, k, metric, mean, sd, len(values), values,
                                 min(used) if used else None, seeds))
    return rows


def label_only_models(models: Sequence[str]) -> list[str]:
    """The names in ``models`` that are registered label-only models (the baselines).

    Example:
        >>> label_only_models(["five", "abmil", "not-a-model"])
        ['abmil']
    """
    from fivewsi.model.registry import list_models

    registered = list_models()
    return [m for m in models if m in registered and not registered[m].text_aligned]


def paired_differences(
    table: Sequence[TableRow],
    baselines: Sequence[str] | None = None,
    *,
    metrics: Sequence[str] = PAIRED_METRICS,
    confidence: float = PAIRED_CONFIDENCE,
) -> list[PairedRow]:
    """Each model's paired difference from the best label-only baseline, per k and metric.

    At each k (k ≥ 1) and metric, the baseline is the model of ``baselines`` (default: the
    registered label-only models in ``table``) with the best mean over seeds; it is picked
    after the fact, which favours the baseline. Every other model is paired with it seed by
    seed — the grid draws the same k slides per class for every model with a given seed and
    tests every model on the same test slides — and the interval is the Student-t interval of
    the mean paired difference: ``mean ± t(1 − α/2, n − 1) · sd / √n`` over the n seeds both
    have values for (sd: sample sd of the differences). It reflects the variation between
    seeds (shot draws and training), not the finite test set. Models without a paired seed
    are left out; with one pair the interval is None.

    Example:
        >>> rows = [TableRow("five", 1, "auc", 0.8, None, 3, [0.8, 0.9, 0.7], seeds=[0, 1, 2]),
        ...         TableRow("abmil", 1, "auc", 0.6, None, 3, [0.6, 0.7, 0.5], seeds=[0, 1, 2])]
        >>> [(r.model, r.baseline, round(r.mean, 3), r.low is not None)
        ...  for r in paired_differences(rows, ["abmil"])]
        [('five', 'abmil', 0.2, True)]
    """
    from scipy import stats

    if baselines is None:
        baselines = label_only_models(list(dict.fromkeys(r.model for r in table)))
    rows: list[PairedRow] = []
    for metric in metrics:
        by_cell = {(r.model, r.k): r for r in table if r.metric == metric and r.k > 0}
        for k in sorted({kk for _, kk in by_cell}):
            candidates = [by_cell[(b, k)] for b in baselines
                          if (b, k) in by_cell and by_cell[(b, k)].mean is not None]
            if not candidates:
                continue
            best = max(candidates, key=lambda r: r.mean)  # type: ignore[arg-type, return-value]
            base = {s: v for s, v in zip(best.seeds, best.values, strict=False) if s is not None}
            for (model, kk), row in by_cell.items():
                if kk != k or model == best.model:
                    continue
                pairs = [(s, v - base[s]) for s, v in zip(row.seeds, row.values, strict=False)
                         if s in base]
                if not pairs:
                    continue
                pairs.sort()
                diffs = [d for _, d in pairs]
                n = len(diffs)
                mean = sum(diffs) / n
                low = high = None
                if n > 1:
                    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
                    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
                    low, high = mean - half, mean + half
                rows.append(PairedRow(model, k, metric, best.model, mean, low, high, n, diffs,
                                      [int(s) for s, _ in pairs if s is not None]))
    return rows


def paired_csv(rows: Sequence[PairedRow]) -> str:
    """The long-format CSV of :func:`paired_differences` (``differences`` joined by ``;``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "k", "metric", "baseline", "mean_difference", "ci_low", "ci_high",
                     "n_pairs", "seeds", "differences"])
    for r in rows:
        writer.writerow([
            r.model, r.k, r.metric, r.baseline, _num(r.mean), _num(r.low), _num(r.high),
            r.n_pairs, ";".join(map(str, r.seeds)), ";".join(f"{d:.6g}" for d in r.differences),
        ])
    return buffer.getvalue()


def paired_markdown(rows: Sequence[PairedRow], models: Sequence[str] | None = None) -> str:
    """Markdown tables of :func:`paired_differences`: per metric, rows models, columns k,
    ``+d [low, high]`` in percentage points, ``*`` where the interval excludes 0.

    Example:
        >>> rows = [PairedRow("five", 1, "auc", "abmil", 0.2, 0.1, 0.3, 3, [0.1, 0.2, 0.3],
        ...                   [0, 1, 2])]
        >>> print(paired_markdown(rows).splitlines()[-1])
        | five | +20.0 [+10.0, +30.0] * |
    """
    if not rows:
        return ""
    order = list(models) if models is not None else []
    order += [m for m in dict.fromkeys(r.model for r in rows) if m not in order]
    shots = sorted({r.k for r in rows})
    level = f"{100 * PAIRED_CONFIDENCE:g} %"
    lines = [
        "",
        "## Paired differences from the best label-only baseline",
        "",
        "Difference from the label-only model with the best mean at that k (named in the "
        "first row; picked after the fact, which favours it), in percentage points: mean over "
        "seeds of (model − baseline), each seed giving both the same k shots and the same test "
        f"slides, with a {level} Student-t interval over the paired seed differences "
        "(mean ± t(0.975, n − 1) · sd / √n, n = seeds with both; it reflects seed-to-seed "
        "variation, not the finite test set). `*`: the interval excludes 0. No interval with "
        "one pair.",
    ]
    for metric in [m for m in PAIRED_METRICS if any(r.metric == m for r in rows)] + sorted(
        {r.metric for r in rows} - set(PAIRED_METRICS)
    ):
        mine = {(r.model, r.k): r for r in rows if r.metric == metric}
        baseline = {r.k: r.baseline for r in rows if r.metric == metric}
        lines += ["", f"### {metric}", "",
                  "| model | " + " | ".join(f"k={k}" for k in shots) + " |",
                  "|---|" + "---:|" * len(shots),
                  "| *baseline* | " + " | ".join(baseline.get(k, "") for k in shots) + " |"]
        for model in order:
            if not any(m == model for m, _ in mine):
                continue
            cells = []
            for k in shots:
                row = mine.get((model, k))
                if row is None:
                    cells.append("")
                    continue
                text = f"{100 * row.mean:+.1f}"
                if row.low is not None and row.high is not None:
                    text += f" [{100 * row.low:+.1f}, {100 * row.high:+.1f}]"
                    if row.low > 0 or row.high < 0:
                        text += " *"
                cells.append(text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_csv(table: Sequence[TableRow]) -> str:
    """The long-format CSV of the table (``values`` joined by ``;``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "k", "k_used", "metric", "mean", "sd", "n_seeds", "values"])
    for r in table:
        writer.writerow([
            r.model, r.k, "" if r.k_used is None else r.k_used, r.metric, _num(r.mean),
            _num(r.sd), r.n_seeds,
            ";".join(f"{v:.6g}" for v in r.values),
        ])
    return buffer.getvalue()


def metric_cells(
    table: Sequence[TableRow], metric: str
) -> tuple[dict[tuple[str, int], TableRow], set[tuple[str, int]]]:
    """``metric``'s rows by ``(model, k)``, and the cells holding the best mean of their k
    (the lowest for the calibration metrics, :data:`CALIBRATION_METRICS`).

    Example:
        >>> rows = [TableRow("a", 1, "auc", 0.7, 0.1, 2, [0.6, 0.8]),
        ...         TableRow("b", 1, "auc", 0.9, None, 1, [0.9])]
        >>> metric_cells(rows, "auc")[1]
        {('b', 1)}
    """
    by_cell = {(r.model, r.k): r for r in table if r.metric == metric}
    sign = -1.0 if metric in CALIBRATION_METRICS else 1.0
    top: dict[int, float] = {}
    for (_, k), row in by_cell.items():
        if row.mean is not None and (k not in top or sign * row.mean > sign * top[k]):
            top[k] = row.mean
    best = {cell for cell, row in by_cell.items()
            if row.mean is not None and math.isclose(row.mean, top[cell[1]], abs_tol=1e-12)}
    return by_cell, best


def table_markdown(
    table: Sequence[TableRow],
    *,
    n_seeds: int | None = None,
    baselines: Sequence[str] | None = None,
    figure: str | None = None,
) -> str:
    """One markdown table per metric: rows models, columns k, ``mean ± sd`` in %, best bold;
    then the paired differences from the best label-only baseline (:func:`paired_markdown`;
    ``baselines`` as in :func:`paired_differences`), when the table has a baseline. ``figure``:
    a relative link to the figure of the table (``fewshot.png``), shown below the introduction.

    Example:
        >>> rows = [TableRow("a", 1, "auc", 0.7, 0.1, 2, [0.6, 0.8]),
        ...         TableRow("b", 1, "auc", 0.9, None, 1, [0.9])]
        >>> print(table_markdown(rows).splitlines()[-2:])
        ['| a | 70.0 ± 10.0 |', '| b | **90.0** |']
    """
    models = list(dict.fromkeys(r.model for r in table))
    shots = sorted({r.k for r in table})
    seeds = f" over {n_seeds} seeds" if n_seeds else " over seeds"
    lines = [
        "# Few-shot results",
        "",
        f"Test-split metrics in %, mean ± sd{seeds}; k = labelled slides per class "
        "(k = 0: zero-shot from the report-pretrained run). Prediction = most probable class, "
        "nothing tuned on the test split. Best mean per column in bold.",
    ]
    if figure:
        lines += ["", f"![Balanced accuracy and AUC against k, mean ± 95 % t-interval over "
                      f"seeds; zero-shot as a dashed line]({figure})"]
    for metric in sorted({r.metric for r in table}, key=_metric_order):
        by_cell, best = metric_cells(table, metric)
        title = f"{metric} (headline)" if metric == HEADLINE else metric
        if metric in CALIBRATION_METRICS:
            title += " (calibration, lower is better)"
        lines += ["", f"## {title}", "",
                  "| model | " + " | ".join(k_label(k, table) for k in shots) + " |",
                  "|---|" + "---:|" * len(shots)]
        for model in models:
            cells = []
            for k in shots:
                row = by_cell.get((model, k))
                if row is None or row.mean is None:
                    cells.append("")
                    continue
                text = f"{100 * row.mean:.1f}"
                if row.sd is not None:
                    text += f" ± {100 * row.sd:.1f}"
                if (model, k) in best:
                    text = f"**{text}**"
                cells.append(text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    return text + paired_markdown(paired_differences(table, baselines), models)


def k_label(k: int, table: Sequence[TableRow]) -> str:
    """A column's title: ``k=4``, or ``k=2 (asked 4)`` when some class had only 2 training
    slides, so the runs of that column really had k = 2.

    Example:
        >>> k_label(4, [TableRow("a", 4, "auc", 0.7, None, 1, [0.7], k_used=2)])
        'k=2 (asked 4)'
    """
    used = [r.k_used for r in table if r.k == k and r.k_used is not None]
    if used and min(used) < k:
        return f"k={min(used)} (asked {k})"
    return f"k={k}"


def _metric_order(metric: str) -> int:
    order = [HEADLINE, *[m for m in CELL_METRICS if m != HEADLINE]]
    return order.index(metric) if metric in order else len(order)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def write_tables(
    out: Path, table: Sequence[TableRow], *, n_seeds: int | None = None
) -> tuple[Path, Path, Path | None]:
    """Write a grid's ``fewshot.csv``, ``fewshot_paired.csv``, ``fewshot.png`` and
    ``fewshot.md`` (which links the figure) into ``out``; the csv, markdown and figure paths
    (figure None when nothing could be drawn)."""
    csv_path, md_path = out / "fewshot.csv", out / "fewshot.md"
    write_text_atomic(csv_path, table_csv(table))
    write_text_atomic(out / "fewshot_paired.csv", paired_csv(paired_differences(table)))
    figure = _write_figure(out / FIGURE_FILE, table)
    write_text_atomic(md_path, table_markdown(
        table, n_seeds=n_seeds, figure=figure.name if figure else None))
    return csv_path, md_path, figure


def _write_figure(path: Path, table: Sequence[TableRow]) -> Path | None:
    """``fewshot.png`` (:func:`fivewsi.evaluation.figures.shots_figure`); None, and an old
    figure removed, when no cell has a balanced accuracy or AUC to draw."""
    from fivewsi.evaluation.figures import FIGURE_METRICS, shots_figure

    if not any(r.metric in FIGURE_METRICS and r.mean is not None for r in table):
        path.unlink(missing_ok=True)
        return None
    return shots_figure(path, table)


def _write_cells(path: Path, cells: Sequence[FewshotCell]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CELL_COLUMNS)
    for c in cells:
        if c.status == "pending":
            continue
        writer.writerow([
            c.model, c.k, "" if c.k_used is None else c.k_used,
            "" if c.seed is None else c.seed, c.status,
            *[_num(c.metrics.get(m)) for m in CELL_METRICS], c.n_test,
            f"{c.train_seconds:.2f}", f"{c.eval_seconds:.2f}", c.run, c.error or "",
        ])
    write_text_atomic(path, buffer.getvalue())


def _log_summary(result: FewshotResult) -> None:
    counts = {s: sum(c.status == s for c in result.cells) for s in ("trained", "reused", "failed")}
    log.info(
        "few-shot grid done in %.1f s: %d cells trained, %d reused, %d failed → %s",
        result.seconds, counts["trained"], counts["reused"], counts["failed"], result.markdown,
    )
    header = "model".ljust(14) + "".join(f"k={k}".rjust(16) for k in result.shots)
    log.info("%s (balanced accuracy %%, mean ± sd)", header)
    for model in result.models:
        parts = []
        for k in result.shots:
            row = next((r for r in result.table
                        if (r.model, r.k, r.metric) == (model, k, HEADLINE)), None)
            if row is None or row.mean is None:
                parts.append("".rjust(16))
            else:
                sd = f" ± {100 * row.sd:.1f}" if row.sd is not None else ""
                parts.append(f"{100 * row.mean:.1f}{sd}".rjust(16))
        log.info("%s", model.ljust(14) + "".join(parts))
    for cell in result.failed[:5]:
        log.warning("failed: %s k=%d seed=%s: %s", cell.model, cell.k, cell.seed, cell.error)
