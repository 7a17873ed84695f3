"""A feature-level synthetic lung cohort with a known answer: bags, labels, reports, classes.

The cohort stands in for TCGA lung (LUAD vs LUSC) wherever a test, benchmark or experiment
needs slides whose truth is known: which patches carry the class, which carry each attribute,
and what the report left out. Its classes are named LUAD and LUSC, but every number in it is
drawn from the generative model below, never from real slides.

Generative model (``d`` = ``dim``; every direction is a random unit vector times a strength):

1. World (shared by all slides, drawn from ``seed``): ``tissue_types`` background tissue
   prototypes; one tumour prototype; one class axis (LUAD = +½, LUSC = −½ of
   ``class_strength`` along it); one direction per attribute finding (each differentiation
   category; ``present`` of stas / vascular / pleural / adjacent invasion; ``involved``
   margins; absence is the absence of the finding); 4 stain / scanner nuisance directions.
2. Slide: class (balanced within each split), then the six fields' true categories drawn from
   class-conditional tables (LUSC leans poorly differentiated, LUAD towards STAS and pleural
   invasion, adjacent invasion mostly with pleural invasion; none deterministic).
3. Tissue: an irregular star-shaped outline on a patch grid with ``N`` patches (uniform in
   ``n_patches``). Background patches mix the tissue prototypes with weights from smooth
   random spatial fields (plus per-slide abundances), so neighbouring patches look alike.
4. Tumour: one contiguous region of ``tumour_fraction`` of the patches, grown from a seed
   patch (at the tissue edge when the pleura or adjacent structures are invaded, inside
   otherwise). Its patches get the tumour prototype, the class shift and the differentiation
   direction; findings sit on sub-parts: STAS on the region's rim, pleural and adjacent
   invasion on the part touching the tissue edge, vascular invasion and involved margins on
   small contiguous sub-clusters. With ``placement="distinct"`` three findings move apart:
   the grade only on the tumour's core, pleural invasion on the tissue edge within 2 steps of
   the tumour, STAS in small satellite clusters 3-8 steps away from it. Each slide records,
   per field, which patches carry its finding (``FeatureSlide.evidence``, ``truth.json``).
5. Every patch gets the slide's nuisance shift (``nuisance_strength``, larger than the class
   shift, and the same on every patch of the slide) and Gaussian noise (``noise`` per
   dimension).
6. Report: each field independently reported ``unknown`` with probability ``unknown_rate``
   although the pixels show it; ``report_label`` = :func:`~fivewsi.reports.render.render_label`
   of the reported categories; ``reports/<slide_id>.txt`` = a prose report from which
   :func:`~fivewsi.reports.rules.extract_rules` reads the same categories.

A label-only model sees the class only through ~5-10% of the patches under a larger per-slide
nuisance, so it needs many labelled slides; the report labels describe the tumour region's
findings on every training slide. Measured with the defaults (seeds 0-2, 20 draws each, test
accuracy of scikit-learn logistic regression with k labelled slides per class):

| k | mean-pooled bag | tumour-region mean (oracle) |
| --- | --- | --- |
| 4 | 0.50-0.51 | 0.75-0.80 |
| 8 | 0.49-0.52 | 0.90-0.91 |
| 16 | 0.52-0.54 | 0.98-0.99 |
| 200 | 0.57-0.64 | 1.00 |

A small gated-attention ABMIL trained on the bags with labels only reached 0.56 (k=4), 0.71
(k=8) and 0.98 (k=32): it finds the region, but only with tens of labelled slides.

Output folder ``OUT/``: ``features/<slide_id>.h5`` (TRIDENT layout via
:func:`~fivewsi.features.bags.save_bag`, grid coords × 256 level-0 px, 0.5 µm/px, encoder
``synthetic``), ``cohort.csv`` (slide_id, label, report_label, split), ``classes.csv``,
``reports/<slide_id>.txt`` and ``truth.json`` (true and reported categories, tumour patch
indices and each field's evidence patches per slide, the placement). Test slides'
``report_label`` is left empty unless ``test_reports``: no pretraining can see a test report
by accident.

Example:
    >>> import tempfile, pathlib
    >>> cohort = make_feature_cohort(pathlib.Path(tempfile.mkdtemp()), n_train=4, n_test=2)
    >>> len(cohort.slides), cohort.cohort_csv.name
    (6, 'cohort.csv')
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fivewsi.cohort.table import ClassDescription, CohortRow, write_classes, write_cohort
from fivewsi.features.bags import save_bag
from fivewsi.reports.questions import load_question_set
from fivewsi.reports.render import render_label
from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic.feature_bags import PATCH_SIZE, PLACEMENTS, make_bag, make_world
from fivewsi.synthetic.lung import CLASSES, MPP, UNKNOWN_RATE, class_descriptions, draw_categories
from fivewsi.synthetic.reports import report_text
from fivewsi.utils.atomic import tmp_path_for, write_text_atomic

log = logging.getLogger(__name__)

_ID = re.compile(r"^syn-\d{4,}$")


@dataclass(frozen=True)
class FeatureSlide:
    """One slide of a feature-level cohort (a bag of patch features) and its ground truth.

    Attributes:
        slide_id: ``syn-0000`` ... (no hint of the class).
        label: ``LUAD`` or ``LUSC``.
        split: ``train`` or ``test``.
        categories: the true category of every field (what the features show).
        reported: the categories the report states (``unknown`` where it is silent).
        report_label: the rendered fine-grained label of ``reported``.
        n_patches: patches in the bag.
        tumour: indices of the tumour-region patches, sorted.
        evidence: per field (question key), the sorted indices of the patches that carry its
            finding (empty where the slide does not show it; see ``placement``).
    """

    slide_id: str
    label: str
    split: str
    categories: dict[str, str]
    reported: dict[str, str]
    report_label: str
    n_patches: int
    tumour: np.ndarray
    evidence: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class FeatureCohort:
    """What :func:`make_feature_cohort` wrote, and the ground truth it drew."""

    features_dir: Path
    cohort_csv: Path
    classes_csv: Path
    reports_dir: Path
    root: Path
    truth_json: Path
    classes: list[ClassDescription]
    slides: list[FeatureSlide] = field(default_factory=list)

    def split(self, name: str) -> list[FeatureSlide]:
        """The slides of one split (``train`` or ``test``)."""
        return [s for s in self.slides if s.split == name]


def make_feature_cohort(
    out: str | os.PathLike[str],
    *,
    n_train: int = 400,
    n_test: int = 200,
    dim: int = 64,
    seed: int = 0,
    n_patches: tuple[int, int] = (200, 800),
    tumour_fraction: tuple[float, float] = (0.05, 0.10),
    unknown_rate: float = UNKNOWN_RATE,
    tissue_types: int = 6,
    tissue_strength: float = 6.0,
    tumour_strength: float = 6.0,
    class_strength: float = 3.0,
    attribute_strength: float = 4.0,
    nuisance_strength: float = 5.0,
    noise: float = 0.5,
    test_reports: bool = False,
    placement: str = "tumour",
    overwrite: bool = False,
) -> FeatureCohort:
    """Write a synthetic LUAD / LUSC cohort to ``out`` (see the module docstring).

    Deterministic: the same arguments give the same ``cohort.csv`` bytes, reports and feature
    arrays.

    Args:
        out: output folder (created).
        n_train, n_test: slides per split, classes balanced within each.
        dim: feature dimension.
        seed: the one source of randomness.
        n_patches: inclusive range of patches per slide.
        tumour_fraction: range of the tumour region's share of the patches.
        unknown_rate: probability that the report is silent on a field.
        tissue_types: background tissue prototypes.
        tissue_strength, tumour_strength, class_strength, attribute_strength: norms of the
            background prototypes, the tumour prototype, the LUAD-LUSC shift and each finding.
        nuisance_strength: typical norm of the per-slide stain / scanner shift.
        noise: per-dimension standard deviation of the patch noise.
        test_reports: also write test slides' ``report_label`` into ``cohort.csv``.
        placement: where the findings sit: ``"tumour"`` (default; every finding on the tumour
            region or its parts) or ``"distinct"`` (grade in the tumour core, pleural
            invasion on the tissue edge at the tumour, STAS in satellites away from it; see
            :func:`~fivewsi.synthetic.feature_bags.make_bag`). Either way each slide's
            ``evidence`` (and ``truth.json``) records which patches carry each finding.
        overwrite: replace a cohort already in ``out`` (else FileExistsError).

    Raises:
        FileExistsError: ``out`` holds a cohort and ``overwrite`` is False.
        ValueError: bad sizes or rates.

    Example:
        >>> import tempfile, pathlib
        >>> c = make_feature_cohort(pathlib.Path(tempfile.mkdtemp()), n_train=2, n_test=2)
        >>> sorted({s.label for s in c.split("test")})
        ['LUAD', 'LUSC']
    """
    _check_args(n_train, n_test, dim, n_patches, tumour_fraction, unknown_rate, tissue_types)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    root = Path(out)
    cohort_csv, classes_csv = root / "cohort.csv", root / "classes.csv"
    features_dir, reports_dir = root / "features", root / "reports"
    if cohort_csv.exists() and not overwrite:
        raise FileExistsError(f"{cohort_csv} exists; pass overwrite=True to replace the cohort")
    qs = load_question_set("lung")
    seeds = np.random.SeedSequence(seed).spawn(2)
    world = make_world(np.random.default_rng(seeds[0]), dim, tissue_types, tissue_strength,
                        tumour_strength, class_strength, attribute_strength, qs)
    # Per-split class order: balanced, shuffled, reproducible.
    split_rng = np.random.default_rng(seeds[1])
    plan = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [CLASSES[i % 2] for i in range(n)]
        plan += [(split, labels[i]) for i in split_rng.permutation(n)]
    slide_seeds = np.random.SeedSequence([seed, 1]).spawn(len(plan))
    width = max(4, len(str(len(plan) - 1)))
    slides: list[FeatureSlide] = []
    for i, ((split, label), ss) in enumerate(zip(plan, slide_seeds, strict=True)):
        slide_id = f"syn-{i:0{width}d}"
        rng = np.random.default_rng(ss)
        categories = draw_categories(label, rng)
        reported = {k: (UNKNOWN if rng.random() < unknown_rate else c)
                    for k, c in categories.items()}
        features, coords, tumour, grid, evidence = make_bag(
            rng, world, label, categories, n_patches, tumour_fraction, nuisance_strength, noise,
            placement,
        )
        _save(features_dir / f"{slide_id}.h5", slide_id, features, coords, grid, seed)
        _write_report(reports_dir / f"{slide_id}.txt", report_text(label, reported, rng))
        slides.append(FeatureSlide(slide_id, label, split, categories, reported,
                                     render_label(reported, qs), len(features), tumour,
                                     evidence))
    if overwrite:
        _remove_stale(features_dir, reports_dir, {s.slide_id for s in slides})
    classes = class_descriptions(qs)
    write_classes(classes, classes_csv)
    write_cohort(
        [CohortRow(s.slide_id, s.label,
                   (s.report_label or None) if (s.split == "train" or test_reports) else None,
                   s.split) for s in slides],
        cohort_csv,
    )
    truth_json = root / "truth.json"
    write_text_atomic(truth_json, _truth_text(slides, seed, placement))
    log.info("synthetic cohort: %d slides (%d train, %d test) in %s",
             len(slides), n_train, n_test, root)
    return FeatureCohort(features_dir, cohort_csv, classes_csv, reports_dir, root, truth_json,
                           classes, slides)


def load_truth(root: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """``truth.json`` of a synthetic cohort: slide_id → its ground truth (tumour and each
    field's evidence as arrays).

    Example:
        >>> import tempfile, pathlib
        >>> c = make_feature_cohort(pathlib.Path(tempfile.mkdtemp()), n_train=2, n_test=0)
        >>> sorted(load_truth(c.root)["syn-0000"])[:3]
        ['categories', 'evidence', 'label']
    """
    data = json.loads((Path(root) / "truth.json").read_text(encoding="utf-8"))
    slides = data["slides"]
    for info in slides.values():
        info["tumour"] = np.asarray(info["tumour"], dtype=np.int64)
        info["evidence"] = {k: np.asarray(v, dtype=np.int64)
                            for k, v in info.get("evidence", {}).items()}
    return slides


def _save(path: Path, slide_id: str, features: np.ndarray, coords: np.ndarray,
          grid: tuple[int, int], seed: int) -> None:
    magnification = 10.0 / MPP
    coords_attrs = {
        "patch_size": PATCH_SIZE,
        "patch_size_level0": PATCH_SIZE,
        "level0_magnification": magnification,
        "target_magnification": magnification,
        "level0_width": grid[1] * PATCH_SIZE,
        "level0_height": grid[0] * PATCH_SIZE,
        "name": slide_id,
        "overlap": 0,
    }
    features_attrs = {
        "encoder": "synthetic",
        "encoder_dim": features.shape[1],
        "target_mpp": MPP,
        "slide_mpp": MPP,
        "mpp_source": "synthetic",
        "synthetic_seed": seed,
    }
    save_bag(path, features, coords, coords_attrs, features_attrs)


# --- bookkeeping --------------------------------------------------------------------------------


def _write_report(path: Path, text: str) -> None:
    """Write beside, then rename: atomic, but without fsync, which would double the time of a
    cohort (hundreds of small files that can always be generated again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _truth_text(slides: list[FeatureSlide], seed: int, placement: str) -> str:
    data = {
        "seed": seed,
        "placement": placement,
        "classes": list(CLASSES),
        "slides": {
            s.slide_id: {
                "label": s.label,
                "split": s.split,
                "categories": s.categories,
                "reported": s.reported,
                "n_patches": s.n_patches,
                "tumour": s.tumour.tolist(),
                "evidence": {k: v.tolist() for k, v in s.evidence.items()},
            }
            for s in slides
        },
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


def _remove_stale(features_dir: Path, reports_dir: Path, keep: set[str]) -> None:
    """Remove files of a previous, larger synthetic cohort (only names this module writes)."""
    for folder, suffix in ((features_dir, ".h5"), (reports_dir, ".txt")):
        for path in folder.glob(f"syn-*{suffix}"):
            stem = path.name[: -len(suffix)]
            if _ID.match(stem) and stem not in keep:
                path.unlink()


def _check_args(n_train: int, n_test: int, dim: int, n_patches: tuple[int, int],
                tumour_fraction: tuple[float, float], unknown_rate: float,
                tissue_types: int) -> None:
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ValueError(f"need at least one slide (n_train={n_train}, n_test={n_test})")
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim}")
    lo, hi = n_patches
    if not 30 <= lo <= hi:
        raise ValueError(f"n_patches must be a range (lo, hi) with 30 <= lo <= hi, got {n_patches}")
    flo, fhi = tumour_fraction
    if not 0 < flo <= fhi < 1:
        raise ValueError(f"tumour_fraction must satisfy 0 < lo <= hi < 1, got {tumour_fraction}")
    if not 0 <= unknown_rate <= 1:
        raise ValueError(f"unknown_rate must lie in [0, 1], got {unknown_rate}")
    if tissue_types < 1:
        raise ValueError(f"tissue_types must be at least 1, got {tissue_types}")
