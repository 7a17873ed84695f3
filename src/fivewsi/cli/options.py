"""Options shared by the commands, declared once.

Defaults are not copied here: an option that a settings model (``TrainConfig``,
``PreprocessConfig``, ...) also holds defaults to None on the command line, meaning "not given",
and the model's own default applies after ``--config`` is merged (:mod:`fivewsi.cli.config`).
:func:`with_default` writes that default into the help text, read from the model itself.

Example:
    >>> from pydantic import BaseModel
    >>> class Settings(BaseModel):
    ...     lr: float = 3e-4
    >>> with_default("Learning rate.", Settings, "lr")
    'Learning rate. (default: 0.0003)'
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from fivewsi.utils.logs import configure_logging

Verbose = Annotated[
    int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")]
Progress = Annotated[
    bool | None, typer.Option("--progress/--no-progress", help="Show progress bars. (default: on)")
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file of settings (names as in the Python settings model); options given "
        "on the command line win.",
    ),
]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")]
_FEATURES = typer.Option("--features", "-f", help="Folder of bags (<slide_id>.h5 / .pt).")
_COHORT = typer.Option("--cohort", "-c", help="Cohort CSV: slide_id,label,report_label,split.")
#: Optional where ``--config`` may give them; required where no config file is read.
Features = Annotated[Path | None, _FEATURES]
Cohort = Annotated[Path | None, _COHORT]
RequiredFeatures = Annotated[Path, _FEATURES]
RequiredCohort = Annotated[Path, _COHORT]
Classes = Annotated[
    Path | None, typer.Option("--classes", help="Classes CSV: name,description.")
]
Questions = Annotated[
    str | None,
    typer.Option(help="Question set: a bundled name (lung) or a YAML file. (default: lung)"),
]
IdColumn = Annotated[str, typer.Option(help="Column holding the report / patient id.")]
SlideMpp = Annotated[
    float | None, typer.Option(help="Level-0 mpp for slides whose metadata lacks it.")
]


def setup_logging(verbose: int, quiet: bool) -> None:
    """Route logging through rich at the verbosity the shared -v / -q options ask for."""
    configure_logging(-1 if quiet else verbose)


def default_of(source: Any, name: str) -> Any:
    """The default that ``source`` — a pydantic model class or a function — gives ``name``."""
    fields = getattr(source, "model_fields", None)
    if fields is not None:
        field = fields[name]
        if field.default_factory is not None:
            return field.default_factory()
        return field.default
    return inspect.signature(source).parameters[name].default


def with_default(text: str, source: Any, name: str) -> str:
    """``text`` followed by ``(default: …)`` as ``source`` defines it (see :func:`default_of`)."""
    value = default_of(source, name)
    if value is None:
        return text
    if isinstance(value, bool):
        shown = "on" if value else "off"
    elif isinstance(value, list | tuple):
        shown = ",".join(str(v) for v in value)
    else:
        shown = str(value)
    return f"{text} (default: {shown})"


def given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None; empty lists count as not given)."""
    return {k: v for k, v in options.items() if v is not None and v != []}
