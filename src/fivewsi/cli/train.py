"""``fivewsi train``: pretrain FiVE on reports, fine-tune it on classes, or train a baseline
(:func:`fivewsi.training.train.train` with a :class:`~fivewsi.training.config.TrainConfig`).

Every option can also come from ``--config FILE.yaml`` (TrainConfig's field names); the merged
settings are stored in ``RUN/run.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.config import merge_settings, read_config_file
from fivewsi.training.config import TrainConfig

app = typer.Typer()
_T = TrainConfig


def _help(text: str, name: str) -> str:
    return o.with_default(text, _T, name)


def _five_help(text: str, name: str) -> str:
    from fivewsi.model.registry import get_model_spec

    return o.with_default(text, get_model_spec("five").options, name)


@app.command("train")
def train_command(
    features: o.Features = None,
    cohort: o.Cohort = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder.")] = None,
    classes: Annotated[
        Path | None,
        typer.Option(help="Classes CSV (name,description): train on labels, not reports."),
    ] = None,
    questions: o.Questions = None,
    init: Annotated[
        Path | None, typer.Option(help="Start from this (pretrained) run's FiVE weights.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=_help("five, or a baseline: mean, max, abmil, ...", "model"))
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(help=_help("auto (classes with --classes, else reports), reports, classes.",
                                "objective")),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="Few-shot recipe of a classes run: auto (partial from a text-aligned "
                          "--init, else full), full, tip-adapter, partial; its settings in a "
                          "--config file's recipe. (default: auto)"),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help=_help("Training epochs.", "epochs"))] = None,
    min_steps: Annotated[
        int | None,
        typer.Option(help=_help("Optimizer steps at least (small few-shot sets get more "
                                "epochs).", "min_steps")),
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help("Seed of everything random.", "seed"))] = (
        None
    ),
    shots: Annotated[
        int | None, typer.Option(help="Labelled slides per class (few-shot). (default: all)")
    ] = None,
    sample_ratio: Annotated[
        float | None,
        typer.Option(help=_help("Share of a slide's patches drawn per training step.",
                                "sample_ratio")),
    ] = None,
    max_patches: Annotated[
        int | None, typer.Option(help=_help("Cap on patches per training slide.", "max_patches"))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_help("Slides per batch.", "batch_size"))
    ] = None,
    accumulate: Annotated[
        int | None, typer.Option(help=_help("Batches per optimizer step.", "accumulate"))
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help=_help("Learning rate (LoRA weights: lr × 0.1).", "lr"))
    ] = None,
    negatives: Annotated[
        str | None,
        typer.Option(help=_help("Report loss negatives: all (paper) or batch.", "negatives")),
    ] = None,
    text_encoder: Annotated[
        str | None,
        typer.Option(help=_five_help("FiVE's text model: packaged name, local folder or cached "
                                     "HF repo.", "text_encoder")),
    ] = None,
    lora: Annotated[
        bool | None,
        typer.Option("--lora/--no-lora",
                     help=_five_help("Tune FiVE's text encoder with LoRA.", "lora")),
    ] = None,
    attention: Annotated[
        str | None,
        typer.Option(help=_five_help("FiVE's TFS self-attention: local (linear) or full "
                                     "(paper).", "attention")),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_help("auto, cpu, cuda, cuda:1, ...", "device"))
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(help=_help("Training share held out for validation without val rows.",
                                "val_fraction")),
    ] = None,
    val_rows: Annotated[
        bool | None,
        typer.Option("--val-rows/--no-val-rows",
                     help="Validate on the cohort's val rows. (default: yes without --shots, no "
                          "with --shots: a k-shot run's only labels are its shots)"),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help=_help("Early-stopping patience in epochs (needs validation).",
                                "patience")),
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--no-overwrite",
                     help=_help("Train again even if the run finished.", "overwrite")),
    ] = None,
    progress: o.Progress = None,
    config: o.ConfigFile = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Train FiVE on reports (pretraining), on classes (fine-tuning / few-shot), or a baseline.

    Rows with split=test are never used. Rerunning resumes an interrupted run; a finished run
    is skipped unless --overwrite. Exit status 2 on bad settings or data. The model's own
    options (--text-encoder, --lora, --attention, and any other in a --config file's
    model_options) are checked against the model: a baseline has none of FiVE's.
    """
    from fivewsi.training.train import train
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    file_settings = read_config_file(config)
    model_options = dict(file_settings.pop("model_options", None) or {})
    model_options.update(o.given(text_encoder=text_encoder, lora=lora, attention=attention))
    settings = merge_settings(file_settings, o.given(
        features=features, cohort=cohort, out=out, classes=classes, questions=questions,
        init=init, model=model, objective=objective, epochs=epochs, min_steps=min_steps,
        seed=seed, shots=shots, sample_ratio=sample_ratio, max_patches=max_patches,
        batch_size=batch_size, accumulate=accumulate, lr=lr, negatives=negatives,
        device=device, val_fraction=val_fraction, val_rows=val_rows, patience=patience,
        overwrite=overwrite,
        progress=progress,
    ))
    settings["model_options"] = model_options
    if recipe is not None:
        settings["recipe"] = {**dict(settings.get("recipe") or {}), "name": recipe}
    result = train(TrainConfig(**settings))
    if result.skipped:
        console.print(f"{result.run} already finished (use --overwrite to train again)")
    else:
        best = (
            "" if result.best_metric is None
            else f", best {result.monitor} {result.best_metric:.4f}"
        )
        console.print(
            f"{result.stage}: {result.n_train} training / {result.n_val} validation slides, "
            f"{result.epochs} epochs{best}, {result.seconds:.1f} s → [bold]{result.run}[/bold]"
        )
    if result.n_skipped_slides:
        console.print(
            f"[yellow]{result.n_skipped_slides} slides skipped (missing or broken feature "
            "files; see run.json)[/yellow]"
        )
