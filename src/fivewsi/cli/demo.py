"""``fivewsi demo``: the whole pipeline on a synthetic cohort (:func:`fivewsi.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fivewsi.cli import options as o
from fivewsi.cli.errors import ITEMS_FAILED

if TYPE_CHECKING:
    from fivewsi.demo import DemoResult

app = typer.Typer()


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo folder.")] = Path("fivewsi-demo"),
    size: Annotated[
        str, typer.Option(help="default (the README's demo) or small (a quick check).")
    ] = "default",
    slides: Annotated[
        int | None, typer.Option(help="Total synthetic slides (60% train, 40% test).")
    ] = None,
    shots: Annotated[int | None, typer.Option(help="Labelled training slides per class.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic data.")] = 0,
    progress: o.Progress = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Run the whole pipeline on a synthetic cohort written here, with no download.

    Writes slides, reports and a slide table into OUT/data, then runs reports extract, cohort
    merge, preprocess, train (pretraining on reports, then few-shot), evaluate and predict
    inside OUT, printing each equivalent command. Exit status 1 when a slide failed.
    """
    import shlex

    from rich.markup import escape

    from fivewsi.demo import run_demo
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    result = run_demo(out, size=size, n_slides=slides, shots=shots, seed=seed,
                      progress=progress is not False)
    for table in _tables(result):
        console.print(table)
    console.print(f"prediction page: [bold]{result.report_html.resolve()}[/bold]")
    view = shlex.quote(str(result.report_html.parent.resolve()))
    console.print(f"look at it: [bold]fivewsi view {escape(view)}[/bold]", soft_wrap=True)
    raise typer.Exit(0 if result.ok else ITEMS_FAILED)


def _tables(result: DemoResult) -> list[Any]:
    from rich.table import Table

    steps = Table(title=f"fivewsi demo → {result.out} ({result.seconds:.0f} s)")
    for column in ("step", "command (inside the demo folder)", "seconds", "outcome"):
        steps.add_column(column, overflow="fold")
    for s in result.steps:
        steps.add_row(s.name, s.command, f"{s.seconds:.1f}", s.outcome)
    tables = [steps]
    evaluated = [("few-shot", result.evaluation), ("zero-shot", result.zero_shot)]
    evaluated = [(name, e) for name, e in evaluated if e is not None]
    if evaluated:
        metrics = Table(title="held-out test slides (95% bootstrap CI)")
        metrics.add_column("metric")
        for name, _ in evaluated:
            metrics.add_column(name, justify="right")
        for key in ("balanced_accuracy", "accuracy", "macro_f1", "auc"):
            cells = []
            for _, evaluation in evaluated:
                m = evaluation.metrics.get(key) or {}
                if m.get("value") is None:
                    cells.append("n/a")
                elif m.get("ci_low") is None:
                    cells.append(f"{m['value']:.3f}")
                else:
                    cells.append(f"{m['value']:.3f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]")
            metrics.add_row(key, *cells)
        metrics.caption = f"{evaluated[0][1].metrics['n']} test slides"
        tables.append(metrics)
    return tables
