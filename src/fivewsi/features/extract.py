"""Embed a slide's patches with a frozen encoder, batch by batch, in DataLoader workers.

Where the encoder runs depends on the device:

- **GPU**: worker processes read and decode patches into pinned memory, and a background thread
  (:func:`prefetch`) keeps a bounded queue of ready batches, so the GPU never waits for OpenSlide
  or JPEG decoding (even with ``workers=0``); the main process runs the encoder on the GPU under
  bf16 (or fp16) autocast, conv nets in channels-last memory format
  (:func:`prepare_encoder`), with a batch size chosen from free GPU memory unless one is given
  (:func:`choose_batch_size`).
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
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fivewsi.features.registry import PatchEncoder
from fivewsi.slides.readers import SlideReader, open_slide

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Batch size on the CPU when none is given (and on CUDA when the probe cannot run).
DEFAULT_BATCH_SIZE = 64
#: Largest batch :func:`choose_batch_size` picks: beyond it throughput no longer grows.
MAX_AUTO_BATCH = 1024
#: Share of the free GPU memory :func:`choose_batch_size` plans to use.
GPU_MEMORY_HEADROOM = 0.7
#: Batches read ahead of the GPU by :func:`prefetch`.
PREFETCH_DEPTH = 4


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


def batch_from_memory(
    free_bytes: int, per_patch_bytes: float, *, headroom: float = GPU_MEMORY_HEADROOM,
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """Patches per batch that fit ``headroom`` of ``free_bytes`` at ``per_patch_bytes`` each:
    a power of two between 1 and ``limit``.

    Example:
        >>> batch_from_memory(10 * 2**30, 40 * 2**20)  # 10 GiB free, 40 MiB a patch
        128
        >>> batch_from_memory(2**20, 40 * 2**20)
        1
    """
    fit = min(int(free_bytes * headroom // max(per_patch_bytes, 1.0)), max(1, limit))
    return 1 if fit < 1 else 1 << (fit.bit_length() - 1)


def choose_batch_size(
    encoder: PatchEncoder,
    patch_size: int,
    device: torch.device,
    *,
    probe: int = 8,
    limit: int = MAX_AUTO_BATCH,
) -> int:
    """Patches per encoder call: :data:`DEFAULT_BATCH_SIZE` on the CPU; on CUDA the most that
    fits the free memory, from the peak memory of a probe batch of ``probe`` blank patches.

    The probe runs as the real batches do (inference mode, autocast); its peak allocation above
    what was allocated before, per patch, sets the size (:func:`batch_from_memory`).
    """
    if device.type != "cuda":
        return DEFAULT_BATCH_SIZE
    try:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        free, _total = torch.cuda.mem_get_info(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        blank = torch.full((probe, patch_size, patch_size, 3), 255, dtype=torch.uint8)
        with torch.inference_mode(), autocast_context(device):
            encoder(blank)  # the encoder moves it to its device, as a batch would go
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    except RuntimeError as exc:  # out of memory already, or a driver problem: stay modest
        log.warning("could not probe GPU memory (%s); batch size %d", exc, DEFAULT_BATCH_SIZE)
        torch.cuda.empty_cache()
        return DEFAULT_BATCH_SIZE
    finally:
        torch.cuda.empty_cache()
    batch = batch_from_memory(free, peak / probe, limit=limit)
    log.info("batch size %d: %.0f MiB free, %.1f MiB a patch of %d px (probe of %d)",
             batch, free / 2**20, peak / probe / 2**20, patch_size, probe)
    return batch


def _conv_layers(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def prepare_encoder(encoder: PatchEncoder, device: torch.device) -> PatchEncoder:
    """Tune an encoder already on ``device`` for it: on CUDA, a conv net (more than one
    ``Conv2d``: a ViT has only its patch embedding) is put in channels-last memory format, which
    the tensor cores prefer; its inputs follow (``encoder.channels_last``). Nothing on the CPU,
    where outputs stay exactly those of the plain model.

    Example:
        >>> from fivewsi.features.registry import create_encoder
        >>> enc = prepare_encoder(create_encoder("he-handcrafted"), torch.device("cpu"))
        >>> getattr(enc, "channels_last", False)
        False
    """
    if device.type != "cuda" or not hasattr(encoder, "channels_last"):
        return encoder
    model = getattr(encoder, "model", encoder)
    if _conv_layers(model) > 1:
        model.to(memory_format=torch.channels_last)
        encoder.channels_last = True
        log.info("%s: channels-last memory format on %s", encoder.name, device)
    return encoder


_END = object()


def prefetch(items: Iterable[T], depth: int = PREFETCH_DEPTH) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead of the consumer.

    OpenSlide and the JPEG decoders release the GIL, so reading the next batches overlaps the
    encoder's work on the GPU. An exception of ``items`` is raised here, where the item would
    have come; closing the iterator early stops the thread.

    Example:
        >>> list(prefetch(range(5), depth=2))
        [0, 1, 2, 3, 4]
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    thread = threading.Thread(target=produce, name="fivewsi-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)


def embed_patches(
    slide_path: str | os.PathLike[str],
    coords: np.ndarray,
    *,
    size0: int,
    patch_size: int,
    encoder: PatchEncoder,
    slide_mpp: float | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    workers: int = 2,
    device: torch.device | None = None,
    on_batch: Callable[[int], None] | None = None,
    read_ahead: bool | None = None,
) -> np.ndarray:
    """Read every patch at ``coords`` and return its features, ``[N, encoder.dim]`` float32.

    Args:
        slide_path: slide file.
        coords: ``[N, 2]`` level-0 top-left corners.
        size0: patch side in level-0 pixels.
        patch_size: patch side in pixels at the target resolution (what the encoder sees).
        encoder: a frozen :class:`PatchEncoder`, already on ``device``.
        slide_mpp: level-0 mpp for slides whose metadata lacks it.
        batch_size: patches per encoder call; bounds memory whatever the slide size. None:
            :data:`DEFAULT_BATCH_SIZE` on the CPU, from free GPU memory on CUDA
            (:func:`choose_batch_size`).
        workers: worker processes (0: everything in this process).
        device: where the encoder runs (default: CPU).
        on_batch: called with the number of patches after each batch (progress bars).
        read_ahead: read batches in a background thread (:func:`prefetch`); None: on CUDA.
    """
    device = device or torch.device("cpu")
    n = len(coords)
    features = np.empty((n, encoder.dim), dtype=np.float32)
    if n == 0:
        return features
    if batch_size is None:
        batch_size = choose_batch_size(encoder, patch_size, device)
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
    batches: Iterable[torch.Tensor] = loader
    try:
        if in_workers:
            torch.set_num_threads(1)  # the main process only collects results
        # On CUDA a thread reads ahead (the workers, or this process with workers=0).
        if device.type == "cuda" if read_ahead is None else read_ahead:
            batches = prefetch(loader)
        with torch.inference_mode(), autocast_context(device):
            for batch in batches:
                out = batch if in_workers else encoder(batch.to(device, non_blocking=True))
                features[done : done + len(out)] = out.float().cpu().numpy()
                done += len(out)
                if on_batch is not None:
                    on_batch(len(out))
    finally:
        if isinstance(batches, Generator):
            batches.close()  # stops the reading thread before the slide is closed
        torch.set_num_threads(threads)
        dataset.close()
    if not np.isfinite(features).all():
        raise ValueError(f"encoder {encoder.name} produced non-finite features")
    return features
