"""``fivewsi evaluate`` and ``fivewsi fewshot``: held-out metrics of a run, and the few-shot grid.

Exit status: 0 when everything was evaluated, 1 when some slides (evaluate) or cells (fewshot)
failed (the results of the others are written), 2 for usage errors (missing files, unknown
labels or models, bad options).

Example:
    >>> import typer
    >>> from typer.testing import CliRunner
    >>> app = typer.Typer()
    >>> _ = app.command("evaluate")(evaluate_command)
    >>> _ = app.command("fewshot")(fewshot_command)
    >>> CliRunner().invoke(app, ["evaluate", "--help"]).exit_code
    0
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # heavy modules load only when a command runs
    from rich.table import Table

    from fivewsi.evaluation.evaluate import EvaluationResult
    from fivewsi.evaluation.fewshot import FewshotResult

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
Features = Annotated[Path, typer.Option(help="Folder of bags (<slide_id>.h5 / .pt).")]
Cohort = Annotated[Path, typer.Option(help="Cohort CSV: slide_id,label,report_label,split.")]
Bootstrap = Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for the CIs.")]


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Training run folder.")],
    features: Features,
    cohort: Cohort,
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
    n_bootstrap: Bootstrap = 1000,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Score a trained run on the held-out slides: metrics with 95% bootstrap CIs.

    Writes OUT/metrics.json and OUT/predictions.csv. The prediction is the most probable
    class; nothing is tuned on the evaluated slides.
    """
    from fivewsi.cohort.table import CohortError
    from fivewsi.errors import RunError
    from fivewsi.evaluation.evaluate import EvaluationError, evaluate_run
    from fivewsi.utils.logs import configure_logging, console

    configure_logging(-1 if quiet else verbose)
    chosen = None if split == "all" else split
    out = out if out is not None else run / "evaluation" / split
    try:
        result = evaluate_run(
            run, features, cohort, split=chosen, classes=classes, out=out,
            n_bootstrap=n_bootstrap, device=device,
        )
    except (EvaluationError, CohortError, RunError, FileNotFoundError, KeyError,
            ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(_metrics_table(result))
    console.print(f"metrics in [bold]{out / 'metrics.json'}[/bold]")
    raise typer.Exit(1 if result.failed else 0)


def fewshot_command(
    features: Features,
    cohort: Cohort,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the grid.")],
    classes: Annotated[
        Path | None, typer.Option(help="Classes CSV: name,description (needed by FiVE).")
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Comma-separated models (default: five and every label baseline)."),
    ] = None,
    pretrained: Annotated[
        Path | None,
        typer.Option(help="Report-pretrained FiVE run: adds five+reports and its zero-shot row."),
    ] = None,
    shots: Annotated[str, typer.Option(help="Labelled slides per class, comma-separated.")] = (
        "1,2,4,8,16"
    ),
    seeds: Annotated[int, typer.Option(help="Seeds per cell (0..N-1); 5 or more.")] = 5,
    epochs: Annotated[
        str | None,
        typer.Option(help="Epochs for every model (40) or per model (five=60,abmil=40)."),
    ] = None,
    attention: Annotated[str, typer.Option(help="FiVE's attention: local or full.")] = "local",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    train_option: Annotated[
        list[str] | None,
        typer.Option(
            "--train-option", "-t",
            help="Other training setting for every run, KEY=VALUE (JSON value), repeatable.",
        ),
    ] = None,
    n_bootstrap: Bootstrap = 1000,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Few-shot grid: every model × k × seed trained on k slides per class, tested on the
    test split; writes OUT/fewshot.md and OUT/fewshot.csv (mean ± sd over seeds). Resumes.
    """
    from pydantic import ValidationError

    from fivewsi.cohort.table import CohortError
    from fivewsi.evaluation.fewshot import FewshotConfig, FewshotError, run_fewshot
    from fivewsi.utils.logs import configure_logging, console

    configure_logging(-1 if quiet else verbose)
    try:
        options = _parse_options(train_option or [])
        options.setdefault("device", device)
        config = FewshotConfig(
            features=features,
            cohort=cohort,
            classes=classes,
            out=out,
            models=_split_list(models) if models else None,
            pretrained=pretrained,
            shots=[int(k) for k in _split_list(shots)],
            seeds=list(range(seeds)),
            epochs=_parse_epochs(epochs),
            # FiVE's attention, a model option of the five row (when not its default)
            model_options={"five": {"attention": attention}} if attention != "local" else {},
            train_options=options,
            n_bootstrap=n_bootstrap,
            progress=progress,
        )
        result = run_fewshot(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        console.print(f"[red]error:[/red] invalid options: {problems}")
        raise typer.Exit(2) from None
    except (FewshotError, CohortError, FileNotFoundError, KeyError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(_fewshot_table(result))
    console.print(f"tables in [bold]{result.markdown}[/bold] and {result.csv}")
    raise typer.Exit(1 if result.failed else 0)


def _split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parse_epochs(text: str | None) -> int | dict[str, int] | None:
    if text is None:
        return None
    if "=" not in text:
        return int(text)
    pairs = [part.split("=", 1) for part in _split_list(text)]
    if any(len(p) != 2 or not p[0].strip() for p in pairs):
        raise ValueError(f"--epochs takes N or MODEL=N,...; got {text!r}")
    return {name.strip(): int(value) for name, value in pairs}


def _parse_options(items: list[str]) -> dict[str, object]:
    import json

    options: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--train-option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip().replace("-", "_")] = value
    return options


def _metrics_table(result: EvaluationResult) -> Table:
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


def _fewshot_table(result: FewshotResult) -> Table:
    import math

    from rich.table import Table

    from fivewsi.evaluation.fewshot import HEADLINE

    rows = {(r.model, r.k): r for r in result.table if r.metric == HEADLINE}
    shots = result.shots
    table = Table(title="balanced accuracy % (mean ± sd over seeds)")
    table.add_column("model")
    for k in shots:
        table.add_column(f"k={k}", justify="right")
    best = {
        k: max((r.mean for (_, kk), r in rows.items() if kk == k and r.mean is not None),
               default=None)
        for k in shots
    }
    for model in result.models:
        cells = []
        for k in shots:
            row = rows.get((model, k))
            if row is None or row.mean is None:
                cells.append("")
                continue
            text = f"{100 * row.mean:.1f}" + (f" ± {100 * row.sd:.1f}" if row.sd else "")
            if best[k] is not None and math.isclose(row.mean, best[k], abs_tol=1e-12):
                text = f"[bold]{text}[/bold]"
            cells.append(text)
        table.add_row(model, *cells)
    failed = len(result.failed)
    table.caption = f"{len(result.cells)} cells, {failed} failed, {result.seconds:.0f} s"
    return table
