"""The layers of docs/architecture.md, enforced: a package imports only the layers below it.

Every ``import fivewsi.X`` / ``from fivewsi.X import`` in a package's files counts, at module
level or inside a function (lazy imports are still dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fivewsi"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"

#: Each package's layer: it may import packages of lower layers only (and ``fivewsi`` itself
#: for ``__version__``). Packages in one layer do not import each other.
LAYERS: dict[str, int] = {
    "errors": 0,
    "utils": 1,
    "slides": 2,
    "reports": 2,
    "features": 3,
    "cohort": 3,
    "model": 4,
    "synthetic": 4,
    "runs": 5,
    "training": 6,
    "predict": 7,
    "evaluation": 7,
    "demo": 8,
    "view": 8,
    "cli": 9,
    "__main__": 10,
}
#: Allowed exceptions to "lower layers only", each with its reason.
ALLOWED = {
    # the few-shot grid trains runs: it is evaluation built on training, one layer up
    ("evaluation", "training"),
}


def unit_of(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fivewsi" and len(parts) > 1:
                units.add(parts[1])
    return units


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or
                  p.parent != PACKAGE)


def test_every_package_has_a_layer():
    units = {unit_of(p) for p in package_files()}
    assert units <= set(LAYERS), f"put {sorted(units - set(LAYERS))} in LAYERS and the docs"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers(path):
    unit = unit_of(path)
    for target in imported_units(path) - {unit}:
        assert target in LAYERS, f"{path.name} imports unknown package fivewsi.{target}"
        assert LAYERS[target] < LAYERS[unit] or (unit, target) in ALLOWED, (
            f"fivewsi.{unit} (layer {LAYERS[unit]}) must not import fivewsi.{target} "
            f"(layer {LAYERS[target]}): see docs/architecture.md"
        )


def test_the_architecture_page_names_every_package():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    for unit in LAYERS:
        if unit != "__main__":
            assert f"`{unit}`" in text or f"fivewsi.{unit}" in text, unit
