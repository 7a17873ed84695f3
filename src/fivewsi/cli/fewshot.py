"""``fivewsi fewshot``: the few-shot grid, every model × k × seed trained and tested
(:func:`fivewsi.evaluation.fewshot.run_fewshot`).

Every option can also come from ``--config FILE.yaml`` (FewshotConfig's field names); the
merged settings are written to ``OUT/config.yaml``. Exit status 1 when some cells failed (the
others are in the tables), 2 on bad settings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fivewsi.cli import options as o
from fivewsi.cli.config import merge_settings, read_config_file, write_config_file
from fivewsi.cli.errors import ITEMS_FAILED
from fivewsi.evaluation.fewshot import FewshotConfig

if TYPE_CHECKING:
    from rich.table import Table

    from fivewsi.evaluation.fewshot import FewshotResult

app = typer.Typer()


@app.command("fewshot")
def fewshot_command(
    features: o.Features = None,
    cohort: o.Cohort = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder of the grid.")] = None,
    classes: Annotated[
        Path | None, typer.Option(help="Classes CSV: name,description (needed by FiVE).")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models. (default: five and every label baseline)"),
    ] = None,
    pretrained: Annotated[
        Path | None,
        typer.Option(help="Report-pretrained FiVE run: adds five+reports and its zero-shot row."),
    ] = None,
    shots: Annotated[
        str | None,
        typer.Option(help=o.with_default("Labelled slides per class, comma-separated.",
                                         FewshotConfig, "shots")),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help=f"Seeds per cell (0..N-1); 5 or more. (default: "
                          f"{len(o.default_of(FewshotConfig, 'seeds'))})"),
    ] = None,
    epochs: Annotated[
        str | None,
        typer.Option(help="Epochs for every model (40) or per model (five=60,abmil=40)."),
    ] = None,
    attention: Annotated[
        str | None,
        typer.Option(help="FiVE's TFS self-attention (a model option of the five row): local "
                          "or full. (default: the model's, local)"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda, ... (a training setting) (default: auto)")
    ] = None,
    train_option: Annotated[
        list[str] | None,
        typer.Option(
            "--train-option", "-t",
            help="Other training setting for every run, KEY=VALUE (JSON value), repeatable.",
        ),
    ] = None,
    n_bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help=o.with_default("Bootstrap resamples for the 95% CIs.",
                                                        FewshotConfig, "n_bootstrap")),
    ] = None,
    progress: o.Progress = None,
    config: o.ConfigFile = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Few-shot grid: every model × k × seed trained on k slides per class, tested on the
    test split; writes OUT/fewshot.md and OUT/fewshot.csv (mean ± sd over seeds). Resumes.
    """
    from fivewsi.evaluation.fewshot import run_fewshot
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    file_settings = read_config_file(config)
    train_options = dict(file_settings.pop("train_options", None) or {})
    train_options.update(parse_options(train_option or []))
    if device is not None:
        train_options["device"] = device
    settings = merge_settings(file_settings, o.given(
        features=features, cohort=cohort, out=out, classes=classes,
        models=split_list(models) if models else None, pretrained=pretrained,
        shots=[_int(k, "--shots") for k in split_list(shots)] if shots else None,
        seeds=list(range(seeds)) if seeds is not None else None,
        epochs=parse_epochs(epochs), n_bootstrap=n_bootstrap,
        progress=progress,
    ))
    settings["train_options"] = train_options
    if attention is not None:
        model_options = dict(settings.get("model_options") or {})
        model_options["five"] = {**model_options.get("five", {}), "attention": attention}
        settings["model_options"] = model_options
    grid = FewshotConfig(**settings)
    result = run_fewshot(grid)
    write_config_file(grid.out / "config.yaml", grid.model_dump(mode="json"))
    console.print(fewshot_table(result))
    console.print(f"tables in [bold]{result.markdown}[/bold] and {result.csv}")
    if result.figure is not None:
        console.print(f"figure in [bold]{result.figure}[/bold]")
    raise typer.Exit(ITEMS_FAILED if result.failed else 0)


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` → ``["a", "b", "c"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"{option} takes integers, got {text!r}") from None


def parse_epochs(text: str | None) -> int | dict[str, int] | None:
    """``"40"`` → 40; ``"five=60,abmil=40"`` → ``{"five": 60, "abmil": 40}``.

    Example:
        >>> parse_epochs("five=60, abmil=40")
        {'five': 60, 'abmil': 40}
    """
    if text is None:
        return None
    if "=" not in text:
        return _int(text, "--epochs")
    pairs = [part.split("=", 1) for part in split_list(text)]
    if any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise typer.BadParameter(f"--epochs takes N or MODEL=N,...; got {text!r}")
    return {name.strip(): _int(value, "--epochs") for name, value in pairs}


def parse_options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, values read as JSON when they are JSON (else kept as text).

    Example:
        >>> parse_options(["lr=1e-4", "min-steps=100", "device=cpu"])
        {'lr': 0.0001, 'min_steps': 100, 'device': 'cpu'}
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"--train-option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def fewshot_table(result: FewshotResult) -> Table:
    """Balanced accuracy per model (rows) and k (columns), best mean per column in bold."""
    from rich.table import Table

    from fivewsi.evaluation.fewshot import HEADLINE, k_label, metric_cells

    rows, best = metric_cells(result.table, HEADLINE)
    shots = result.shots
    table = Table(title="balanced accuracy % (mean ± sd over seeds)")
    table.add_column("model")
    for k in shots:
        table.add_column(k_label(k, result.table), justify="right")
    for model in result.models:
        cells = []
        for k in shots:
            row = rows.get((model, k))
            if row is None or row.mean is None:
                cells.append("")
                continue
            text = f"{100 * row.mean:.1f}" + (f" ± {100 * row.sd:.1f}" if row.sd else "")
            cells.append(f"[bold]{text}[/bold]" if (model, k) in best else text)
        table.add_row(model, *cells)
    failed = len(result.failed)
    table.caption = f"{len(result.cells)} cells, {failed} failed, {result.seconds:.0f} s"
    return table
