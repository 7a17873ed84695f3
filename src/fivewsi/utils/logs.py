"""Logging and progress display shared by the CLI and long-running functions."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Progress bars and summaries go to stderr so stdout stays clean for data.
console = Console(stderr=True)


def configure_logging(verbosity: int = 0) -> None:
    """Route ``logging`` through rich.

    ``verbosity`` -1 shows warnings only; 0 adds fivewsi's own info messages; 1 adds every
    library's info; 2 and more show debug messages.
    """
    root = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    own = logging.WARNING if verbosity < 0 else logging.INFO if verbosity < 2 else logging.DEBUG
    logging.basicConfig(
        level=root,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )
    logging.getLogger("fivewsi").setLevel(own)


def make_progress(enabled: bool = True) -> Progress:
    """A progress display with counts, rate and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )
