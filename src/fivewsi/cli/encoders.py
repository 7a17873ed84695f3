"""``fivewsi encoders``: the registered patch encoders, their published facts, and whether each
can run here."""

from __future__ import annotations

import typer

app = typer.Typer()


def encoder_rows() -> list[dict[str, str]]:
    """One row per registered encoder: name, dim, magnification, licence, weights, available.

    Recipe-built encoders give their recipe's facts (magnification and µm/px, licence, the
    Hugging Face repo their weights come from); the others say ``-`` where a fact is not known.
    Nothing heavy is imported: availability is whether the encoder's extra is installed.

    Example:
        >>> rows = {row["name"]: row for row in encoder_rows()}
        >>> rows["uni2-h"]["dim"], rows["uni2-h"]["weights"]
        ('1536', 'MahmoodLab/UNI2-h (hub, gated) or --weights')
        >>> rows["he-handcrafted"]["available"]
        'yes'
    """
    import importlib.util

    from fivewsi.features.registry import list_encoders

    models_installed = all(
        importlib.util.find_spec(module) is not None for module in ("timm", "torchvision")
    )
    rows = []
    for name, spec in sorted(list_encoders().items()):
        recipe = spec.recipe
        if recipe is not None:
            magnification = f"{recipe.magnification:g}× ({recipe.mpp:g} µm/px)"
            licence = recipe.licence
            hub = recipe.weights.hub[0] if recipe.weights.hub else None
            gated = ", gated" if "gated" in recipe.licence else ""
            weights = f"{hub} (hub{gated}) or --weights" if hub else "--weights"
        else:
            magnification = licence = "-"
            weights = "--weights or the HF cache" if spec.needs_weights else "none"
        available = spec.extra is None or models_installed
        rows.append({
            "name": name,
            "dim": "-" if spec.dim is None else str(spec.dim),
            "magnification": magnification,
            "licence": licence,
            "weights": weights,
            "available": "yes" if available else f'pip install "fivewsi[{spec.extra}]"',
            "description": spec.description,
        })
    return rows


@app.command("encoders")
def encoders_command() -> None:
    """List the registered patch encoders: dimension, magnification, licence, weights."""
    from rich.markup import escape
    from rich.table import Table

    from fivewsi.utils.logs import console

    rows = encoder_rows()
    table = Table(title="patch encoders")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*map(escape, row.values()))  # '[models]' is text, not markup
    console.print(table)
