"""``fivewsi encoders``: the registered patch encoders and whether each can run here."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command("encoders")
def encoders_command() -> None:
    """List the registered patch encoders."""
    import importlib.util

    from rich.table import Table

    from fivewsi.features.registry import list_encoders
    from fivewsi.utils.logs import console

    table = Table(title="patch encoders")
    for column in ("name", "dim", "weights", "available", "description"):
        table.add_column(column, overflow="fold")
    for name, spec in sorted(list_encoders().items()):
        available = spec.extra is None or all(
            importlib.util.find_spec(m) is not None for m in ("timm", "torchvision")
        )
        table.add_row(
            name,
            "-" if spec.dim is None else str(spec.dim),
            "needs local weights" if spec.needs_weights else "none",
            "yes" if available else f'pip install "fivewsi[{spec.extra}]"',
            spec.description,
        )
    console.print(table)
