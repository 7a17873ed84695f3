"""The data plan: k-shot runs use only the shots; patients stay whole in splits and shots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fivewsi.cohort import read_cohort, write_cohort
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
