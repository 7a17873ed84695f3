"""``fivewsi crossval``: stratified, patient-grouped k-fold cross-validation
(:func:`fivewsi.evaluation.crossval.run_crossval`).

Every option can also come from ``--config FILE.yaml`` (CrossvalConfig's field names); the
merged settings are written to ``OUT/config.yaml``. Exit status 1 when some held-out slides
could not be predicted (the others are in the metrics), 2 on bad settings or data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.config import merge_settings, read_config_file, write_config_file
from fivewsi.cli.errors import ITEMS_FAILED
from fivewsi.evaluation.crossval import CrossvalConfig

app = typer.Typer()
_C = CrossvalConfig


@app.command("crossval")
def crossval_command(
    features: o.Features = None,
    cohort: o.Cohort = None,
    classes: Annotated[
        Path | None, typer.Option(help="Classes CSV: class,description.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    init: Annotated[
        Path | None, typer.Option(help="Run whose weights start every fold's run.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=o.with_default("five or a baseline (mean, abmil, ...).",
                                                     _C, "model"))
    ] = None,
    folds: Annotated[int | None, typer.Option(help=o.with_default("Folds.", _C, "folds"))] = None,
    shots: Annotated[
        int | None,
        typer.Option(help="Labelled patients per class from the training folds. (default: all)"),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help=o.with_default("Seed of the folds and runs.", _C, "seed"))
    ] = None,
    train_option: Annotated[
        list[str] | None,
        typer.Option("--train-option", "-t",
                     help="Other training setting, KEY=VALUE (JSON value), repeatable."),
    ] = None,
    n_bootstrap: Annotated[
        int | None,
        typer.Option("--bootstrap", help=o.with_default("Bootstrap resamples for the 95% CIs.",
                                                        _C, "n_bootstrap")),
    ] = None,
    config: o.ConfigFile = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """K-fold cross-validation over the labelled non-test slides, patients kept whole: one run
    per fold, writes OUT/folds.csv and OUT/metrics.json (per-fold and pooled metrics). Resumes.
    """
    from fivewsi.cli.fewshot import parse_options
    from fivewsi.evaluation.crossval import run_crossval
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    file_settings = read_config_file(config)
    train_options = dict(file_settings.pop("train_options", None) or {})
    train_options.update(parse_options(train_option or []))
    settings = merge_settings(file_settings, o.given(
        features=features, cohort=cohort, classes=classes, out=out, init=init, model=model,
        folds=folds, shots=shots, seed=seed, n_bootstrap=n_bootstrap,
    ))
    settings["train_options"] = train_options
    cv = CrossvalConfig(**settings)
    result = run_crossval(cv)
    write_config_file(cv.out / "config.yaml", cv.model_dump(mode="json"))
    for block, name in (("metrics", "slides"), ("patient", "patients")):
        pooled = result.metrics["pooled"].get(block)
        if pooled is None:
            continue
        m = pooled["balanced_accuracy"]
        ci = "" if m["ci_low"] is None else f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
        value = "n/a" if m["value"] is None else f"{m['value']:.3f}"
        console.print(f"pooled balanced accuracy over {pooled['n']} {name}: {value}{ci}")
    console.print(f"metrics in [bold]{result.out / 'metrics.json'}[/bold]")
    for figure in result.metrics.get("figures", []):
        console.print(f"figure in [bold]{result.out / figure['file']}[/bold]")
    raise typer.Exit(ITEMS_FAILED if result.n_failed else 0)
