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


def make_slides_and_run(root: Path, *, epochs: int) -> tuple[Path, Path, Path]:
    """Four small pixel slides (tumour / stroma), their features, and a tiny FiVE run trained
    on them (LUAD / LUSC): ``(slides, work, run)``. Shared by the predict and viewer tests."""
    from fivewsi.cohort.table import ClassDescription, CohortRow, write_classes, write_cohort
    from fivewsi.features.preprocess import PreprocessConfig, preprocess
    from fivewsi.synthetic import write_pixel_slide
    from fivewsi.training import TrainConfig, train

    slides = root / "slides"
    for i, style in enumerate(("tumour", "stroma", "tumour", "stroma")):
        write_pixel_slide(slides / f"s{i}.tif", width=1536, height=1024, seed=i,
                          regions=[(700, 500, 300, style)])
    work = root / "work"
    assert preprocess([slides], work, PreprocessConfig(workers=0, qc=False), progress=False).ok
    write_cohort([CohortRow(f"s{i}", ("LUAD", "LUSC")[i % 2], None, "train") for i in range(4)],
                 root / "cohort.csv")
    write_classes([ClassDescription("LUAD", "glandular adenocarcinoma"),
                   ClassDescription("LUSC", "keratinising squamous carcinoma")],
                  root / "classes.csv")
    run = root / "run"
    train(TrainConfig(
        features=work / "features", cohort=root / "cohort.csv", classes=root / "classes.csv",
        out=run, epochs=epochs, min_steps=0, batch_size=2, progress=False,
        model_options={"dim": 32, "heads": 4, "n_learnable_prompts": 2,
                       "text_encoder": str(write_tiny_text_model(root / "tiny-bert"))},
    ))
    return slides, work, run
