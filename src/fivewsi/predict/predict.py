"""`fivewsi predict`: slides or feature files → predictions, fine-grained attributes, heatmaps,
GeoJSON and one HTML page.

Slides are preprocessed with the run's encoder and tiling settings into ``OUT`` (finished feature
files are reused, so a rerun only predicts); feature files are read as they are. A slide that
fails anywhere keeps its row, with its error, in ``predictions.csv`` and the page.

Outputs::

    OUT/predictions.csv          slide_id, status, error, predicted, p_<class>..., per-question
                                 best category and its probability, draft description,
                                 n_patches, render_error, calibration (text cells guarded
                                 by csv_cell; calibration: whether p_<class> are calibrated)
    OUT/heatmaps/<id>/*.png      overlays on the thumbnail: the predicted class, each question
    OUT/geojson/<id>.geojson     patch polygons with every score as a measurement (QuPath)
    OUT/report.html              the self-contained page
    OUT/predict.json             the run and the evaluation whose figures the page shows
                                 (``fivewsi view`` shows them too)

Example:
    >>> from fivewsi.predict.predict import PredictConfig
    >>> PredictConfig(run="RUN", inputs=["slides"], out="OUT").heatmaps
    True
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fivewsi.errors import PredictStageError
from fivewsi.utils.atomic import write_json_atomic, write_text_atomic
from fivewsi.utils.logs import make_progress
from fivewsi.utils.outputs import check_output_folder, csv_cell, safe_file_name

if TYPE_CHECKING:
    from fivewsi.features.bags import Bag
    from fivewsi.predict.html import SlideReport
    from fivewsi.runs.classifier import SlideClassifier, SlidePrediction

log = logging.getLogger(__name__)

#: Suffixes read as bags of features rather than as slides.
FEATURE_SUFFIXES = (".h5", ".pt")
#: Side of the thumbnail heatmaps are drawn on.
THUMBNAIL_SIDE = 1024


#: ``OUT/predict.json``: ``run`` (its folder) and ``evaluation`` (the ``evaluate`` output whose
#: figures the page shows, or null), both absolute.
PREDICT_INFO = "predict.json"


class PredictInputError(PredictStageError, ValueError):
    """The inputs cannot all be scored: none found, one missing, or two claim one slide id."""


class PredictConfig(BaseModel):
    """Settings of ``fivewsi predict``."""

    model_config = ConfigDict(extra="forbid")

    run: Path
    inputs: list[Path]
    out: Path
    classes: Path | None = None
    slide_mpp: float | None = Field(None, gt=0, description="level-0 mpp when metadata lacks it")
    workers: int | None = Field(None, ge=0)
    device: str = "cpu"
    heatmaps: bool = True
    geojson: bool = True
    html: bool = True
    progress: bool = True
    evaluation: Path | None = Field(
        None, description="an `evaluate` output folder whose figures report.html shows "
        "(default: RUN/evaluation/test when it evaluated this run with these classes)")


@dataclass
class SlideOutcome:
    """One input's result: a prediction, or the error that stopped it."""

    slide_id: str
    source: Path
    status: str = "ok"
    error: str = ""
    render_error: str = ""  # heatmaps / GeoJSON that could not be written; the prediction stands
    prediction: SlidePrediction | None = None
    attributes: dict[str, tuple[str, float]] = field(default_factory=dict)
    description: str = ""
    n_patches: int = 0
    heatmaps: dict[str, Path] = field(default_factory=dict)
    heatmap_labels: dict[str, str] = field(default_factory=dict)  # map's range, absolute terms
    thumbnail: Path | None = None
    geojson: Path | None = None


@dataclass
class PredictResult:
    """Every input's outcome and where the outputs are."""

    out: Path
    outcomes: list[SlideOutcome]
    classes: list[str]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[SlideOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]


def predict(config: PredictConfig) -> PredictResult:
    """Predict every input of ``config``; failures are recorded, never fatal for the others.

    Before any slide is touched, the run is loaded, every input is found and given its slide id
    (two inputs with one id are refused) and ``config.out`` is proven writable: these raise a
    :class:`~fivewsi.errors.FivewsiError` (the command line's one line and exit 2).
    """
    from fivewsi.runs.classifier import load_model

    started = time.perf_counter()
    out = Path(config.out)
    timings: dict[str, float] = {}
    classifier = load_model(config.run, classes=config.classes, device=config.device)
    if config.evaluation is not None and not (config.evaluation / "metrics.json").is_file():
        raise PredictInputError(f"--evaluation {config.evaluation}: no metrics.json (not an "
                                "`fivewsi evaluate` output folder)")
    slides, features = _split_inputs(config.inputs, out)
    check_output_folder(out)
    tick = time.perf_counter()
    sources = _preprocess_slides(slides, classifier, config) if slides else {}
    sources.update({slide_id: (p, None, "") for slide_id, p in features.items()})
    timings["preprocess"] = time.perf_counter() - tick
    outcomes = _predict_all(sources, classifier, config, timings)
    tick = time.perf_counter()
    _write_predictions(out / "predictions.csv", outcomes, classifier)
    evaluation = _evaluation_folder(config, classifier)
    write_json_atomic(out / PREDICT_INFO, {
        "run": str(Path(config.run).resolve()),
        "evaluation": str(evaluation.resolve()) if evaluation is not None else None,
    })
    if config.html:
        _write_page(out, outcomes, classifier, config, evaluation)
    timings["page"] = time.perf_counter() - tick
    result = PredictResult(out, outcomes, list(classifier.classes), 0.0, timings)
    result.seconds = time.perf_counter() - started
    return result


def _split_inputs(
    inputs: list[Path], out: Path | None = None
) -> tuple[list[Path], dict[str, Path]]:
    """Every input as a slide or a feature file, each under its own slide id.

    A folder gives its feature files (:data:`FEATURE_SUFFIXES`, top level) and its slides
    (searched recursively); a file is a feature file by its suffix, else a slide. Anything
    under ``out`` is fivewsi's own output and never an input. One file reached twice under one
    id (by name and through its folder) is one input.

    Returns:
        the slides (their ids are :func:`~fivewsi.slides.readers.slide_id_from_path`) and
        slide id → feature file.

    Raises:
        PredictInputError: an input does not exist, nothing was found, or two different
            inputs claim one slide id (or would write to the same output files).
    """
    from fivewsi.slides.readers import find_slides, slide_id_from_path

    missing = [str(p) for p in map(Path, inputs) if not p.exists()]
    if missing:
        raise PredictInputError(f"input not found: {', '.join(missing)}")
    own = Path(os.path.realpath(out)) if out is not None else None

    def ours(path: Path) -> bool:
        return own is not None and Path(os.path.realpath(path)).is_relative_to(own)

    found: list[tuple[str, Path, bool]] = []  # (slide id, path, is a feature file)
    for path in map(Path, inputs):
        if path.is_dir():
            bags = sorted(p for s in FEATURE_SUFFIXES for p in path.glob(f"*{s}") if p.is_file())
            found += [(p.stem, p, True) for p in bags if not ours(p)]
            found += [(slide_id_from_path(p), p, False) for p in find_slides([path])
                      if not ours(p)]
        elif path.suffix.lower() in FEATURE_SUFFIXES:
            found.append((path.stem, path, True))
        else:
            found += [(slide_id_from_path(p), p, False) for p in find_slides([path])]
    if not found:
        raise PredictInputError(
            f"no slides or feature files ({', '.join(FEATURE_SUFFIXES)}) found in "
            f"{', '.join(map(str, inputs))}"
        )
    by_id: dict[str, tuple[Path, bool]] = {}
    by_name: dict[str, str] = {}
    for slide_id, path, is_bag in found:
        if slide_id in by_id:
            if os.path.realpath(by_id[slide_id][0]) == os.path.realpath(path):
                continue  # the same file, reached twice
            raise PredictInputError(
                f"two inputs have the slide id {slide_id!r}: {by_id[slide_id][0]} and {path}; "
                "rename one, or predict them into separate --out folders"
            )
        name = safe_file_name(slide_id).casefold()
        if name in by_name:
            raise PredictInputError(
                f"slide ids {by_name[name]!r} and {slide_id!r} would share output file names; "
                "rename one, or predict them into separate --out folders"
            )
        by_id[slide_id], by_name[name] = (path, is_bag), slide_id
    slides = [path for path, is_bag in by_id.values() if not is_bag]
    features = {slide_id: path for slide_id, (path, is_bag) in by_id.items() if is_bag}
    return slides, features


def _preprocess_slides(
    slides: list[Path], classifier: SlideClassifier, config: PredictConfig
) -> dict[str, tuple[Path, Path | None, str]]:
    """Tile and embed slides with the run's settings; slide_id → (feature file, slide, error)."""
    from fivewsi.features.preprocess import PreprocessConfig, preprocess
    from fivewsi.slides.readers import slide_id_from_path

    settings = classifier.preprocess_settings()
    options: dict[str, Any] = {
        key: settings[key]
        for key in ("target_mpp", "patch_size", "encoder", "min_tissue")
        if settings.get(key) is not None
    }
    if config.workers is not None:
        options["workers"] = config.workers
    pre = PreprocessConfig(**options, slide_mpp=config.slide_mpp, device=config.device, qc=False)
    log.info("preprocessing %d slide(s) with %s", len(slides), options)
    result = preprocess(slides, config.out, pre, progress=config.progress)
    by_id = {r.slide_id: r for r in result.records}
    sources = {}
    for slide in slides:
        slide_id = slide_id_from_path(slide)
        record = by_id.get(slide_id)
        feature_file = Path(config.out) / "features" / f"{slide_id}.h5"
        if not feature_file.exists():  # a preprocess that names its files safely
            feature_file = feature_file.with_name(f"{safe_file_name(slide_id)}.h5")
        error = "" if record and record.status == "done" else (record.error if record else "")
        sources[slide_id] = (feature_file, slide, error or ("" if record else "not processed"))
    return sources


def _predict_all(
    sources: dict[str, tuple[Path, Path | None, str]],
    classifier: SlideClassifier,
    config: PredictConfig,
    timings: dict[str, float],
) -> list[SlideOutcome]:
    from fivewsi.runs.loop import predict_files

    timings.setdefault("model", 0.0)
    timings.setdefault("render", 0.0)
    ordered = sorted(sources.items())
    items = [(slide_id, path, error or None) for slide_id, (path, _, error) in ordered]
    # One bag at a time: predictions do not depend on what else is in the batch.
    results = predict_files(classifier, items, max_batch_patches=0, keep_bags=True)
    outcomes = []
    with make_progress(config.progress) as bars:
        task = bars.add_task("predict", total=len(sources), rate="")
        for slide_id, (feature_file, slide, _) in ordered:
            outcome = SlideOutcome(slide_id, slide or feature_file)
            tick = time.perf_counter()
            result = next(results)
            try:
                if result.error is None:
                    assert result.prediction is not None and result.bag is not None
                    outcome.prediction = result.prediction
                    outcome.n_patches = result.bag.n_patches
                    _describe(outcome, classifier)
                timings["model"] += time.perf_counter() - tick
            except Exception as exc:  # one bad slide must not stop the batch
                result.error = f"{type(exc).__name__}: {exc}"
            if result.error is None:
                tick = time.perf_counter()
                try:
                    _render_one(outcome, result.bag, slide, classifier, config)
                except Exception as exc:  # the prediction stands without its pictures
                    outcome.render_error = f"{type(exc).__name__}: {exc}"
                    log.warning("%s: heatmaps not written: %s", slide_id, outcome.render_error)
                timings["render"] += time.perf_counter() - tick
            if result.error is not None and result.error.startswith("feature size"):
                result.error = _feature_size_error(feature_file, classifier)
            if result.error is not None:
                if outcome.prediction is not None or not sources[slide_id][2]:
                    log.warning("%s: prediction failed: %s", slide_id, result.error)
                outcome.status, outcome.error = "failed", result.error
            result.bag = None  # free the bag once rendered
            outcomes.append(outcome)
            bars.advance(task)
    return outcomes


def _feature_size_error(feature_file: Path, classifier: SlideClassifier) -> str:
    """Which feature sizes differ and why: the run's encoder against the file's."""
    from fivewsi.features.bags import load_bag

    encoder = classifier.preprocess_settings().get("encoder") or "its encoder"
    try:
        bag = load_bag(feature_file)
        attrs, dim = bag.attrs, str(bag.dim)
    except Exception:  # the explanation is a courtesy: keep what is known
        attrs, dim = {}, "another"
    theirs = f"from encoder {attrs['encoder']}" if attrs.get("encoder") else "from another encoder"
    return (
        f"feature size mismatch: the run was trained on {classifier.in_dim}-dim features from "
        f"encoder {encoder}; this bag has {dim}-dim features {theirs}. Embed the slide with "
        f"{encoder} (give predict the slide itself, or preprocess with --encoder {encoder})"
    )


def _describe(outcome: SlideOutcome, classifier: SlideClassifier) -> None:
    """The slide's fine-grained attributes and the description they render to (text models)."""
    from fivewsi.reports.render import render_label

    assert outcome.prediction is not None
    outcome.attributes = classifier.attributes(outcome.prediction)
    if outcome.attributes:
        best = {k: v[0] for k, v in outcome.attributes.items()}
        outcome.description = render_label(best, classifier.questions)


def _heatmap_scores(
    prediction: SlidePrediction, classifier: SlideClassifier
) -> dict[str, np.ndarray]:
    """Map name → per-patch score: the predicted class, then each question prompt."""
    scores = {f"class {prediction.predicted}": prediction.class_attention}
    if prediction.prompt_attention is not None:
        for index, question in enumerate(classifier.questions.questions):
            scores[question.key] = prediction.prompt_attention[index]
    return scores


def _render_one(
    outcome: SlideOutcome,
    bag: Bag,
    slide: Path | None,
    classifier: SlideClassifier,
    config: PredictConfig,
) -> None:
    from fivewsi.predict.geojson import patch_geojson, write_geojson
    from fivewsi.predict.heatmaps import HeatmapCanvas, attention_label, save_png, with_legend

    assert outcome.prediction is not None
    if bag.coords is None or not (config.heatmaps or config.geojson):
        return
    size = bag.patch_size_level0 or 256
    if len(bag.coords) and int(np.min(bag.coords)) < 0:
        smallest = np.min(bag.coords, axis=0).tolist()
        raise ValueError(
            f"patch coordinates are negative (smallest x, y: {smallest}); "
            "heatmaps and GeoJSON need level-0 coordinates inside the slide"
        )
    scores = _heatmap_scores(outcome.prediction, classifier)
    out = Path(config.out)
    stem = safe_file_name(outcome.slide_id)
    if config.geojson:
        collection = patch_geojson(bag.coords, size, scores, slide_id=outcome.slide_id)
        outcome.geojson = write_geojson(out / "geojson" / f"{stem}.geojson", collection)
    if not config.heatmaps:
        return
    thumbnail, downsample = _thumbnail(slide, bag, size, config.slide_mpp)
    canvas = HeatmapCanvas(thumbnail, bag.coords, size, downsample, max_side=THUMBNAIL_SIDE)
    folder = out / "heatmaps" / stem
    plain = canvas.render(np.full(bag.n_patches, np.nan))  # NaN leaves every patch unpainted
    outcome.thumbnail = save_png(folder / "thumbnail.png", plain)
    for name, values in scores.items():
        filename = heatmap_file_name(name)
        image = with_legend(canvas.render(values), values)
        outcome.heatmaps[name] = save_png(folder / filename, image)
        outcome.heatmap_labels[name] = attention_label(values) or ""


def heatmap_file_name(name: str) -> str:
    """The PNG name of one heatmap (``class LUAD``, a question key): safe and bounded.

    Example:
        >>> heatmap_file_name("class LUAD"), heatmap_file_name("class a/b:c")
        ('class-LUAD.png', 'class-a-b_c.png')
        >>> len(heatmap_file_name("class " + "x" * 300)) <= 130
        True
    """
    return safe_file_name(name.replace(" ", "-").replace("/", "-")) + ".png"


def _thumbnail(
    slide: Path | None, bag: Bag, size: int, slide_mpp: float | None
) -> tuple[np.ndarray, float]:
    """The slide's thumbnail when the slide is at hand, else a plain canvas from the coords."""
    from fivewsi.predict.heatmaps import blank_thumbnail
    from fivewsi.slides.readers import open_slide

    if slide is not None:
        with open_slide(slide, mpp=slide_mpp) as reader:
            return reader.read_thumbnail(THUMBNAIL_SIDE)
    return blank_thumbnail(bag.coords, size, max_side=THUMBNAIL_SIDE)


def _write_predictions(
    path: Path, outcomes: list[SlideOutcome], classifier: SlideClassifier
) -> None:
    keys = classifier.attribute_keys()
    header = ["slide_id", "status", "error", "predicted"]
    header += [f"p_{c}" for c in classifier.classes]
    header += [col for k in keys for col in (k, f"{k}_probability")]
    header += ["description", "n_patches", "render_error", "calibration"]
    # Whether the p_<class> columns are calibrated: the same words on every row.
    calibration = csv_cell(classifier.calibration)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for o in outcomes:
        p = o.prediction
        # text cells go through csv_cell (no formula a spreadsheet would run); numbers as they are
        row: list[Any] = [csv_cell(o.slide_id), o.status, csv_cell(o.error),
                          csv_cell(p.predicted) if p else ""]
        row += [f"{v:.6f}" for v in p.probabilities] if p else [""] * len(classifier.classes)
        for key in keys:
            category, prob = o.attributes.get(key, ("", float("nan")))
            row += [csv_cell(category), f"{prob:.4f}" if category else ""]
        row += [csv_cell(o.description), o.n_patches, csv_cell(o.render_error), calibration]
        writer.writerow(row)
    write_text_atomic(path, buffer.getvalue())


def _write_page(
    out: Path, outcomes: list[SlideOutcome], classifier: SlideClassifier, config: PredictConfig,
    evaluation: Path | None,
) -> None:
    from fivewsi.predict.html import evaluation_figures, write_report_html

    reports = [_slide_report(o, classifier, out) for o in outcomes]
    summary = {  # the page counts slides itself
        "classes": ", ".join(classifier.classes),
        "probabilities": classifier.calibration,
    }
    run_info = {
        "run": str(config.run),
        "model": classifier.model_name,
        **{k: v for k, v in classifier.preprocess_settings().items() if v is not None},
    }
    figures = evaluation_figures(evaluation) if evaluation is not None else []
    write_report_html(out / "report.html", reports, summary=summary, run_info=run_info,
                      figures=figures)


def _evaluation_folder(config: PredictConfig, classifier: SlideClassifier) -> Path | None:
    """``config.evaluation``, else the run's own test evaluation (``RUN/evaluation/test``)
    when that evaluated this run with the classes predicted now; None when there is none."""
    import json

    from fivewsi.runs.record import EVALUATION

    if config.evaluation is not None:
        return Path(config.evaluation)
    folder = Path(config.run) / EVALUATION / "test"
    try:
        info = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = (isinstance(info, dict) and info.get("run") == str(Path(config.run).resolve())
            and info.get("classes") == list(classifier.classes))
    if not same:
        log.info("report: %s is not an evaluation of this run with these classes; its figures "
                 "are not shown", folder)
        return None
    return folder


def _slide_report(outcome: SlideOutcome, classifier: SlideClassifier, out: Path) -> SlideReport:
    from fivewsi.predict.html import AttributeRow, SlideImage, SlideReport, heatmap_caption

    p = outcome.prediction
    questions = {q.key: q for q in classifier.questions.questions} if p else {}
    rows = []
    for key, (category, prob) in outcome.attributes.items():
        answer = questions[key].render.get(category, category)
        rows.append(AttributeRow(questions[key].question, answer, prob))
    return SlideReport(
        slide_id=outcome.slide_id,
        status=outcome.status,
        error=outcome.error or None,
        render_error=outcome.render_error or None,
        predicted=p.predicted if p else None,
        probabilities=dict(zip(classifier.classes, map(float, p.probabilities), strict=True))
        if p
        else {},
        attributes=rows,
        description=outcome.description or None,
        thumbnail=SlideImage("slide", outcome.thumbnail) if outcome.thumbnail else None,
        heatmaps=[SlideImage(heatmap_caption(name, outcome.heatmap_labels.get(name, "")), path)
                  for name, path in outcome.heatmaps.items()],
        geojson=str(outcome.geojson.relative_to(out)) if outcome.geojson else None,
        details={"patches": outcome.n_patches, "source": outcome.source.name},
    )
