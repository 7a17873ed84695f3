"""``fivewsi evaluate``: held-out metrics of a trained run with bootstrap intervals
(:func:`fivewsi.evaluation.evaluate.evaluate_run`).

Exit status 0 when every slide was evaluated, 1 when some failed (the others are scored), 2 on
bad input (not a run, missing files, unknown labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.errors import ITEMS_FAILED
from fivewsi.evaluation.evaluate import evaluate_run

if TYPE_CHECKING:
    from rich.table import Table

    from fivewsi.evaluation.evaluate import EvaluationResult

app = typer.Typer()


@app.command("evaluate")
def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Training run folder.")],
    features: o.RequiredFeatures,
    cohort: o.RequiredCohort,
    split: Annotated[
        str, typer.Option(help="Split to evaluate: test, val, train, or 'all' (every label).")
    ] = "test",
    classes: Annotated[
        Path | None,
        typer.Option(help="Classes CSV replacing the run's descriptions (text models)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for metrics.json (default RUN/evaluation/SPLIT)."),
    ] = None,
    n_bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help=o.with_default("Bootstrap resamples for the 95% CIs.",
                                                        evaluate_run, "n_bootstrap")),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=o.with_default("cpu, cuda, cuda:1, ...", evaluate_run,
                                                     "device"))
    ] = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Score a trained run on the held-out slides: metrics with 95% bootstrap CIs.

    Writes OUT/metrics.json, OUT/predictions.csv and figures (roc.png, confusion.png,
    reliability.png). The prediction is the most probable
    class; nothing is tuned on the evaluated slides.
    """
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    from fivewsi.runs.record import EVALUATION

    out = out if out is not None else run / EVALUATION / split
    result = evaluate_run(
        run, features, cohort, split=None if split == "all" else split, classes=classes,
        out=out, **o.given(n_bootstrap=n_bootstrap, device=device),
    )
    console.print(metrics_table(result))
    console.print(f"metrics in [bold]{out / 'metrics.json'}[/bold]")
    figures = [f["file"] for f in result.info.get("figures", [])]
    if figures:
        console.print(f"figures in {out}: {', '.join(figures)}")
    raise typer.Exit(ITEMS_FAILED if result.failed else 0)


def metrics_table(result: EvaluationResult) -> Table:
    """The run's metrics with their intervals, one row per metric."""
    from rich.table import Table

    from fivewsi.evaluation.metrics import METRICS

    metrics = result.metrics
    level = round(100 * metrics["bootstrap"]["confidence"])
    table = Table(title=f"{result.run} on {result.split or 'all labelled slides'}")
    for column in ("metric", "value", f"{level}% CI", "resamples"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in METRICS:
        m = metrics[name]
        value = "n/a" if m["value"] is None else f"{m['value']:.3f}"
        ci = "" if m["ci_low"] is None else f"[{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        table.add_row(name, value, ci, str(m["n_resamples"]))
    failed = result.failed
    table.caption = (
        f"{metrics['n']} slides, {len(failed)} failed, "
        f"{result.n_unlabelled} unlabelled skipped; classes {', '.join(result.classes)} "
        f"(from {result.classes_source})"
    )
    return table
