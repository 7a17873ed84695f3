"""``fivewsi cohort merge``: the slide table + LABELS.csv → the training cohort CSV
(:func:`fivewsi.cohort.merge.merge_cohort`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fivewsi.cli import options as o

app = typer.Typer(no_args_is_help=True)


@app.callback()
def cohort() -> None:
    """Cohort tables for training (a group, so that more table commands can join merge)."""


@app.command("merge")
def merge_command(
    slides_csv: Annotated[
        Path, typer.Argument(help="Slide table: slide_id, label (may be empty), split, ...")
    ],
    labels: Annotated[
        Path, typer.Option("--labels", "-l", help="LABELS.csv from `fivewsi reports extract`.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cohort CSV to write.")],
    id_column: Annotated[
        str | None, typer.Option(help="LABELS.csv id column (default: its first column).")
    ] = None,
    slide_key: Annotated[
        str | None,
        typer.Option(help="Slide-table column holding the report id (default: the id column "
                          "when present, else slide_id)."),
    ] = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Join the slide table with the reports' fine-grained labels into the training cohort CSV.

    Slides without a report get an empty report_label; reports without a slide are counted.
    Exit status 2 on bad input (missing columns, duplicate ids, nothing matching).
    """
    from fivewsi.cohort.merge import merge_cohort
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    summary = merge_cohort(slides_csv, labels, out, id_column=id_column, slide_key=slide_key)
    colour = "green" if not (summary.n_failed_reports or summary.unmatched_reports) else "yellow"
    console.print(f"[{colour}]{summary.summary()}[/{colour}]")
