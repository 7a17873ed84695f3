"""A pixel-level synthetic LUAD / LUSC cohort: slides, prose reports, slide table, classes.

What a user brings to fivewsi, made up: :func:`write_pixel_cohort` writes pyramidal TIFF slides
(:mod:`fivewsi.synthetic.pixel_slide`), one prose report per slide
(:mod:`fivewsi.synthetic.reports`), a slide table with a few labelled training slides and
labelled test slides, and the class descriptions. ``fivewsi demo`` runs the pipeline on it.

What the slides carry (so that the default ``he-handcrafted`` encoder can tell the classes
apart): one tumour focus per slide whose nuclei depend on the class — LUAD: many small,
moderately dark, gland-like crowded nuclei in pale stroma; LUSC: fewer, large, very dark
pleomorphic nuclei in eosin-rich (keratinising) stroma — scaled by the differentiation the
slide was drawn with (poorly differentiated: larger, darker nuclei), and satellite foci around
it when the slide has spread through air spaces (STAS). The other report fields live in the
reports only. The categories come from the class-conditional tables of
:mod:`fivewsi.synthetic.lung`, so LUSC leans poorly differentiated and LUAD towards STAS;
each report leaves some fields unsaid.

Example:
    >>> import tempfile, pathlib
    >>> cohort = write_pixel_cohort(pathlib.Path(tempfile.mkdtemp()), n_train=2, n_test=2,
    ...                             shots=1, width=1024, height=768)
    >>> [p.name for p in (cohort.slides_csv, cohort.reports_csv, cohort.classes_csv)]
    ['slides.csv', 'reports.csv', 'classes.csv']
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fivewsi.cohort.table import write_classes
from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic.lung import CLASSES, MPP, UNKNOWN_RATE, class_descriptions, draw_categories
from fivewsi.synthetic.pixel_slide import write_pixel_slide
from fivewsi.synthetic.reports import report_text
from fivewsi.synthetic.slide_spec import SignalRegion
from fivewsi.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: Tumour nuclei and stroma per class, as multipliers of the normal tissue (see SignalRegion).
CLASS_STYLES: dict[str, dict[str, float]] = {
    # crowded small gland-forming nuclei, little eosin
    "LUAD": {"density": 3.6, "size": 1.05, "darkness": 1.15, "eosin": 0.7},
    # large pleomorphic hyperchromatic nuclei in keratinising, eosin-rich stroma
    "LUSC": {"density": 1.7, "size": 2.0, "darkness": 1.5, "eosin": 1.5},
}
#: (size, darkness, density) multipliers of the class style per differentiation category.
DIFFERENTIATION_STYLES: dict[str, tuple[float, float, float]] = {
    "well": (0.9, 0.92, 1.05),
    "well_to_moderate": (0.95, 0.96, 1.0),
    "moderate": (1.0, 1.0, 1.0),
    "moderate_to_poor": (1.08, 1.06, 0.95),
    "poor": (1.16, 1.12, 0.9),
    "undifferentiated": (1.25, 1.18, 0.85),
    "mixed": (1.05, 1.04, 1.0),
}


@dataclass
class PixelSlide:
    """One slide of a pixel cohort: its TIFF and what was drawn for it."""

    slide_id: str
    label: str
    split: str
    labelled: bool
    categories: dict[str, str]
    reported: dict[str, str] | None  # None: the slide has no report
    path: Path


@dataclass
class PixelCohort:
    """What :func:`write_pixel_cohort` wrote."""

    root: Path
    slides_dir: Path
    slides_csv: Path
    reports_csv: Path
    classes_csv: Path
    slides: list[PixelSlide]

    def split(self, name: str) -> list[PixelSlide]:
        """The slides of one split (``train`` or ``test``)."""
        return [s for s in self.slides if s.split == name]


def write_pixel_cohort(
    out: str | os.PathLike[str],
    *,
    n_train: int = 24,
    n_test: int = 16,
    shots: int = 4,
    seed: int = 0,
    width: int = 3072,
    height: int = 2048,
    missing_report_every: int = 8,
) -> PixelCohort:
    """Write a pixel cohort into ``out``: what a user would bring.

    - ``slides/<slide_id>.tif``: pyramidal JPEG TIFFs at :data:`~fivewsi.synthetic.lung.MPP`
      µm/px (existing files are kept: the same arguments give the same pixels).
    - ``reports.csv``: ``slide_id, report`` — a prose report per slide, except every
      ``missing_report_every``-th training slide (a report that never arrived).
    - ``slides.csv``: ``slide_id, label, split`` — labels for ``shots`` training slides per
      class and for every test slide; the other training slides are known by their report only.
    - ``classes.csv``: ``name, description`` of LUAD and LUSC.

    Deterministic in ``seed``. Slide ids are ``demo-000``, ... in a shuffled class order.

    Raises:
        ValueError: sizes that leave a split without both classes, or too few training slides
            for the shots.

    Example:
        >>> import tempfile, pathlib
        >>> cohort = write_pixel_cohort(pathlib.Path(tempfile.mkdtemp()), n_train=4, n_test=2,
        ...                             shots=1, width=1024, height=768)
        >>> sorted(s.label for s in cohort.split("train") if s.labelled)
        ['LUAD', 'LUSC']
    """
    if n_train < 2 * shots or shots < 1 or n_test < 2:
        raise ValueError(
            f"need shots >= 1, n_train >= 2 * shots and n_test >= 2 (both classes in each "
            f"split); got n_train={n_train}, n_test={n_test}, shots={shots}"
        )
    root = Path(out)
    slides_dir = root / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng([seed, 7])
    plan = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [CLASSES[i % 2] for i in range(n)]
        plan += [(split, labels[i]) for i in master.permutation(n)]
    digits = max(3, len(str(len(plan) - 1)))
    slides: list[PixelSlide] = []
    shots_left = dict.fromkeys(CLASSES, shots)
    n_train_seen = 0
    for index, (split, label) in enumerate(plan):
        rng = np.random.default_rng([seed, 11, index])
        categories = draw_categories(label, rng)
        reported = {k: (UNKNOWN if rng.random() < UNKNOWN_RATE else c)
                    for k, c in categories.items()}
        labelled = split == "test"
        if split == "train":
            n_train_seen += 1
            if shots_left[label]:
                labelled, shots_left[label] = True, shots_left[label] - 1
            if missing_report_every and n_train_seen % missing_report_every == 0:
                reported = None
        slide_id = f"demo-{index:0{digits}d}"
        slides.append(PixelSlide(slide_id, label, split, labelled, categories, reported,
                                 slides_dir / f"{slide_id}.tif"))
    _write_slides(slides, seed, width, height)

    reports = []
    for index, slide in enumerate(slides):
        if slide.reported is not None:
            rng = np.random.default_rng([seed, 13, index])
            reports.append([slide.slide_id, report_text(slide.label, slide.reported, rng)])
    reports_csv = root / "reports.csv"
    write_text_atomic(reports_csv, _csv_text(["slide_id", "report"], reports))
    slides_csv = root / "slides.csv"
    rows = [[s.slide_id, s.label if s.labelled else "", s.split] for s in slides]
    write_text_atomic(slides_csv, _csv_text(["slide_id", "label", "split"], rows))
    classes_csv = root / "classes.csv"
    write_classes(class_descriptions(), classes_csv)
    log.info("pixel cohort: %d slides (%d train, %d with a label; %d test), %d reports in %s",
             len(slides), n_train, sum(s.labelled for s in slides if s.split == "train"),
             n_test, len(reports), root)
    return PixelCohort(root, slides_dir, slides_csv, reports_csv, classes_csv, slides)


def tumour_regions(
    label: str, categories: dict[str, str], rng: np.random.Generator, width: int, height: int
) -> list[SignalRegion]:
    """The tumour focus of a slide (class and differentiation style) and its STAS satellites.

    Example:
        >>> import numpy as np
        >>> cats = {"differentiation": "poor", "stas": "present"}
        >>> regions = tumour_regions("LUSC", cats, np.random.default_rng(0), 3072, 2048)
        >>> len(regions) > 1, regions[0].size > CLASS_STYLES["LUSC"]["size"]
        (True, True)
    """
    style = dict(CLASS_STYLES[label])
    size, darkness, density = DIFFERENTIATION_STYLES.get(
        categories.get("differentiation", "moderate"), (1.0, 1.0, 1.0)
    )
    style["size"] *= size
    style["darkness"] *= darkness
    style["density"] *= density
    side = min(width, height)
    radius = side * rng.uniform(0.19, 0.25)
    x = width * rng.uniform(0.38, 0.62)
    y = height * rng.uniform(0.38, 0.62)
    regions = [SignalRegion(x, y, radius, **style)]
    if categories.get("stas") == "present":
        for _ in range(int(rng.integers(3, 6))):
            angle = rng.uniform(0, 2 * math.pi)
            distance = radius * rng.uniform(1.3, 1.7)
            regions.append(SignalRegion(x + distance * math.cos(angle),
                                        y + distance * math.sin(angle),
                                        radius * rng.uniform(0.12, 0.2), **style))
    return regions


def _write_slides(slides: list[PixelSlide], seed: int, width: int, height: int) -> None:
    """Write the missing slide files, two at a time (the writer is mostly numpy and cv2)."""
    def write(item: tuple[int, PixelSlide]) -> None:
        index, slide = item
        rng = np.random.default_rng([seed, 17, index])
        regions = tumour_regions(slide.label, slide.categories, rng, width, height)
        write_pixel_slide(slide.path, width=width, height=height, mpp=MPP,
                          seed=seed * 100_003 + index, regions=regions,
                          pen_mark="blue" if index % 11 == 5 else False)

    todo = [(i, s) for i, s in enumerate(slides) if not s.path.exists()]
    if not todo:
        return
    started = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        list(pool.map(write, todo))
    log.info("wrote %d synthetic slides in %.1f s", len(todo), time.perf_counter() - started)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()

