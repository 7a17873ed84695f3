"""The data plan of a training run: cohort rows → training and validation slides.

Which slides train:

- ``reports`` (the default without ``--classes`` for a model that learns from reports): rows
  with a ``report_label``; class labels are ignored.
- ``classes`` (the default with ``--classes``, and always for label-only models): rows with a
  ``label``; ``shots=K`` draws K slides per class with the seed.
- Rows whose ``split`` is ``test`` are never read, neither for training nor for model
  selection. Rows without a split count as training rows.
- Validation: rows with ``split == "val"``; otherwise (not few-shot) a ``val_fraction`` of the
  training rows, stratified by class. A few-shot run (``shots``) uses no ``val`` rows unless
  ``val_rows=True``: its only labelled slides are its shots. ``val_rows=False`` leaves them
  out of any run.
- Patients (a ``patient_id`` column): the held-out fraction takes whole patients, ``shots=K``
  draws K *patients* per class with all their slides, and a patient whose slides carry
  different labels is refused (:class:`~fivewsi.cohort.table.CohortError`). Slides without a
  patient count as patients of their own.

No torch here: a plan is made (and its errors found) before any model is built.

Example:
    >>> from fivewsi.training.config import TrainConfig
    >>> config = TrainConfig(features="feats", cohort="cohort.csv", out="runs/r0")
    >>> plan = make_plan(config, objectives=("reports", "classes"), text_aligned=True)
    ... # doctest: +SKIP
    >>> plan.stage  # doctest: +SKIP
    'reports'
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fivewsi.cohort.labels import LabelPart, parse_report_label
from fivewsi.cohort.table import (
    ClassDescription,
    CohortRow,
    check_labels,
    check_patient_labels,
    read_classes,
    read_cohort,
)
from fivewsi.reports.questions import QuestionSet, load_question_set
from fivewsi.training.config import TrainConfig, TrainError
from fivewsi.training.items import (
    FeatureCheck,
    SlideItem,
    check_feature_files,
    find_feature_files,
)
from fivewsi.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a run trains on.

    Attributes:
        stage: ``"reports"`` or ``"classes"``.
        questions: the question set (prompts, fine-grained fields).
        classes: the classes (classes stage), else [].
        train / val: the slides trained and validated on.
        val_source: ``"split"`` (val rows), ``"fraction"`` (held out) or ``"none"``.
        labels: reports stage: the distinct parsed fine-grained labels.
        check: which feature files were usable.
    """

    stage: str
    questions: QuestionSet
    classes: list[ClassDescription]
    train: list[SlideItem]
    val: list[SlideItem]
    val_source: str
    labels: list[list[LabelPart]] = field(default_factory=list)
    check: FeatureCheck = field(default_factory=FeatureCheck)


def make_plan(
    config: TrainConfig, *, objectives: Sequence[str], text_aligned: bool
) -> Plan:
    """The slides ``config`` trains and validates on, for a model that learns from
    ``objectives`` and scores classes by descriptions when ``text_aligned``.

    Raises:
        TrainError: the model cannot learn the stage asked, or no slide is usable.
    """
    questions = load_question_set(config.questions)
    if config.objective == "auto":
        learns_reports = "reports" in objectives
        stage = "classes" if config.classes is not None or not learns_reports else "reports"
    else:
        stage = config.objective
    if stage not in objectives:
        raise TrainError(f"{config.model} cannot learn from {stage} "
                         f"(it learns from: {', '.join(objectives)})")
    if text_aligned and stage == "classes" and config.classes is None:
        raise TrainError(f"{config.model} needs --classes (class descriptions) to train on labels")
    rows = read_cohort(config.cohort)
    usable = [r for r in rows if r.split != "test"]  # test rows are never looked at
    n_test = len(rows) - len(usable)
    labels: list[list[LabelPart]] = []
    classes: list[ClassDescription] = []
    if stage == "reports":
        pool, report_index, labels = _report_rows(usable, questions)
    else:
        classes = _classes(config, usable)
        pool = [r for r in usable if r.label is not None]
        check_labels(pool, classes)
        check_patient_labels(pool)
        report_index = {}
    files = find_feature_files(config.features)
    check = check_feature_files([r.slide_id for r in pool], files)
    pool = [r for r in pool if r.slide_id in check.ok]
    target_of = {c.name: i for i, c in enumerate(classes)}

    def item(row: CohortRow) -> SlideItem:
        path, n = check.ok[row.slide_id]
        target = target_of.get(row.label) if stage == "classes" and row.label else None
        return SlideItem(row.slide_id, path, target, report_index.get(row.slide_id), n)

    train_rows = [r for r in pool if r.split in (None, "train")]
    use_val_rows = config.val_rows if config.val_rows is not None else config.shots is None
    val_rows = [r for r in pool if r.split == "val"] if use_val_rows else []
    if config.shots is not None:
        train_rows = _draw_shots(train_rows, classes, config.shots, config.seed)
    val_source = "split" if val_rows else "none"
    if not val_rows and config.shots is None and config.val_fraction > 0:
        train_rows, val_rows = _hold_out(train_rows, config.val_fraction, config.seed, stage)
        val_source = "fraction" if val_rows else "none"
    _warn_split_patients(train_rows, val_rows)
    if not train_rows:
        raise TrainError(
            f"no training slides: {len(rows)} cohort rows, {n_test} test rows (never used), "
            f"{len(check.missing)} without feature files, {len(check.broken)} broken; "
            f"stage {stage!r} needs rows with a {'report_label' if stage == 'reports' else 'label'}"
        )
    if stage == "classes":
        _check_class_counts(classes, train_rows, config)
    log.info(
        "%s stage: %d training and %d validation slides (%d test rows left out, %d skipped "
        "for missing or broken features)",
        stage, len(train_rows), len(val_rows), n_test, len(check.missing) + len(check.broken),
    )
    return Plan(
        stage, questions, classes, [item(r) for r in train_rows],
        [item(r) for r in val_rows], val_source, labels, check,
    )


def _report_rows(
    rows: list[CohortRow], questions: QuestionSet
) -> tuple[list[CohortRow], dict[str, int], list[list[LabelPart]]]:
    """Rows with a usable report label, each slide's index into the distinct parsed labels."""
    distinct: dict[str, int] = {}
    labels: list[list[LabelPart]] = []
    index: dict[str, int] = {}
    pool, empty = [], 0
    for row in rows:
        if not row.report_label:
            continue
        if row.report_label not in distinct:
            distinct[row.report_label] = len(labels)
            labels.append(parse_report_label(row.report_label, questions))
        parts = labels[distinct[row.report_label]]
        if not any(not p.unknown and p.text.strip() for p in parts):
            empty += 1  # an all-Unknown label teaches nothing
            continue
        index[row.slide_id] = distinct[row.report_label]
        pool.append(row)
    if empty:
        log.warning("%d slides have report labels with no known part and are skipped", empty)
    return pool, index, labels


def _classes(config: TrainConfig, rows: list[CohortRow]) -> list[ClassDescription]:
    if config.classes is not None:
        return read_classes(config.classes)
    names = sorted({r.label for r in rows if r.label is not None})
    if len(names) < 2:
        raise TrainError(f"need at least two classes among the labels of {config.cohort}")
    return [ClassDescription(name, name) for name in names]


def _check_class_counts(
    classes: list[ClassDescription], train_rows: list[CohortRow], config: TrainConfig
) -> None:
    """Refuse a class without a training slide (it could never be learnt); warn when a class
    has fewer slides than the shots asked."""
    counts = {c.name: 0 for c in classes}
    for row in train_rows:
        if row.label in counts:
            counts[row.label] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        where = f" ({config.classes})" if config.classes is not None else ""
        raise TrainError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(repr(n) for n in empty)}"
            f"{where} ha{'ve' if len(empty) > 1 else 's'} no training slide (after test, "
            "validation and unusable feature files are left out): label slides of "
            f"{'them' if len(empty) > 1 else 'it'} or remove {'them' if len(empty) > 1 else 'it'}"
            " from the classes table"
        )


def patient_units(rows: Sequence[CohortRow]) -> list[list[CohortRow]]:
    """The rows grouped by patient (a slide without a patient is a unit of its own), each unit
    sorted by slide id and the units by their first slide id.

    Example:
        >>> rows = [CohortRow("b", None, None, None, "p"), CohortRow("c", None, None),
        ...         CohortRow("a", None, None, None, "p")]
        >>> [[r.slide_id for r in unit] for unit in patient_units(rows)]
        [['a', 'b'], ['c']]
    """
    units: dict[tuple[str, str], list[CohortRow]] = {}
    for row in sorted(rows, key=lambda r: r.slide_id):
        key = ("p", row.patient_id) if row.patient_id is not None else ("s", row.slide_id)
        units.setdefault(key, []).append(row)
    return sorted(units.values(), key=lambda unit: unit[0].slide_id)


def _draw_shots(
    rows: list[CohortRow], classes: list[ClassDescription], shots: int, seed: int
) -> list[CohortRow]:
    """K patients per class (K slides without patient ids), all their slides."""
    rng = np.random.default_rng(seed)
    chosen: list[CohortRow] = []
    for klass in classes:
        members = patient_units([r for r in rows if r.label == klass.name])
        if len(members) < shots:
            log.warning(
                "class %r has %d training %s, fewer than %d shots: using all",
                klass.name, len(members),
                "patients" if any(r.patient_id for r in rows) else "slides", shots,
            )
        picks = rng.permutation(len(members))[:shots]
        chosen.extend(row for i in sorted(picks) for row in members[int(i)])
    return chosen


def _hold_out(
    rows: list[CohortRow], fraction: float, seed: int, stage: str
) -> tuple[list[CohortRow], list[CohortRow]]:
    """Split off ``fraction`` of the rows for validation, per class (stratified) for classes;
    whole patients (counted in patients)."""
    rng = np.random.default_rng([seed, 17])
    groups: dict[str, list[list[CohortRow]]] = {}
    for unit in patient_units(rows):
        key = (unit[0].label or "") if stage == "classes" else ""
        groups.setdefault(key, []).append(unit)
    val_ids: set[str] = set()
    for members in groups.values():
        n_val = min(round(len(members) * fraction), len(members) - 1)
        for i in rng.permutation(len(members))[: max(0, n_val)]:
            val_ids.update(r.slide_id for r in members[int(i)])
    kept = [r for r in rows if r.slide_id not in val_ids]
    return kept, [r for r in rows if r.slide_id in val_ids]


def _warn_split_patients(train_rows: list[CohortRow], val_rows: list[CohortRow]) -> None:
    """The cohort's own splits may put a patient on both sides: say so."""
    trained = {r.patient_id for r in train_rows if r.patient_id is not None}
    both = sorted({r.patient_id for r in val_rows if r.patient_id in trained})
    if both:
        log.warning(
            "%d patients have slides in both the training and the validation rows of the cohort "
            "(validation is then optimistic): %s", len(both),
            ", ".join(map(str, both[:5])) + (", ..." if len(both) > 5 else ""),
        )


def write_split(path: Path, plan: Plan) -> None:
    """``split.csv``: ``slide_id,role,label`` of the training and validation slides."""
    names = {i: c.name for i, c in enumerate(plan.classes)}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slide_id", "role", "label"])
    for role, items in (("train", plan.train), ("val", plan.val)):
        for item in items:
            writer.writerow([item.slide_id, role, names.get(item.target, "")])
    write_text_atomic(path, buffer.getvalue())
