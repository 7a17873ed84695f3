"""Shared fixtures: real data from ../shared when present, synthetic slides always."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SLIDES = SHARED / "slides"


def shared_slide(name: str) -> Path:
    """Path of a real slide in ../shared/data/slides; skips the test when it is absent."""
    path = SHARED_SLIDES / name
    if not path.exists():
        pytest.skip(f"shared slide {name} not available")
    return path
