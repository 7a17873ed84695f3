"""docs/reliability.md names the tests that show each guarantee: every one must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def defined_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names.update(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
    return names


def test_every_test_the_reliability_page_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_\w+)`", text)) | set(re.findall(r"::(test_\w+)", text))
    named = {n for n in named if not n.startswith("test_x")}
    assert len(named) >= 40
    missing = sorted(named - defined_tests())
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_test_file_the_reliability_page_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    for name in set(re.findall(r"tests/(test_\w+\.py)", text)):
        assert (ROOT / "tests" / name).is_file(), name
