"""``fivewsi preprocess``: slides → bags of patch features (:func:`fivewsi.features.preprocess`).

Exit status 1 when some slide failed (after all others are done), 2 on bad input or settings,
an unusable ``--out``, or a full disk (the batch stops; finished slides are kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.config import merge_settings, read_config_file, write_config_file
from fivewsi.cli.errors import ITEMS_FAILED
from fivewsi.errors import FivewsiError
from fivewsi.features.config import PreprocessConfig

if TYPE_CHECKING:
    from fivewsi.features.preprocess import PreprocessResult

app = typer.Typer()
_P = PreprocessConfig


class PreprocessUsageError(FivewsiError):
    """Slides or the output folder missing from both the command line and the config file."""


@app.command("preprocess")
def preprocess_command(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Slide files or folders of slides.")
    ] = None,
    out: o.Out = None,
    mpp: Annotated[
        float | None,
        typer.Option(help=o.with_default("Target microns per pixel (0.5 ≈ 20x).", _P,
                                         "target_mpp")),
    ] = None,
    patch_size: Annotated[
        int | None,
        typer.Option(help=o.with_default("Patch side in pixels at the target mpp.", _P,
                                         "patch_size")),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help=o.with_default("Patch encoder (see `fivewsi encoders`).", _P,
                                         "encoder")),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Local weights file or folder for the encoder.")
    ] = None,
    slide_mpp: o.SlideMpp = None,
    slide_mpp_csv: Annotated[
        Path | None,
        typer.Option(help="CSV with columns slide_id (or path) and mpp: per-slide level-0 mpp "
                          "for slides whose metadata lacks it."),
    ] = None,
    min_tissue: Annotated[
        float | None,
        typer.Option(help=o.with_default("Tissue fraction a patch needs.", _P, "min_tissue")),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Patch reader processes. (default: min(4, cores))")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Patches per encoder batch. (default: 64 on a CPU, the most that "
                          "fits free GPU memory on CUDA)"),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help=o.with_default("auto, cpu, cuda, cuda:1, ...", _P, "device")),
    ] = None,
    qc: Annotated[
        bool | None,
        typer.Option("--qc/--no-qc", help=o.with_default("Write QC thumbnails.", _P, "qc")),
    ] = None,
    progress: o.Progress = None,
    config: o.ConfigFile = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Tile tissue and embed every patch: one feature file per slide in OUT/features.

    Exit status 1 when any slide failed (after all others are done); see OUT/manifest.csv.
    """
    from fivewsi.features.preprocess import preprocess

    o.setup_logging(verbose, quiet)
    settings = merge_settings(
        read_config_file(config),
        o.given(inputs=inputs, out=out, target_mpp=mpp, patch_size=patch_size, encoder=encoder,
                weights=weights, slide_mpp=slide_mpp, slide_mpp_csv=slide_mpp_csv,
                min_tissue=min_tissue, workers=workers,
                batch_size=batch_size, device=device, qc=qc, progress=progress),
    )
    slides = settings.pop("inputs", None)
    folder = settings.pop("out", None)
    show_progress = bool(settings.pop("progress", True))
    if not slides or folder is None:
        raise PreprocessUsageError(
            "preprocess needs slides (arguments or `inputs` in --config) and --out"
        )
    slides = [Path(p) for p in ([slides] if isinstance(slides, str) else slides)]
    folder = Path(folder)
    settings_model = PreprocessConfig(**settings)
    result = preprocess(slides, folder, settings_model, progress=show_progress)
    if result.reports_failures:  # the leader of a process group records for all
        write_config_file(folder / "config.yaml", {
            "inputs": [str(p) for p in slides], "out": str(folder),
            **settings_model.model_dump(mode="json"),
        })
    _print_summary(result)
    raise typer.Exit(0 if result.ok else ITEMS_FAILED)


def _print_summary(result: PreprocessResult) -> None:
    from rich.table import Table

    from fivewsi.utils.logs import console

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
