"""The feature-level synthetic cohort: files, ground truth, reports, determinism, difficulty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fivewsi.cohort import check_labels, parse_report_label, read_classes, read_cohort
from fivewsi.features.bags import load_bag
from fivewsi.reports.questions import load_question_set
from fivewsi.reports.render import render_label
from fivewsi.reports.rules import extract_rules
from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic import (
    CLASSES,
    FIELDS,
    FeatureCohort,
    class_descriptions,
    load_truth,
    make_feature_cohort,
)

QS = load_question_set("lung")
SMALL = {"n_train": 24, "n_test": 12, "dim": 16, "n_patches": (80, 160)}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    return make_feature_cohort(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


def test_files_and_tables(small: FeatureCohort) -> None:
    rows = read_cohort(small.cohort_csv)
    classes = read_classes(small.classes_csv)
    assert [c.name for c in classes] == list(CLASSES)
    check_labels(rows, classes)
    assert [r.slide_id for r in rows] == [s.slide_id for s in small.slides]
    assert [r.split for r in rows] == ["train"] * 24 + ["test"] * 12
    for split, n in (("train", 24), ("test", 12)):
        labels = [s.label for s in small.split(split)]
        assert labels.count("LUAD") == labels.count("LUSC") == n // 2
    for row, slide in zip(rows, small.slides, strict=True):
        assert (small.features_dir / f"{row.slide_id}.h5").is_file()
        assert (small.reports_dir / f"{row.slide_id}.txt").is_file()
        assert row.label == slide.label
        # Test slides' reports are withheld from the cohort table.
        expected = slide.report_label or None if slide.split == "train" else None
        assert row.report_label == expected
        assert slide.report_label == render_label(slide.reported, QS)
        assert "luad" not in row.slide_id.lower() and "lusc" not in row.slide_id.lower()


def test_bags_follow_the_trident_layout(small: FeatureCohort) -> None:
    for slide in small.slides[:8]:
        bag = load_bag(small.features_dir / f"{slide.slide_id}.h5")
        assert bag.slide_id == slide.slide_id
        assert bag.features.shape == (slide.n_patches, 16)
        assert bag.features.dtype == np.float32 and np.isfinite(bag.features).all()
        assert 70 <= slide.n_patches <= 175  # the outline hits its target within a few %
        assert bag.patch_size_level0 == 256
        assert bag.attrs["patch_size"] == 256
        assert bag.attrs["encoder"] == "synthetic"
        assert bag.attrs["target_mpp"] == 0.5
        assert bag.attrs["level0_magnification"] == 20.0
        coords = bag.coords
        assert coords is not None and (coords % 256 == 0).all()
        assert len({tuple(c) for c in coords}) == len(coords)
        assert coords[:, 0].max() < bag.attrs["level0_width"]
        assert coords[:, 1].max() < bag.attrs["level0_height"]
        # Row-major order: by y, then x.
        order = np.lexsort((coords[:, 0], coords[:, 1]))
        assert (order == np.arange(len(coords))).all()


def _connected(cells: set[tuple[int, int]]) -> bool:
    start = next(iter(cells))
    seen, stack = {start}, [start]
    while stack:
        x, y = stack.pop()
        for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if n in cells and n not in seen:
                seen.add(n)
                stack.append(n)
    return seen == cells


def test_tumour_region_is_small_contiguous_and_at_the_edge_when_invaded(
    small: FeatureCohort,
) -> None:
    for slide in small.slides:
        coords = load_bag(small.features_dir / f"{slide.slide_id}.h5").coords // 256
        tissue = {tuple(c) for c in coords.tolist()}
        tumour = {tuple(c) for c in coords[slide.tumour].tolist()}
        fraction = len(tumour) / len(tissue)
        assert max(6, 0.05 * len(tissue) - 1) <= len(tumour) <= 0.10 * len(tissue) + 1, fraction
        assert _connected(tumour)
        touches_glass = any(
            n not in tissue
            for x, y in tumour
            for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1))
        )
        if slide.categories["pleural_invasion"] == "present":
            assert touches_glass


def test_truth_file_matches(small: FeatureCohort) -> None:
    truth = load_truth(small.root)
    assert set(truth) == {s.slide_id for s in small.slides}
    for slide in small.slides:
        info = truth[slide.slide_id]
        assert info["categories"] == slide.categories
        assert info["reported"] == slide.reported
        assert np.array_equal(info["tumour"], slide.tumour)
        for key in FIELDS:
            assert slide.categories[key] != UNKNOWN
            assert slide.reported[key] in (slide.categories[key], UNKNOWN)


def test_reports_read_back_to_the_reported_categories(small: FeatureCohort) -> None:
    for slide in small.slides:
        text = (small.reports_dir / f"{slide.slide_id}.txt").read_text(encoding="utf-8")
        answers = extract_rules(text, QS)
        assert {k: a.category for k, a in answers.items()} == slide.reported, text


def test_report_labels_parse_back(small: FeatureCohort) -> None:
    for slide in small.slides:
        parts = parse_report_label(slide.report_label, QS)
        assert [p.key for p in parts] == [k for k in QS.keys if slide.reported[k] != UNKNOWN]


def test_deterministic_for_a_seed(tmp_path: Path, small: FeatureCohort) -> None:
    again = make_feature_cohort(tmp_path / "again", seed=3, **SMALL)
    assert again.cohort_csv.read_bytes() == small.cohort_csv.read_bytes()
    assert again.classes_csv.read_bytes() == small.classes_csv.read_bytes()
    assert again.truth_json.read_bytes() == small.truth_json.read_bytes()
    for slide in small.slides[::5]:
        a = load_bag(small.features_dir / f"{slide.slide_id}.h5")
        b = load_bag(again.features_dir / f"{slide.slide_id}.h5")
        assert np.array_equal(a.features, b.features) and np.array_equal(a.coords, b.coords)
        name = f"{slide.slide_id}.txt"
        assert (small.reports_dir / name).read_text() == (again.reports_dir / name).read_text()
    other = make_feature_cohort(tmp_path / "other", seed=4, **SMALL)
    first = small.slides[0].slide_id
    assert not np.array_equal(
        load_bag(small.features_dir / f"{first}.h5").features[:10],
        load_bag(other.features_dir / f"{first}.h5").features[:10],
    )


def test_unknown_rate_and_test_reports(tmp_path: Path) -> None:
    kw = {"n_train": 6, "n_test": 4, "dim": 8, "n_patches": (60, 80)}
    full = make_feature_cohort(tmp_path / "full", unknown_rate=0.0, test_reports=True, **kw)
    rows = read_cohort(full.cohort_csv)
    assert all(r.report_label and len(r.report_label.split("; ")) == 6 for r in rows)
    silent = make_feature_cohort(tmp_path / "silent", unknown_rate=1.0, **kw)
    assert all(r.report_label is None for r in read_cohort(silent.cohort_csv))
    assert all(set(s.reported.values()) == {UNKNOWN} for s in silent.slides)


def test_overwrite(tmp_path: Path) -> None:
    kw = {"dim": 8, "n_patches": (60, 80)}
    make_feature_cohort(tmp_path, n_train=6, n_test=4, **kw)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_feature_cohort(tmp_path, n_train=6, n_test=4, **kw)
    cohort = make_feature_cohort(tmp_path, n_train=4, n_test=2, overwrite=True, **kw)
    kept = {s.slide_id for s in cohort.slides}
    assert {p.stem for p in cohort.features_dir.glob("*.h5")} == kept
    assert {p.stem for p in cohort.reports_dir.glob("*.txt")} == kept


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0, "n_test": 0}, "at least one slide"),
        ({"n_patches": (100, 50)}, "n_patches"),
        ({"tumour_fraction": (0.2, 0.1)}, "tumour_fraction"),
        ({"unknown_rate": 1.5}, "unknown_rate"),
        ({"dim": 1}, "dim"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_feature_cohort(tmp_path, **kwargs)


def test_class_descriptions_use_the_label_phrases() -> None:
    luad, lusc = class_descriptions(QS)
    assert QS.render_phrase("stas", "present") in luad.description
    assert QS.render_phrase("differentiation", "poor") in lusc.description
    assert "synthetic" not in (luad.description + lusc.description).lower()


def _pooled(cohort: FeatureCohort, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    means, oracle, labels = [], [], []
    for slide in cohort.split(split):
        features = load_bag(cohort.features_dir / f"{slide.slide_id}.h5").features
        means.append(features.mean(axis=0))
        oracle.append(features[slide.tumour].mean(axis=0))
        labels.append(slide.label == "LUAD")
    return np.array(means), np.array(oracle), np.array(labels)


def test_difficulty_few_labels_need_the_region(tmp_path: Path) -> None:
    """8 labelled slides per class: mean pooling stays near chance, the tumour region does not."""
    from sklearn.linear_model import LogisticRegression

    cohort = make_feature_cohort(tmp_path, n_train=40, n_test=80, n_patches=(200, 400),
                                   seed=11)
    m_tr, o_tr, y_tr = _pooled(cohort, "train")
    m_te, o_te, y_te = _pooled(cohort, "test")
    rng = np.random.default_rng(0)
    accuracy: dict[str, list[float]] = {"mean": [], "oracle": []}
    for _ in range(10):
        idx = np.concatenate(
            [rng.choice(np.flatnonzero(y_tr == c), 8, replace=False) for c in (False, True)]
        )
        for name, train, test in (("mean", m_tr, m_te), ("oracle", o_tr, o_te)):
            model = LogisticRegression(max_iter=2000).fit(train[idx], y_tr[idx])
            accuracy[name].append(float((model.predict(test) == y_te).mean()))
    assert np.mean(accuracy["mean"]) < 0.62, accuracy
    assert np.mean(accuracy["oracle"]) > 0.82, accuracy
