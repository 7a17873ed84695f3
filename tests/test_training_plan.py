"""The data plan: k-shot runs use only the shots; patients stay whole in splits and shots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fivewsi.cohort import read_cohort, write_cohort
from fivewsi.cohort.table import CohortError
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, train
from fivewsi.training.plan import make_plan

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    root = tmp_path_factory.mktemp("plan")
    made = make_feature_cohort(root, n_train=24, n_test=4, dim=8, n_patches=(30, 32), seed=3)
    rows = read_cohort(made.cohort_csv)
    seen: dict[str, int] = {}
    for row in rows:  # two training slides per class become val rows
        if row.split == "train" and seen.get(row.label or "", 0) < 2:
            seen[row.label or ""] = seen.get(row.label or "", 0) + 1
            row.split = "val"
    write_cohort(rows, made.cohort_csv)
    return made


def _config(cohort: FeatureCohort, out: Path, table: Path | None = None,
            **options: object) -> TrainConfig:
    settings: dict[str, object] = {"model": "mean", "model_options": {"dim": 8}, "epochs": 1,
                                   "min_steps": 0, "progress": False}
    settings.update(options)
    return TrainConfig(features=cohort.features_dir, cohort=table or cohort.cohort_csv,
                       out=out, **settings)


def _plan(config: TrainConfig):  # type: ignore[no-untyped-def]
    return make_plan(config, objectives=("classes",), text_aligned=False)


def test_shots_run_uses_only_the_shots_unless_val_rows_are_asked(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    val_ids = {r.slide_id for r in read_cohort(cohort.cohort_csv) if r.split == "val"}
    result = train(_config(cohort, tmp_path / "k2", shots=2))
    assert result.n_val == 0 and result.n_train == 4
    with open(tmp_path / "k2" / "split.csv", newline="") as handle:
        roles = list(csv.DictReader(handle))
    assert len(roles) == 4 and {r["role"] for r in roles} == {"train"}
    assert not {r["slide_id"] for r in roles} & val_ids
    asked = _plan(_config(cohort, tmp_path / "x", shots=2, val_rows=True))
    assert {i.slide_id for i in asked.val} == val_ids and asked.val_source == "split"
    # Without shots: the cohort's val rows, as before; --no-val-rows holds out a fraction.
    full = _plan(_config(cohort, tmp_path / "y"))
    assert {i.slide_id for i in full.val} == val_ids
    frac = _plan(_config(cohort, tmp_path / "z", val_rows=False, val_fraction=0.25))
    assert frac.val_source == "fraction" and not {i.slide_id for i in frac.val} & val_ids


def _with_patients(cohort: FeatureCohort, tmp_path: Path, *, mix: bool = False) -> Path:
    """Every non-test slide gets a patient of 1-3 slides of one label; no val rows."""
    rows = read_cohort(cohort.cohort_csv)
    by_label: dict[str, int] = {}
    for row in rows:
        if row.split == "val":
            row.split = None
        if row.split != "test":
            n = by_label.get(row.label or "", 0)
            by_label[row.label or ""] = n + 1
            row.patient_id = f"{row.label}-p{n // 3 if n < 6 else n // 2}"
    if mix:
        rows[0].patient_id = next(r.patient_id for r in rows
                                  if r.label != rows[0].label and r.split != "test")
    table = tmp_path / "patients.csv"
    write_cohort(rows, table)
    return table


def _patients(items, rows) -> set[str]:  # type: ignore[no-untyped-def]
    patient = {r.slide_id: r.patient_id for r in rows}
    return {patient[i.slide_id] for i in items}


def test_hold_out_and_shots_keep_patients_whole(cohort: FeatureCohort, tmp_path: Path) -> None:
    table = _with_patients(cohort, tmp_path)
    rows = read_cohort(table)
    slides_of: dict[str, set[str]] = {}
    for row in rows:
        if row.patient_id:
            slides_of.setdefault(row.patient_id, set()).add(row.slide_id)
    for seed in range(4):
        plan = _plan(_config(cohort, tmp_path / "h", table, val_fraction=0.3, seed=seed))
        train_p, val_p = _patients(plan.train, rows), _patients(plan.val, rows)
        assert val_p and not train_p & val_p
        assert {i.slide_id for i in plan.val} == set().union(*(slides_of[p] for p in val_p))
        assert {plan.classes[i.target].name for i in plan.val} == {"LUAD", "LUSC"}
        shots = _plan(_config(cohort, tmp_path / "k", table, shots=2, seed=seed))
        chosen = _patients(shots.train, rows)
        assert len(chosen) == 4 and not shots.val
        assert sorted(p.split("-")[0] for p in chosen) == ["LUAD", "LUAD", "LUSC", "LUSC"]
        assert {i.slide_id for i in shots.train} == set().union(*(slides_of[p] for p in chosen))


def test_without_patients_the_plan_is_as_before(cohort: FeatureCohort, tmp_path: Path) -> None:
    rows = read_cohort(cohort.cohort_csv)
    for row in rows:
        row.split = "test" if row.split == "test" else None
    table = tmp_path / "plain.csv"
    write_cohort(rows, table)
    plan = _plan(_config(cohort, tmp_path / "p", table, val_fraction=0.25, seed=5))
    # The draw of earlier versions: per class, slides sorted by id, one permutation each.
    import numpy as np

    rng = np.random.default_rng([5, 17])
    expected: set[str] = set()
    pool = sorted((r for r in rows if r.split != "test"), key=lambda r: r.slide_id)
    for label in dict.fromkeys(r.label for r in pool):  # classes in order of first slide
        members = [r.slide_id for r in pool if r.label == label]
        n_val = min(round(len(members) * 0.25), len(members) - 1)
        expected.update(members[int(i)] for i in rng.permutation(len(members))[:n_val])
    assert {i.slide_id for i in plan.val} == expected


def test_a_patient_with_two_labels_is_refused(cohort: FeatureCohort, tmp_path: Path) -> None:
    table = _with_patients(cohort, tmp_path, mix=True)
    rows = read_cohort(table)
    with pytest.raises(CohortError, match=f"different labels.*{rows[0].patient_id}"):
        _plan(_config(cohort, tmp_path / "m", table))
