"""docs/encoders.md keeps one row per encoder recipe with its facts and parity status.

Registry-driven: a new recipe file without its documented row, sources and parity fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fivewsi.features.recipe import list_recipes

DOC = Path(__file__).resolve().parents[1] / "docs" / "encoders.md"
PARITY_HEADER = "full-size parity (cmu-1-small-region"


def _recipe_rows() -> dict[str, list[str]]:
    """Rows of the per-encoder tables (those with a full-size parity column), by encoder."""
    rows: dict[str, list[str]] = {}
    header: list[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "name":
            header = cells
            continue
        if header and any(PARITY_HEADER in h for h in header) and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_recipe_has_a_documented_row_with_parity(name: str) -> None:
    rows = _recipe_rows()
    assert name in rows, f"docs/encoders.md has no per-encoder row for recipe {name!r}"
    parity = rows[name][-1]
    assert "1.000000" in parity or "cosine" in parity or parity[:1].isdigit(), parity
    recipe = list_recipes()[name]
    assert str(recipe.dim) in " ".join(rows[name]), f"{name}: dim {recipe.dim} not in its row"
    assert recipe.sources and recipe.licence


def test_no_row_names_an_unknown_encoder() -> None:
    assert set(_recipe_rows()) <= set(list_recipes())
