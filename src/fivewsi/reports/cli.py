"""``fivewsi reports``: reports → fine-grained labels (extract), answers → labels (normalize),
labels vs. reference (evaluate).

Exit status: 0 when every report is ``ok``, 1 when some failed or need review (LABELS.csv is
still complete), 2 for usage errors (missing file or column, duplicate ids, bad options).

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(reports_app, ["--help"]).exit_code
    0
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fivewsi.utils.logs import configure_logging, console

log = logging.getLogger(__name__)

reports_app = typer.Typer(
    help="Pathology reports → fine-grained labels (FiVE's six questions for lung).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

IdColumn = Annotated[str, typer.Option(help="Column holding the report / patient id.")]
Questions = Annotated[str, typer.Option(help="Question set: a bundled name (lung) or a YAML file.")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]


def _usage_error(exc: BaseException) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


@reports_app.command()
def extract(
    reports_csv: Annotated[Path, typer.Argument(help="CSV with one report per row.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="LABELS.csv to write.")],
    backend: Annotated[str, typer.Option(help="rules (offline) or llm.")] = "rules",
    id_column: IdColumn = "patient_id",
    text_column: Annotated[str, typer.Option(help="Column holding the report text.")] = "report",
    questions: Questions = "lung",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server root, e.g. http://host:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (llm backend).")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 16,
    cache: Annotated[
        Path | None, typer.Option(help="sqlite answer cache; reruns ask only what is new.")
    ] = None,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "OPENAI_API_KEY",
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 60.0,
    max_retries: Annotated[int, typer.Option(help="Retries per request.")] = 5,
    progress: Progress = True,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Answer every report's questions (rules offline, or an LLM) and write LABELS.csv."""
    from fivewsi.reports.pipeline import extract_reports

    configure_logging(-1 if quiet else verbose)
    try:
        llm_config = None
        if backend == "llm":
            llm_config = _llm_config(
                base_url=base_url,
                model=model,
                concurrency=concurrency,
                cache=cache,
                api_key_env=api_key_env,
                timeout=timeout,
                max_retries=max_retries,
            )
        summary = extract_reports(
            reports_csv,
            out,
            backend=backend,
            id_column=id_column,
            text_column=text_column,
            questions=questions,
            llm_config=llm_config,
            progress=progress,
        )
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise _usage_error(exc) from None
    _report(summary)


def _llm_config(**options: object) -> object:
    from pydantic import ValidationError

    from fivewsi.reports.llm import LLMConfig

    if not options.get("model"):
        raise ValueError("--backend llm needs --model")
    try:
        return LLMConfig(**options)
    except ValidationError as exc:
        # ValidationError is a ValueError; re-raise a short message without input values.
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid LLM options: {problems}") from None


@reports_app.command()
def normalize(
    answers_csv: Annotated[Path, typer.Argument(help="CSV with one answer line per row.")],
    answer_column: Annotated[str, typer.Option(help="Column holding the answer line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="LABELS.csv to write.")],
    id_column: IdColumn = "patient_id",
    questions: Questions = "lung",
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Map existing free-text answers (e.g. GPT-4's) onto categories and write LABELS.csv."""
    from fivewsi.reports.pipeline import normalize_file

    configure_logging(-1 if quiet else verbose)
    try:
        summary = normalize_file(
            answers_csv,
            out,
            answer_column=answer_column,
            id_column=id_column,
            questions=questions,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _usage_error(exc) from None
    _report(summary)


@reports_app.command()
def evaluate(
    pred_csv: Annotated[Path, typer.Argument(help="Predicted LABELS.csv.")],
    ref_csv: Annotated[Path, typer.Argument(help="Reference CSV with the same field columns.")],
    id_column: Annotated[str, typer.Option(help="Id column in both files.")],
    questions: Questions = "lung",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics as JSON here.")
    ] = None,
    confusion: Annotated[bool, typer.Option(help="Also print confusion matrices.")] = False,
    verbose: Verbose = 0,
) -> None:
    """Per-field agreement of predictions with a reference, over the ids in both files."""
    from fivewsi.reports.evaluate import print_evaluation
    from fivewsi.reports.pipeline import evaluate_files

    configure_logging(verbose)
    try:
        metrics = evaluate_files(
            pred_csv, ref_csv, id_column=id_column, questions=questions, json_out=json_out
        )
    except (ValueError, FileNotFoundError) as exc:
        raise _usage_error(exc) from None
    print_evaluation(metrics, console, confusion=confusion)
    if json_out is not None:
        console.print(f"metrics written to [bold]{json_out}[/bold]")


def _report(summary: object) -> None:
    from fivewsi.reports.pipeline import ExtractSummary

    assert isinstance(summary, ExtractSummary)
    colour = "green" if summary.ok else "yellow"
    console.print(f"[{colour}]{summary.summary()}[/{colour}]")
    raise typer.Exit(0 if summary.ok else 1)
