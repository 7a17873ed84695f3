"""The ``fivewsi`` command line: a thin layer over the Python API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fivewsi import __version__
from fivewsi.cohort.merge import cohort_merge_command
from fivewsi.demo import demo_command
from fivewsi.evaluation.cli import evaluate_command, fewshot_command
from fivewsi.predict.cli import predict_command
from fivewsi.reports.cli import reports_app
from fivewsi.training.cli import train_command
from fivewsi.utils.logs import configure_logging, console

if TYPE_CHECKING:  # the heavy modules load only when a command needs them
    from fivewsi.features.preprocess import PreprocessResult

log = logging.getLogger("fivewsi")

app = typer.Typer(
    name="fivewsi",
    help="Whole-slide images + pathology reports → slide classifiers (FiVE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"fivewsi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """fivewsi: FiVE slide classifiers from whole-slide images and their reports."""


@app.command()
def preprocess(
    inputs: Annotated[list[Path], typer.Argument(help="Slide files or folders of slides.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    mpp: Annotated[float, typer.Option(help="Target microns per pixel (0.5 ≈ 20x).")] = 0.5,
    patch_size: Annotated[int, typer.Option(help="Patch side in pixels at the target mpp.")] = 256,
    encoder: Annotated[str, typer.Option(help="Patch encoder (see `fivewsi encoders`).")] = (
        "he-handcrafted"
    ),
    weights: Annotated[
        Path | None, typer.Option(help="Local weights file or folder for the encoder.")
    ] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Level-0 mpp for slides whose metadata lacks it.")
    ] = None,
    min_tissue: Annotated[float, typer.Option(help="Tissue fraction a patch needs.")] = 0.25,
    workers: Annotated[
        int | None, typer.Option(help="Patch reader processes (default: min(4, cores)).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Patches per encoder batch.")] = 64,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    qc: Annotated[bool, typer.Option(help="Write QC thumbnails.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Tile tissue and embed every patch: one feature file per slide in OUT/features.

    Exit status 1 when any slide failed (after all others are done); see OUT/manifest.csv.
    """
    from pydantic import ValidationError

    from fivewsi.features.preprocess import (
        PreprocessConfig,
        SettingsMismatchError,
    )
    from fivewsi.features.preprocess import preprocess as run_preprocess
    from fivewsi.slides.readers import SlideError

    configure_logging(-1 if quiet else verbose)
    options = {
        "target_mpp": mpp, "patch_size": patch_size, "encoder": encoder, "weights": weights,
        "slide_mpp": slide_mpp, "min_tissue": min_tissue, "batch_size": batch_size,
        "device": device, "qc": qc,
    }
    if workers is not None:
        options["workers"] = workers
    try:
        config = PreprocessConfig(**options)
        result = run_preprocess(inputs, out, config, progress=progress)
    except (ValidationError, SettingsMismatchError, SlideError, KeyError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    _print_preprocess_summary(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_preprocess_summary(result: PreprocessResult) -> None:
    records = result.records
    table = Table(title=f"preprocess → {result.out}", show_lines=False)
    for column in ("slide", "status", "patches", "seconds", "error"):
        table.add_column(column, overflow="fold")
    shown = records if len(records) <= 50 else result.failed
    for r in shown:
        status = "[red]failed" if r.status == "failed" else "[green]reused" if r.reused else "done"
        table.add_row(r.slide_id, status, str(r.n_patches), f"{r.seconds:.1f}", r.error)
    done = [r for r in records if r.status == "done"]
    patches = sum(r.n_patches for r in done)
    table.caption = (
        f"{len(done)} done ({sum(r.reused for r in done)} reused), {len(result.failed)} failed, "
        f"{patches} patches, {result.seconds:.1f} s"
    )
    console.print(table)


app.command("train")(train_command)
app.command("predict")(predict_command)
app.command("evaluate")(evaluate_command)
app.command("fewshot")(fewshot_command)
app.command("demo")(demo_command)
cohort_app = typer.Typer(help="Cohort tables for training.", no_args_is_help=True)
cohort_app.command("merge")(cohort_merge_command)
app.add_typer(cohort_app, name="cohort")
app.add_typer(reports_app, name="reports", help="Pathology reports → fine-grained labels.")


@app.command()
def encoders() -> None:
    """List the registered patch encoders."""
    import importlib.util

    from fivewsi.features.registry import list_encoders

    table = Table(title="patch encoders")
    for column in ("name", "dim", "weights", "available", "description"):
        table.add_column(column, overflow="fold")
    for name, spec in sorted(list_encoders().items()):
        available = spec.extra is None or all(
            importlib.util.find_spec(m) is not None for m in ("timm", "torchvision")
        )
        table.add_row(
            name,
            "-" if spec.dim is None else str(spec.dim),
            "needs local weights" if spec.needs_weights else "none",
            "yes" if available else f'pip install "fivewsi[{spec.extra}]"',
            spec.description,
        )
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
