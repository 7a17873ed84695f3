"""The ``fivewsi`` command line: one package, a thin layer over the Python API.

- :mod:`fivewsi.cli.app` — the root command; subcommands load lazily; the one error handler.
- :mod:`fivewsi.cli.options` — options shared by the commands, defaults read from the settings
  models.
- :mod:`fivewsi.cli.config` — ``--config FILE.yaml`` merged under the command line.
- :mod:`fivewsi.cli.errors` — which errors are the user's (one line, exit 2).
- one module per command: ``preprocess``, ``encoders``, ``reports``, ``cohort``, ``train``,
  ``evaluate``, ``fewshot``, ``predict``, ``demo``.

Adding a command: a module here with ``app = typer.Typer()`` and one ``@app.command("name")``
(or a group), one line in :data:`fivewsi.cli.app.COMMANDS`, a test in ``tests/test_cli*.py``.
"""

from fivewsi.cli.app import app, main

__all__ = ["app", "main"]
