"""Shared fixtures: real data from ../shared when present, synthetic slides always."""

from __future__ import annotations

import socket
from collections.abc import Iterator
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


def write_tiny_text_model(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: a fast local text encoder for tests."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fivewsi.model.text import resolve_text_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_text_model("all-minilm-l6-v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: extra intra-op threads only wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[object]:
    """Mount a small tmpfs: ``mount_tmpfs(size="60k", readonly=False) -> Path``.

    For disk-full and read-only probes of the real code paths; skips where mounting is not
    allowed (not root, or a container without the capability). Unmounted afterwards.
    """
    import subprocess

    mounted: list[Path] = []

    def mount(size: str = "60k", readonly: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    import subprocess as sp

    for point in mounted:
        sp.run(["umount", "-l", str(point)], capture_output=True)
