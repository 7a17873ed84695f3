"""``fivewsi reports``: reports → fine-grained labels (extract), answers → labels (normalize),
labels vs. a reference (evaluate).

Exit status: 0 when every report is ``ok``, 1 when some failed or need review (LABELS.csv is
still complete), 2 for usage errors (missing file or column, duplicate ids, bad options).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fivewsi.cli import options as o
from fivewsi.cli.errors import ITEMS_FAILED

if TYPE_CHECKING:
    from fivewsi.reports.pipeline import ExtractSummary

app = typer.Typer(
    help="Pathology reports → fine-grained labels (FiVE's six questions for lung).",
    no_args_is_help=True,
)

Questions = Annotated[
    str, typer.Option(help="Question set: a bundled name (lung) or a YAML file.")
]


@app.command()
def extract(
    reports_csv: Annotated[Path, typer.Argument(help="CSV with one report per row.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="LABELS.csv to write.")],
    backend: Annotated[str, typer.Option(help="rules (offline) or llm.")] = "rules",
    id_column: o.IdColumn = "patient_id",
    text_column: Annotated[str, typer.Option(help="Column holding the report text.")] = "report",
    questions: Questions = "lung",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server root, e.g. http://host:8000/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name (llm backend).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="sqlite answer cache; reruns ask only what is new.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Total seconds one request may take (then retried).")
    ] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries per request.")] = None,
    progress: o.Progress = None,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Answer every report's questions (rules offline, or an LLM) and write LABELS.csv.

    LLM settings left out take the defaults of ``fivewsi.reports.llm.LLMConfig`` (16
    requests in flight, 60 s per request, 5 retries, key in OPENAI_API_KEY).
    """
    from fivewsi.reports.pipeline import extract_reports

    o.setup_logging(verbose, quiet)
    llm_config = None
    if backend == "llm":
        from fivewsi.reports.llm import LLMConfig, LLMConfigError

        if not model:
            raise LLMConfigError("--backend llm needs --model")
        llm_config = LLMConfig(**o.given(
            base_url=base_url, model=model, concurrency=concurrency, cache=cache,
            api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
        ))
    summary = extract_reports(
        reports_csv, out, backend=backend, id_column=id_column, text_column=text_column,
        questions=questions, llm_config=llm_config, progress=progress is not False,
    )
    _finish(summary)


@app.command()
def normalize(
    answers_csv: Annotated[Path, typer.Argument(help="CSV with one answer line per row.")],
    answer_column: Annotated[str, typer.Option(help="Column holding the answer line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="LABELS.csv to write.")],
    id_column: o.IdColumn = "patient_id",
    questions: Questions = "lung",
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Map existing free-text answers (e.g. GPT-4's) onto categories and write LABELS.csv."""
    from fivewsi.reports.pipeline import normalize_file

    o.setup_logging(verbose, quiet)
    summary = normalize_file(
        answers_csv, out, answer_column=answer_column, id_column=id_column, questions=questions
    )
    _finish(summary)


@app.command()
def evaluate(
    pred_csv: Annotated[Path, typer.Argument(help="Predicted LABELS.csv.")],
    ref_csv: Annotated[Path, typer.Argument(help="Reference CSV with the same field columns.")],
    id_column: Annotated[str, typer.Option(help="Id column in both files.")],
    questions: Questions = "lung",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the metrics as JSON here.")
    ] = None,
    confusion: Annotated[bool, typer.Option(help="Also print confusion matrices.")] = False,
    verbose: o.Verbose = 0,
    quiet: o.Quiet = False,
) -> None:
    """Per-field agreement of predictions with a reference, over the ids in both files."""
    from fivewsi.reports.evaluate import print_evaluation
    from fivewsi.reports.pipeline import evaluate_files
    from fivewsi.utils.logs import console

    o.setup_logging(verbose, quiet)
    metrics = evaluate_files(
        pred_csv, ref_csv, id_column=id_column, questions=questions, json_out=json_out
    )
    print_evaluation(metrics, console, confusion=confusion)
    if json_out is not None:
        console.print(f"metrics written to [bold]{json_out}[/bold]")


def _finish(summary: ExtractSummary) -> None:
    from fivewsi.utils.logs import console

    colour = "green" if summary.ok else "yellow"
    console.print(f"[{colour}]{summary.summary()}[/{colour}]")
    raise typer.Exit(0 if summary.ok else ITEMS_FAILED)
