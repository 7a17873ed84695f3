"""The feature cohort records which patches carry each question's finding, and can put
findings in different places (``placement="distinct"``) without changing the default bags."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fivewsi.features.bags import load_bag
from fivewsi.synthetic import FeatureCohort, load_truth, make_feature_cohort
from fivewsi.synthetic.lung import FIELDS, FINDING

#: sha256 of the default cohort (seed 3, 30 + 10 slides: features, coords, tumour indices,
#: reports, cohort.csv) computed with the generator before evidence was recorded.
DEFAULT_HASH = "f50a4ba49c295111239137e15f2032a1bbd62d58219afae68da9cb1b470b8376"


def _grid(cohort: FeatureCohort, slide_id: str) -> np.ndarray:
    return load_bag(cohort.features_dir / f"{slide_id}.h5").coords // 256


@pytest.fixture(scope="module")
def distinct(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    return make_feature_cohort(tmp_path_factory.mktemp("distinct"), n_train=40, n_test=0,
                               seed=5, placement="distinct")


def test_default_bags_are_unchanged(tmp_path: Path) -> None:
    c = make_feature_cohort(tmp_path, n_train=30, n_test=10, seed=3)
    h = hashlib.sha256()
    for s in c.slides:
        bag = load_bag(tmp_path / "features" / f"{s.slide_id}.h5")
        h.update(np.asarray(bag.features).tobytes())
        h.update(np.asarray(bag.coords).tobytes())
        h.update(s.tumour.tobytes())
        h.update((tmp_path / "reports" / f"{s.slide_id}.txt").read_bytes())
    h.update(c.cohort_csv.read_bytes())
    assert h.hexdigest() == DEFAULT_HASH
    for s in c.slides:  # default placement: every finding on the tumour region
        assert np.array_equal(s.evidence["differentiation"], s.tumour)
        for key in FIELDS[1:]:
            assert set(s.evidence[key]) <= set(s.tumour.tolist())


def test_evidence_is_recorded_per_question(distinct: FeatureCohort) -> None:
    truth = load_truth(distinct.root)
    for s in distinct.slides:
        assert sorted(s.evidence) == sorted(FIELDS)
        assert len(s.evidence["differentiation"]) >= 2
        for key in FIELDS[1:]:
            shown = s.categories[key] == FINDING[key]
            assert (len(s.evidence[key]) > 0) == shown, (s.slide_id, key)
        for key, where in s.evidence.items():
            assert np.array_equal(truth[s.slide_id]["evidence"][key], where)
            assert np.all(np.diff(where) > 0) and (len(where) == 0 or where[-1] < s.n_patches)


def test_distinct_placement_puts_findings_where_specified(distinct: FeatureCohort) -> None:
    stas_seen = pleura_seen = 0
    for s in distinct.slides:
        cells = _grid(distinct, s.slide_id)
        tissue = {tuple(c) for c in cells.tolist()}
        tumour = {tuple(c) for c in cells[s.tumour].tolist()}

        def at_edge(c: tuple[int, int], tissue: set = tissue) -> bool:
            x, y = c
            return any(n not in tissue for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)))

        # differentiation: inside the tumour, not on its rim (when a core exists)
        graded = {tuple(c) for c in cells[s.evidence["differentiation"]].tolist()}
        assert graded <= tumour
        if len(graded) < len(tumour):
            for x, y in graded:
                assert all(n in tumour for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)))
        # pleural invasion: only tissue-edge patches, near the tumour
        if len(s.evidence["pleural_invasion"]):
            pleura_seen += 1
            edge = [at_edge(tuple(c)) for c in cells[s.evidence["pleural_invasion"]].tolist()]
            assert all(edge)
        # STAS: satellites at least 2 grid steps (Chebyshev >= 1 cell gap) from the tumour
        satellites = cells[s.evidence["stas"]]
        if len(satellites) and not {tuple(c) for c in satellites.tolist()} <= tumour:
            stas_seen += 1
            t = cells[s.tumour]
            gap = np.abs(satellites[:, None, :] - t[None, :, :]).sum(-1).min(axis=1)
            assert gap.min() >= 2
            assert not ({tuple(c) for c in satellites.tolist()} & tumour)
    assert stas_seen >= 3 and pleura_seen >= 3, (stas_seen, pleura_seen)


def test_distinct_maps_differ(distinct: FeatureCohort) -> None:
    """Where a slide shows STAS and pleural invasion, their evidence overlaps neither the
    grade's core nor each other much: maps can and must differ."""
    checked = 0
    for s in distinct.slides:
        stas, pleura = set(s.evidence["stas"]), set(s.evidence["pleural_invasion"])
        core = set(s.evidence["differentiation"])
        if stas and pleura:
            checked += 1
            assert not stas & core
            assert len(stas & pleura) < len(stas)
    assert checked >= 1


def test_unknown_placement_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="placement"):
        make_feature_cohort(tmp_path, n_train=2, n_test=0, placement="edges")
