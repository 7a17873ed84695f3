"""``fivewsi demo``: the whole pipeline on a synthetic cohort it writes itself (no download).

The demo writes a small LUAD / LUSC cohort — slides as pyramidal TIFFs, one prose pathology
report per slide, a slide table with a few labelled training slides and labelled test slides,
and the class descriptions — then runs exactly the commands a user runs on their own data,
from inside the demo folder::

    fivewsi reports extract data/reports.csv --id-column slide_id --out reports/LABELS.csv
    fivewsi cohort merge data/slides.csv --labels reports/LABELS.csv --out cohort.csv
    fivewsi preprocess data/slides --out preprocessed
    fivewsi train --features preprocessed/features --cohort cohort.csv --out runs/pretrain
    fivewsi train --features preprocessed/features --cohort cohort.csv \\
        --classes data/classes.csv --init runs/pretrain --shots 4 --out runs/fewshot
    fivewsi evaluate runs/fewshot --features preprocessed/features --cohort cohort.csv \\
        --out runs/fewshot/evaluation/test
    fivewsi evaluate runs/pretrain --classes data/classes.csv ... (zero-shot, same test slides)
    fivewsi predict runs/fewshot data/slides/<test slides> --out predictions

(the train commands also pass the demo's ``--epochs``, ``--min-steps 0`` and
``--sample-ratio 1``: its slides are small). Through the same Python functions those commands
call, with the same outputs. A rerun reuses finished work (slides, features, trained
runs); the settings are kept in ``OUT/demo.json`` and a rerun with other settings is refused.

What the synthetic slides carry (so that the default ``he-handcrafted`` encoder can tell the
classes apart): one tumour focus per slide whose nuclei depend on the class — LUAD: many small,
moderately dark, gland-like crowded nuclei in pale stroma; LUSC: fewer, large, very dark
pleomorphic nuclei in eosin-rich (keratinising) stroma — scaled by the differentiation the
slide was drawn with (poorly differentiated: larger, darker nuclei), and satellite foci around
it when the slide has spread through air spaces (STAS). The other report fields live in the
reports only. The categories come from the synthetic cohort's class-conditional tables
(:mod:`fivewsi.cohort.synthetic`), so LUSC leans poorly differentiated and LUAD towards STAS;
each report leaves some fields unsaid.

Example:
    >>> import tempfile, pathlib
    >>> data = write_demo_data(pathlib.Path(tempfile.mkdtemp()), n_train=2, n_test=2, shots=1,
    ...                        width=1024, height=768)
    >>> [p.name for p in (data.slides_csv, data.reports_csv, data.classes_csv)]
    ['slides.csv', 'reports.csv', 'classes.csv']
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fivewsi.errors import DemoStageError

if TYPE_CHECKING:  # heavy modules load only when the demo runs
    from collections.abc import Callable

    import numpy as np

    from fivewsi.cohort.merge import MergeSummary
    from fivewsi.evaluation.evaluate import EvaluationResult
    from fivewsi.features.preprocess import PreprocessResult
    from fivewsi.predict.predict import PredictResult
    from fivewsi.reports.pipeline import ExtractSummary
    from fivewsi.slides.synthetic import SignalRegion
    from fivewsi.training.train import TrainResult

log = logging.getLogger(__name__)

CLASSES = ("LUAD", "LUSC")

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


@dataclass(frozen=True)
class DemoSize:
    """Sizes and training lengths of a demo.

    Attributes:
        n_train, n_test: slides per split (classes balanced within each).
        shots: labelled training slides per class (the others are known by their report only).
        width, height: slide size in pixels at 0.5 µm/px.
        pretrain_epochs, fewshot_epochs: epochs of the two training runs.
        sample_ratio: share of each slide's patches drawn per training step. The demo's slides
            are small (tens of patches, a few of them tumour), so both runs use every patch
            rather than ``fivewsi train``'s 0.25 for large slides.
    """

    n_train: int
    n_test: int
    shots: int
    width: int
    height: int
    pretrain_epochs: int
    fewshot_epochs: int
    sample_ratio: float = 1.0


#: ``default``: the README's demo (a few minutes on 2 cores); ``small``: for tests.
SIZES: dict[str, DemoSize] = {
    "default": DemoSize(n_train=40, n_test=24, shots=4, width=3072, height=2048,
                        pretrain_epochs=30, fewshot_epochs=60),
    "small": DemoSize(n_train=6, n_test=4, shots=2, width=1536, height=1024,
                      pretrain_epochs=2, fewshot_epochs=2),
}


@dataclass
class DemoSlide:
    """One synthetic slide and what was drawn for it."""

    slide_id: str
    label: str
    split: str
    labelled: bool
    categories: dict[str, str]
    reported: dict[str, str] | None  # None: the slide has no report
    path: Path


@dataclass
class DemoData:
    """What :func:`write_demo_data` wrote."""

    root: Path
    slides_dir: Path
    slides_csv: Path
    reports_csv: Path
    classes_csv: Path
    slides: list[DemoSlide]

    def split(self, name: str) -> list[DemoSlide]:
        """The slides of one split (``train`` or ``test``)."""
        return [s for s in self.slides if s.split == name]


@dataclass
class DemoStep:
    """One pipeline step: the equivalent command line and how long it took."""

    name: str
    command: str
    seconds: float = 0.0
    outcome: str = ""


@dataclass
class DemoResult:
    """Everything the demo produced."""

    out: Path
    data: DemoData | None = None
    steps: list[DemoStep] = field(default_factory=list)
    labels: ExtractSummary | None = None
    merge: MergeSummary | None = None
    preprocess: PreprocessResult | None = None
    pretrain: TrainResult | None = None
    fewshot: TrainResult | None = None
    evaluation: EvaluationResult | None = None
    zero_shot: EvaluationResult | None = None
    prediction: PredictResult | None = None
    seconds: float = 0.0

    @property
    def report_html(self) -> Path:
        """The prediction page."""
        return self.out / "predictions" / "report.html"

    @property
    def ok(self) -> bool:
        """True when no slide failed in preprocessing or prediction."""
        pre_ok = self.preprocess is None or self.preprocess.ok
        pred_ok = self.prediction is None or not self.prediction.failed
        return pre_ok and pred_ok


class DemoError(DemoStageError, RuntimeError):
    """The demo folder holds a demo made with other settings."""


# --- data ----------------------------------------------------------------------------------------


def write_demo_data(
    out: str | os.PathLike[str],
    *,
    n_train: int = 24,
    n_test: int = 16,
    shots: int = 4,
    seed: int = 0,
    width: int = 3072,
    height: int = 2048,
    missing_report_every: int = 8,
) -> DemoData:
    """Write the demo's inputs into ``out/data``: what a user would bring.

    - ``slides/<slide_id>.tif``: pyramidal JPEG TIFFs at 0.5 µm/px (existing files are kept:
      the same arguments give the same pixels).
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
        >>> data = write_demo_data(pathlib.Path(tempfile.mkdtemp()), n_train=4, n_test=2,
        ...                        shots=1, width=1024, height=768)
        >>> sorted(s.label for s in data.split("train") if s.labelled)
        ['LUAD', 'LUSC']
    """
    import numpy as np

    from fivewsi.cohort.synthetic import class_descriptions, draw_categories, report_text
    from fivewsi.cohort.table import write_classes
    from fivewsi.utils.atomic import write_text_atomic

    if n_train < 2 * shots or shots < 1 or n_test < 2:
        raise ValueError(
            f"need shots >= 1, n_train >= 2 * shots and n_test >= 2 (both classes in each "
            f"split); got n_train={n_train}, n_test={n_test}, shots={shots}"
        )
    root = Path(out) / "data"
    slides_dir = root / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng([seed, 7])
    plan = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = [CLASSES[i % 2] for i in range(n)]
        plan += [(split, labels[i]) for i in master.permutation(n)]
    digits = max(3, len(str(len(plan) - 1)))
    slides: list[DemoSlide] = []
    shots_left = dict.fromkeys(CLASSES, shots)
    n_train_seen = 0
    for index, (split, label) in enumerate(plan):
        rng = np.random.default_rng([seed, 11, index])
        categories = draw_categories(label, rng)
        reported = {k: ("unknown" if rng.random() < 0.3 else c) for k, c in categories.items()}
        labelled = split == "test"
        if split == "train":
            n_train_seen += 1
            if shots_left[label]:
                labelled, shots_left[label] = True, shots_left[label] - 1
            if missing_report_every and n_train_seen % missing_report_every == 0:
                reported = None
        slide_id = f"demo-{index:0{digits}d}"
        slides.append(DemoSlide(slide_id, label, split, labelled, categories, reported,
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
    log.info("demo data: %d slides (%d train, %d with a label; %d test), %d reports in %s",
             len(slides), n_train, sum(s.labelled for s in slides if s.split == "train"),
             n_test, len(reports), root)
    return DemoData(root, slides_dir, slides_csv, reports_csv, classes_csv, slides)


def demo_regions(
    label: str, categories: dict[str, str], rng: np.random.Generator, width: int, height: int
) -> list[SignalRegion]:
    """The tumour focus of a slide (class and differentiation style) and its STAS satellites.

    Example:
        >>> import numpy as np
        >>> cats = {"differentiation": "poor", "stas": "present"}
        >>> regions = demo_regions("LUSC", cats, np.random.default_rng(0), 3072, 2048)
        >>> len(regions) > 1, regions[0].size > CLASS_STYLES["LUSC"]["size"]
        (True, True)
    """
    from fivewsi.slides.synthetic import SignalRegion

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


def _write_slides(slides: list[DemoSlide], seed: int, width: int, height: int) -> None:
    """Write the missing slide files, two at a time (the writer is mostly numpy and cv2)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from fivewsi.slides.synthetic import write_synthetic_slide

    def write(item: tuple[int, DemoSlide]) -> None:
        index, slide = item
        rng = np.random.default_rng([seed, 17, index])
        regions = demo_regions(slide.label, slide.categories, rng, width, height)
        write_synthetic_slide(slide.path, width=width, height=height, mpp=0.5,
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


# --- the pipeline --------------------------------------------------------------------------------


def run_demo(
    out: str | os.PathLike[str],
    *,
    size: str | DemoSize = "default",
    n_slides: int | None = None,
    shots: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Write the demo data into ``out`` and run the pipeline on it, step by step.

    Args:
        out: the demo folder (created; a rerun reuses its finished work).
        size: a name from :data:`SIZES` or a :class:`DemoSize`.
        n_slides: total slides, replacing the size's (60 % train, 40 % test).
        shots: labelled training slides per class, replacing the size's.
        seed: seed of the synthetic data (training keeps ``fivewsi train``'s default seed).
        progress: show progress bars.

    Raises:
        DemoError: ``out`` holds a demo made with other settings.
        ValueError: an unknown size or too few slides.

    Example:
        >>> result = run_demo("fivewsi-demo", size="small")  # doctest: +SKIP
        >>> result.evaluation.metrics["balanced_accuracy"]["value"]  # doctest: +SKIP
        0.75
    """
    started = time.perf_counter()
    out = Path(out)
    spec = _resolve_size(size, n_slides, shots)
    _check_settings(out, spec, seed)
    result = DemoResult(out)

    def step(name: str, command: str, action: Callable[[], str]) -> None:
        log.info("%s: fivewsi %s", name, command)
        record = DemoStep(name, f"fivewsi {command}")
        tick = time.perf_counter()
        record.outcome = action()
        record.seconds = time.perf_counter() - tick
        result.steps.append(record)
        log.info("%s done in %.1f s: %s", name, record.seconds, record.outcome)

    def data() -> str:
        result.data = write_demo_data(out, n_train=spec.n_train, n_test=spec.n_test,
                                      shots=spec.shots, seed=seed, width=spec.width,
                                      height=spec.height)
        return f"{len(result.data.slides)} slides, reports, slide table, classes in data/"

    log.info("demo folder: %s (commands below run inside it)", out)
    step("data", "(writes data/: the synthetic slides, reports, slide table, classes)", data)
    _run_pipeline(result, spec, progress, step)
    result.seconds = time.perf_counter() - started
    log.info("demo finished in %.1f s; open %s", result.seconds, result.report_html)
    return result


def _run_pipeline(
    result: DemoResult,
    spec: DemoSize,
    progress: bool,
    step: Callable[[str, str, Callable[[], str]], None],
) -> None:
    from fivewsi.cohort.merge import merge_cohort
    from fivewsi.evaluation.evaluate import evaluate_run
    from fivewsi.features.preprocess import PreprocessConfig, preprocess
    from fivewsi.predict.predict import PredictConfig, predict
    from fivewsi.reports.pipeline import extract_reports
    from fivewsi.training.config import TrainConfig
    from fivewsi.training.train import train

    out, data = result.out, result.data
    assert data is not None, "the data step runs first"
    labels_csv, cohort_csv = out / "reports" / "LABELS.csv", out / "cohort.csv"
    prep, pretrain_run, fewshot_run = out / "preprocessed", out / "runs" / "pretrain", \
        out / "runs" / "fewshot"
    features = prep / "features"

    def extract() -> str:
        result.labels = extract_reports(data.reports_csv, labels_csv, backend="rules",
                                        id_column="slide_id", progress=progress)
        return result.labels.summary()

    def merge() -> str:
        result.merge = merge_cohort(data.slides_csv, labels_csv, cohort_csv)
        return result.merge.summary()

    def embed() -> str:
        result.preprocess = preprocess([data.slides_dir], prep, PreprocessConfig(),
                                       progress=progress)
        records = result.preprocess.records
        done = [r for r in records if r.status == "done"]
        return (f"{len(done)} slides ({sum(r.reused for r in done)} reused), "
                f"{sum(r.n_patches for r in done)} patches, {len(result.preprocess.failed)} failed")

    def pretrain() -> str:
        config = TrainConfig(features=features, cohort=cohort_csv, out=pretrain_run,
                             epochs=spec.pretrain_epochs, min_steps=0,
                             sample_ratio=spec.sample_ratio, progress=progress)
        result.pretrain = train(config)
        return _train_outcome(result.pretrain)

    def fewshot() -> str:
        config = TrainConfig(features=features, cohort=cohort_csv, out=fewshot_run,
                             classes=data.classes_csv, init=pretrain_run, shots=spec.shots,
                             epochs=spec.fewshot_epochs, min_steps=0,
                             sample_ratio=spec.sample_ratio, progress=progress)
        result.fewshot = train(config)
        return _train_outcome(result.fewshot)

    def evaluate() -> str:
        result.evaluation = evaluate_run(fewshot_run, features, cohort_csv,
                                         out=fewshot_run / "evaluation" / "test")
        return _metrics_outcome(result.evaluation)

    def zero_shot() -> str:
        result.zero_shot = evaluate_run(pretrain_run, features, cohort_csv,
                                        classes=data.classes_csv,
                                        out=pretrain_run / "evaluation" / "zero-shot")
        return _metrics_outcome(result.zero_shot)

    test_slides = [s.path for s in data.split("test")]

    def predict_step() -> str:
        config = PredictConfig(run=fewshot_run, inputs=test_slides, out=out / "predictions",
                               progress=progress)
        result.prediction = predict(config)
        failed = len(result.prediction.failed)
        return (f"{len(result.prediction.outcomes)} slides, {failed} failed → "
                f"{Path('predictions') / 'report.html'}")

    common = "--features preprocessed/features --cohort cohort.csv"
    sampling = f"--sample-ratio {spec.sample_ratio:g} --min-steps 0"
    step("reports", "reports extract data/reports.csv --id-column slide_id "
         "--out reports/LABELS.csv", extract)
    step("cohort", "cohort merge data/slides.csv --labels reports/LABELS.csv --out cohort.csv",
         merge)
    step("preprocess", "preprocess data/slides --out preprocessed", embed)
    step("pretrain", f"train {common} --epochs {spec.pretrain_epochs} {sampling} "
         "--out runs/pretrain", pretrain)
    step("few-shot", f"train {common} --classes data/classes.csv --init runs/pretrain "
         f"--shots {spec.shots} --epochs {spec.fewshot_epochs} {sampling} --out runs/fewshot",
         fewshot)
    step("evaluate", f"evaluate runs/fewshot {common} --out runs/fewshot/evaluation/test",
         evaluate)
    step("zero-shot", f"evaluate runs/pretrain --classes data/classes.csv {common} "
         "--out runs/pretrain/evaluation/zero-shot", zero_shot)
    shown = " ".join(str(p.relative_to(out)) for p in test_slides[:2])
    more = f" ... ({len(test_slides)} test slides)" if len(test_slides) > 2 else ""
    step("predict", f"predict runs/fewshot {shown}{more} --out predictions", predict_step)


def _train_outcome(result: TrainResult) -> str:
    if result.skipped:
        return f"{result.run.name} already trained (reused)"
    return (f"{result.stage}: {result.n_train} training / {result.n_val} validation slides, "
            f"{result.epochs} epochs")


def _metrics_outcome(result: EvaluationResult) -> str:
    metrics = result.metrics
    parts = []
    for name in ("balanced_accuracy", "auc"):
        value = metrics.get(name, {}).get("value")
        if value is not None:
            parts.append(f"{name} {value:.3f}")
    return f"{metrics['n']} test slides: " + ", ".join(parts)


def _resolve_size(size: str | DemoSize, n_slides: int | None, shots: int | None) -> DemoSize:
    if isinstance(size, str):
        if size not in SIZES:
            raise DemoError(f"unknown demo size {size!r}; use one of {sorted(SIZES)}")
        size = SIZES[size]
    changes: dict[str, int] = {}
    if n_slides is not None:
        n_test = max(2, round(0.4 * n_slides))
        changes.update(n_train=n_slides - n_test, n_test=n_test)
    if shots is not None:
        changes["shots"] = shots
    spec = DemoSize(**{**asdict(size), **changes})
    if spec.shots < 1 or spec.n_train < 2 * spec.shots or spec.n_test < 2:
        raise DemoError(
            f"{spec.n_train} training and {spec.n_test} test slides cannot hold {spec.shots} "
            "labelled slides per class and both classes in the test split; use more slides"
        )
    return spec


def _check_settings(out: Path, spec: DemoSize, seed: int) -> None:
    """Record the demo's settings; refuse a folder holding a demo made with other ones."""
    from fivewsi.utils.atomic import write_json_atomic

    wanted = {"size": asdict(spec), "seed": seed}
    path = out / "demo.json"
    if path.exists():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != wanted:
            raise DemoError(
                f"{out} holds a demo made with other settings ({stored}); use another --out "
                "folder or remove this one"
            )
        log.info("%s holds this demo already: finished steps are reused", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, wanted)
