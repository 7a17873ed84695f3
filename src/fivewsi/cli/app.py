"""The root ``fivewsi`` command: lazily loaded subcommands and the one error handler.

Each command lives in its own module of :mod:`fivewsi.cli` and is imported only when it runs
(or when ``--help`` lists it), so ``fivewsi evaluate`` never pays for the training stack's
imports. :class:`FivewsiGroup` runs every command inside the one error path of
:mod:`fivewsi.cli.errors`.

Example:
    >>> from typer.testing import CliRunner
    >>> result = CliRunner().invoke(app, ["--version"])
    >>> result.exit_code, result.output.startswith("fivewsi ")
    (0, True)
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fivewsi import __version__
from fivewsi.cli.errors import USAGE_ERROR, user_error_message

#: Command name → (module, attribute holding its Typer app), in the order ``--help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("fivewsi.cli.preprocess", "app"),
    "encoders": ("fivewsi.cli.encoders", "app"),
    "reports": ("fivewsi.cli.reports", "app"),
    "cohort": ("fivewsi.cli.cohort", "app"),
    "train": ("fivewsi.cli.train", "app"),
    "evaluate": ("fivewsi.cli.evaluate", "app"),
    "fewshot": ("fivewsi.cli.fewshot", "app"),
    "crossval": ("fivewsi.cli.crossval", "app"),
    "predict": ("fivewsi.cli.predict", "app"),
    "view": ("fivewsi.cli.view", "app"),
    "demo": ("fivewsi.cli.demo", "app"),
}


def load_command(name: str) -> Any:
    """The click command of ``name``, importing its module now."""
    module, attribute = COMMANDS[name]
    command = typer.main.get_command(getattr(importlib.import_module(module), attribute))
    command.name = name
    return command


class FivewsiGroup(TyperGroup):
    """A typer group whose commands load on first use and share one error handler."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: typer.Context, cmd_name: str) -> Any:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            self.add_command(load_command(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise  # exits, usage errors of the parser, and bugs (with their traceback)
            from rich.markup import escape

            from fivewsi.utils.logs import console

            console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(USAGE_ERROR) from None


app = typer.Typer(
    name="fivewsi",
    cls=FivewsiGroup,
    help="Whole-slide images + pathology reports → slide classifiers (FiVE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fivewsi {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """fivewsi: FiVE slide classifiers from whole-slide images and their reports."""


def main() -> None:
    """Console-script entry point."""
    app()
