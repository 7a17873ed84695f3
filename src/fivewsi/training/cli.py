"""The ``fivewsi train`` command (registered by :mod:`fivewsi.cli`); heavy imports stay inside."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_command(
    features: Annotated[Path, typer.Option("--features", "-f", help="Folder of bags (.h5/.pt).")],
    cohort: Annotated[
        Path, typer.Option("--cohort", "-c", help="Cohort CSV: slide_id,label,report_label,split.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder.")],
    classes: Annotated[
        Path | None,
        typer.Option(help="Classes CSV (name,description): train on labels, not reports."),
    ] = None,
    questions: Annotated[str, typer.Option(help="Question set name or YAML file.")] = "lung",
    init: Annotated[
        Path | None, typer.Option(help="Start from this (pretrained) run's FiVE weights.")
    ] = None,
    model: Annotated[str, typer.Option(help="five, or a baseline: mean, max, abmil, ...")] = "five",
    objective: Annotated[
        str, typer.Option(help="auto (classes with --classes, else reports), reports, classes.")
    ] = "auto",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    min_steps: Annotated[
        int, typer.Option(help="Optimizer steps at least (small few-shot sets get more epochs).")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of everything random.")] = 1024,
    shots: Annotated[
        int | None, typer.Option(help="Labelled slides per class (few-shot); default all.")
    ] = None,
    sample_ratio: Annotated[
        float, typer.Option(help="Share of a slide's patches drawn per training step.")
    ] = 0.25,
    max_patches: Annotated[int, typer.Option(help="Cap on patches per training slide.")] = 4096,
    batch_size: Annotated[int, typer.Option(help="Slides per batch.")] = 8,
    accumulate: Annotated[int, typer.Option(help="Batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option(help="Learning rate (LoRA weights: lr × 0.1).")] = 3e-4,
    negatives: Annotated[
        str, typer.Option(help="Report loss negatives: all (paper) or batch.")
    ] = "all",
    text_encoder: Annotated[
        str, typer.Option(help="Text model: packaged name, local folder or cached HF repo.")
    ] = "all-minilm-l6-v2",
    lora: Annotated[bool, typer.Option(help="Tune the text encoder with LoRA.")] = False,
    attention: Annotated[
        str, typer.Option(help="TFS self-attention: local (linear) or full (paper).")
    ] = "local",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    val_fraction: Annotated[
        float, typer.Option(help="Training share held out for validation without val rows.")
    ] = 0.15,
    patience: Annotated[
        int | None, typer.Option(help="Early-stopping patience in epochs (needs validation).")
    ] = 10,
    overwrite: Annotated[bool, typer.Option(help="Train again even if the run finished.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="More log output.")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    """Train FiVE on reports (pretraining), on classes (fine-tuning / few-shot), or a baseline.

    Rows with split=test are never used. Rerunning resumes an interrupted run; a finished run
    is skipped unless --overwrite. Exit status 2 on bad settings or data.
    """
    from pydantic import ValidationError

    from fivewsi.cohort.table import CohortError
    from fivewsi.errors import RunError
    from fivewsi.model.text import MissingTextModelError
    from fivewsi.reports.questions import QuestionSetError
    from fivewsi.training.config import TrainConfig
    from fivewsi.training.train import TrainError, train
    from fivewsi.utils.logs import configure_logging, console

    configure_logging(-1 if quiet else verbose)
    try:
        config = TrainConfig(
            features=features, cohort=cohort, out=out, classes=classes, questions=questions,
            init=init, model=model, objective=objective, epochs=epochs, min_steps=min_steps,
            seed=seed, shots=shots,
            sample_ratio=sample_ratio, max_patches=max_patches, batch_size=batch_size,
            accumulate=accumulate, lr=lr, negatives=negatives, device=device,
            val_fraction=val_fraction, patience=patience, overwrite=overwrite, progress=progress,
            # FiVE's options, passed only when set (label models have none of them)
            model_options={k: v for k, v, default in (
                ("text_encoder", text_encoder, "all-minilm-l6-v2"), ("lora", lora, False),
                ("attention", attention, "local")) if v != default},
        )
        result = train(config)
    except (
        ValidationError, TrainError, RunError, CohortError, QuestionSetError,
        MissingTextModelError, FileNotFoundError, KeyError,
    ) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
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
