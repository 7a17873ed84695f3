"""``fivewsi predict``: classes, fine-grained attributes, heatmaps, GeoJSON and an HTML page
for new slides or feature files (:func:`fivewsi.predict.predict.predict`).

Every option can also come from ``--config FILE.yaml`` (PredictConfig's field names); the
merged settings are written to ``OUT/config.yaml``. Exit status 1 when some input failed
(after all others are done; see OUT/predictions.csv), 2 on bad input or settings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.config import merge_settings, read_config_file, write_config_file
from fivewsi.cli.errors import ITEMS_FAILED
from fivewsi.predict.predict import PredictConfig

log = logging.getLogger("fivewsi")
app = typer.Typer()


@app.command("predict")
def predict_command(
    run: Annotated[
        Path | None, typer.Argument(help="Trained run folder (from `fivewsi train`).")
    ] = None,
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Slides, feature files (.h5/.pt), or folders of either."),
    ] = None,
    out: o.Out = None,
    classes: Annotated[
        Path | None,
        typer.Option(help="Classes CSV (class, description): zero-shot with a pretrained run."),
    ] = None,
    slide_mpp: o.SlideMpp = None,
    workers: Annotated[int | None, typer.Option(help="Patch reader processes.")] = None,
    device: Annotated[
        str | None,
        typer.Option(help=o.with_default("cpu, cuda, cuda:1, ...", PredictConfig, "device")),
    ] = None,
    heatmaps: Annotated[
        bool | None,
        typer.Option("--heatmaps/--no-heatmaps",
                     help=o.with_default("Write heatmap PNGs.", PredictConfig, "heatmaps")),
    ] = None,
    geojson: Annotated[
        bool | None, typer.Option("--geojson/--no-geojson",
                                  help=o.with_default("Write QuPath GeoJSON of patch scores.",
                                                      PredictConfig, "geojson"))
    ] = None,
    html: Annotated[
        bool | None,
        typer.Option("--html/--no-html",
                     help=o.with_default("Write OUT/report.html.", PredictConfig, "html")),
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option(help="An `evaluate` output folder whose figures (ROC, confusion, "
                     "reliability) report.html shows; default RUN/evaluation/test when it "
                     "evaluated this run."),
    ] = None,
    progress: o.Progress = None,
    config: o.ConfigFile = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Predict slides: classes, fine-grained attributes, heatmaps, GeoJSON and an HTML page.

    Exit status 1 when any input failed (after all others are done); see OUT/predictions.csv.
    """
    from rich.table import Table

    from fivewsi.predict.predict import predict
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    settings = merge_settings(read_config_file(config), o.given(
        run=run, inputs=inputs, out=out, classes=classes, slide_mpp=slide_mpp, workers=workers,
        device=device, heatmaps=heatmaps, geojson=geojson, html=html, progress=progress,
        evaluation=evaluation,
    ))
    predict_config = PredictConfig(**settings)
    result = predict(predict_config)
    write_config_file(result.out / "config.yaml", predict_config.model_dump(mode="json"))
    table = Table(title=f"{len(result.outcomes)} slide(s) in {result.seconds:.1f} s")
    for column in ("slide", "status", "predicted", "confidence"):
        table.add_column(column)
    for outcome in result.outcomes:
        p = outcome.prediction
        confidence = f"{float(p.probabilities.max()):.2f}" if p is not None else ""
        table.add_row(outcome.slide_id, outcome.status, p.predicted if p else outcome.error,
                      confidence)
    console.print(table)
    log.info("predictions: %s", result.out / "predictions.csv")
    if predict_config.html:
        log.info("report: %s", result.out / "report.html")
    if result.failed:
        raise typer.Exit(ITEMS_FAILED)
