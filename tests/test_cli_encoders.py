"""``fivewsi encoders`` lists every encoder with its published facts (no timm needed)."""

from __future__ import annotations

from typer.testing import CliRunner

from fivewsi.cli import app
from fivewsi.cli.encoders import encoder_rows
from fivewsi.features.recipe import list_recipes

ENV = {"COLUMNS": "250", "NO_COLOR": "1"}


def test_listing_has_the_recipe_facts() -> None:
    result = CliRunner().invoke(app, ["encoders"], env=ENV)
    assert result.exit_code == 0, result.output
    for column in ("name", "dim", "magnification", "licence", "weights", "available"):
        assert column in result.output
    for line_start, facts in {
        "│ uni2-h ": ("1536", "20× (0.5 µm/px)", "CC-BY-NC-ND-4.0", "MahmoodLab/UNI2-h"),
        "│ virchow2 ": ("2560", "paige-ai/Virchow2"),
        "│ uni ": ("1024", "MahmoodLab/UNI"),
        "│ h-optimus-0 ": ("1536", "Apache-2.0", "bioptimus/H-optimus-0"),
        "│ he-handcrafted ": ("85", "none", "yes"),
    }.items():
        line = next(ln for ln in result.output.splitlines() if ln.startswith(line_start))
        for fact in facts:
            assert fact in line, (fact, line)
    uni = next(ln for ln in result.output.splitlines() if ln.startswith("│ uni "))
    assert "│ yes " in uni or 'pip install "fivewsi[models]"' in uni, uni


def test_every_recipe_is_listed_with_its_hub_id() -> None:
    rows = {row["name"]: row for row in encoder_rows()}
    for name, recipe in list_recipes().items():
        assert rows[name]["dim"] == str(recipe.dim)
        assert rows[name]["licence"] == recipe.licence
        if recipe.weights.hub:
            assert rows[name]["weights"].startswith(recipe.weights.hub[0])
