"""The ``fivewsi predict`` command (a thin layer over :func:`fivewsi.predict.predict.predict`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("fivewsi")

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]


def predict_command(
    run: Annotated[Path, typer.Argument(help="Trained run folder (from `fivewsi train`).")],
    inputs: Annotated[
        list[Path], typer.Argument(help="Slides, feature files (.h5/.pt), or folders of either.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    classes: Annotated[
        Path | None,
        typer.Option(help="Classes CSV (class, description): zero-shot with a pretrained run."),
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Level-0 mpp for slides whose metadata lacks it.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Patch reader processes.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    heatmaps: Annotated[bool, typer.Option(help="Write heatmap PNGs.")] = True,
    geojson: Annotated[bool, typer.Option(help="Write QuPath GeoJSON of patch scores.")] = True,
    html: Annotated[bool, typer.Option(help="Write OUT/report.html.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Predict slides: classes, fine-grained attributes, heatmaps, GeoJSON and an HTML page.

    Exit status 1 when any input failed (after all others are done); see OUT/predictions.csv.
    """
    from pydantic import ValidationError
    from rich.table import Table

    from fivewsi.predict.predict import PredictConfig, predict
    from fivewsi.utils.logs import configure_logging, console

    configure_logging(-1 if quiet else verbose)
    try:
        config = PredictConfig(
            run=run, inputs=inputs, out=out, classes=classes, slide_mpp=slide_mpp,
            workers=workers, device=device, heatmaps=heatmaps, geojson=geojson, html=html,
            progress=progress,
        )
        result = predict(config)
    except (ValidationError, FileNotFoundError, ValueError, KeyError) as exc:
        log.error("%s", exc)
        raise typer.Exit(2) from exc
    table = Table(title=f"{len(result.outcomes)} slide(s) in {result.seconds:.1f} s")
    for column in ("slide", "status", "predicted", "confidence"):
        table.add_column(column)
    for o in result.outcomes:
        p = o.prediction
        conf = f"{float(p.probabilities.max()):.2f}" if p is not None else ""
        table.add_row(o.slide_id, o.status, p.predicted if p else o.error, conf)
    console.print(table)
    log.info("predictions: %s", result.out / "predictions.csv")
    if html:
        log.info("report: %s", result.out / "report.html")
    if result.failed:
        raise typer.Exit(1)
