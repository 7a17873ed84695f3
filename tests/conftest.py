"""Shared fixtures: real data from ../shared when present, synthetic slides always."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_SLIDES = SHARED / "slides"
SHARED_REPORTS = SHARED / "reports" / "tcga_lung_reports_dev.csv"


def shared_slide(name: str) -> Path:
    """Path of a real slide in ../shared/data/slides; skips the test when it is absent."""
    path = SHARED_SLIDES / name
    if not path.exists():
        pytest.skip(f"shared slide {name} not available")
    return path


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network at all, and an empty Hugging Face cache; returns the cache folder."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache
