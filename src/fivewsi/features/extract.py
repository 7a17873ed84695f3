"""Embed a slide's patches with a frozen encoder, batch by batch, in DataLoader workers.

Where the encoder runs depends on the device:

- **GPU**: worker processes read and decode patches; the main process runs the encoder on the
  GPU (with autocast), so the GPU never waits for JPEG decoding.
- **CPU**: each worker reads *and* encodes its batch and hands back only the features. Moving
  raw patches between processes (12.5 MB per batch of 64 patches of 256 px) costs more than
  encoding them on this side, so on the CPU this roughly doubles throughput.

Each item of the dataset is a whole batch, read into a buffer that the worker reuses, so memory
is bounded by ``batch_size`` whatever the slide size.

Example:
    >>> from fivewsi.features.extract import embed_patches  # doctest: +SKIP
    >>> features = embed_patches("slide.svs", coords, size0=512, patch_size=256,
    ...                          encoder=encoder)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fivewsi.features.registry import PatchEncoder
from fivewsi.slides.readers import SlideReader, open_slide

log = logging.getLogger(__name__)


class PatchBatches(Dataset[torch.Tensor]):
    """Batches of one slide's patches at the target resolution.

    Item ``b`` is patches ``b * batch_size`` onwards: RGB uint8 ``[B, H, W, 3]``, or their
    features ``[B, D]`` when an ``encoder`` is given (encoding where the patches are read).
    Each process opens its own slide handle on first use: OpenSlide handles must not cross a
    fork.
    """

    def __init__(
        self,
        slide_path: str | os.PathLike[str],
        coords: np.ndarray,
        size0: int,
        patch_size: int,
        batch_size: int,
        slide_mpp: float | None = None,
        encoder: PatchEncoder | None = None,
    ) -> None:
        self.slide_path = Path(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64)
        self.size0, self.patch_size = int(size0), int(patch_size)
        self.batch_size = int(batch_size)
        self.slide_mpp = slide_mpp
        self.encoder = encoder
        self._reader: SlideReader | None = None
        self._buffer: np.ndarray | None = None
        self._pid = -1

    def __len__(self) -> int:
        return math.ceil(len(self.coords) / self.batch_size)

    def _slide(self) -> SlideReader:
        if self._reader is None or self._pid != os.getpid():
            self._reader = open_slide(self.slide_path, self.slide_mpp)
            self._buffer = np.empty(
                (self.batch_size, self.patch_size, self.patch_size, 3), dtype=np.uint8
            )
            self._pid = os.getpid()
        return self._reader

    def __getitem__(self, index: int) -> torch.Tensor:
        slide = self._slide()
        assert self._buffer is not None
        coords = self.coords[index * self.batch_size : (index + 1) * self.batch_size]
        for row, (x, y) in enumerate(coords):
            self._buffer[row] = slide.read_scaled(int(x), int(y), self.size0, self.patch_size)
        patches = torch.from_numpy(self._buffer[: len(coords)])
        if self.encoder is None:
            return patches.clone()  # the buffer is reused for the next batch
        with torch.inference_mode():
            return self.encoder(patches).float()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _worker_init(_: int) -> None:
    # One thread per worker: the workers already use every core. OpenCV's thread count is left
    # alone: changing it in a forked child after the parent used its thread pool deadlocks.
    torch.set_num_threads(1)


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 (or fp16) autocast on CUDA; nothing on the CPU, where fp32 is fastest and exact."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def embed_patches(
    slide_path: str | os.PathLike[str],
    coords: np.ndarray,
    *,
    size0: int,
    patch_size: int,
    encoder: PatchEncoder,
    slide_mpp: float | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Read every patch at ``coords`` and return its features, ``[N, encoder.dim]`` float32.

    Args:
        slide_path: slide file.
        coords: ``[N, 2]`` level-0 top-left corners.
        size0: patch side in level-0 pixels.
        patch_size: patch side in pixels at the target resolution (what the encoder sees).
        encoder: a frozen :class:`PatchEncoder`, already on ``device``.
        slide_mpp: level-0 mpp for slides whose metadata lacks it.
        batch_size: patches per encoder call; bounds memory whatever the slide size.
        workers: worker processes (0: everything in this process).
        device: where the encoder runs (default: CPU).
        on_batch: called with the number of patches after each batch (progress bars).
    """
    device = device or torch.device("cpu")
    n = len(coords)
    features = np.empty((n, encoder.dim), dtype=np.float32)
    if n == 0:
        return features
    workers = min(workers, math.ceil(n / batch_size))
    in_workers = device.type == "cpu" and workers > 0
    dataset = PatchBatches(slide_path, coords, size0, patch_size, batch_size, slide_mpp,
                           encoder if in_workers else None)
    loader = DataLoader(
        dataset,
        batch_size=None,  # items are batches already
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
    )
    done = 0
    threads = torch.get_num_threads()
    try:
        if in_workers:
            torch.set_num_threads(1)  # the main process only collects results
        with torch.inference_mode(), autocast_context(device):
            for batch in loader:
                out = batch if in_workers else encoder(batch.to(device, non_blocking=True))
                features[done : done + len(out)] = out.float().cpu().numpy()
                done += len(out)
                if on_batch is not None:
                    on_batch(len(out))
    finally:
        torch.set_num_threads(threads)
        dataset.close()
    if not np.isfinite(features).all():
        raise ValueError(f"encoder {encoder.name} produced non-finite features")
    return features
