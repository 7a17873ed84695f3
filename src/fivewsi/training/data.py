"""Bags for training: find feature files, sample patches spread over the slide, batch them.

Training draws a subset of each slide's patches per epoch, FiVE's interval sampling made
spatially even: patches are ordered along a Hilbert curve through their grid positions, the
order is cut into equal intervals and one random patch is drawn from each interval, so the
sample covers the whole tissue rather than a clump. Evaluation uses every patch.

Example:
    >>> import numpy as np
    >>> coords = np.stack(np.meshgrid(np.arange(8), np.arange(8)), -1).reshape(-1, 2)
    >>> picked = sample_patches(coords, np.random.default_rng(0), ratio=0.25, max_patches=100)
    >>> len(picked)
    16
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from fivewsi.features.bags import BagError, load_bag
from fivewsi.model.outputs import BagBatch, grid_coords
from fivewsi.training.config import TrainError
from fivewsi.training.items import SlideItem

log = logging.getLogger(__name__)

def hilbert_index(grid: np.ndarray) -> np.ndarray:
    """Position of each integer grid point ``[N, 2]`` along a Hilbert curve covering them all.

    Example:
        >>> hilbert_index(np.array([[0, 0], [0, 1], [1, 1], [1, 0]])).tolist()
        [0, 1, 2, 3]
    """
    xy = np.asarray(grid, dtype=np.int64)
    if len(xy) == 0:
        return np.zeros(0, dtype=np.int64)
    xy = xy - xy.min(axis=0)
    side = 1
    while side <= int(xy.max()):
        side *= 2
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    d = np.zeros(len(xy), dtype=np.int64)
    s = side // 2
    while s > 0:  # the classic xy → d walk, vectorised over points
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        flip = ry == 0
        swap_flip = flip & (rx == 1)
        x = np.where(swap_flip, side - 1 - x, x)
        y = np.where(swap_flip, side - 1 - y, y)
        x, y = np.where(flip, y, x), np.where(flip, x, y)
        s //= 2
    return d


def sample_patches(
    grid: np.ndarray | Tensor,
    rng: np.random.Generator,
    *,
    ratio: float,
    max_patches: int,
) -> np.ndarray:
    """Indices (ascending) of the patches drawn for one training step of a slide.

    ``k = min(ceil(N * ratio), max_patches)`` patches: the Hilbert order of the patches is cut
    into ``k`` equal intervals and one random patch is taken from each.
    """
    grid = np.asarray(grid, dtype=np.float64)
    n = len(grid)
    k = min(max(1, math.ceil(n * ratio)), max_patches, n)
    if k >= n:
        return np.arange(n)
    order = np.argsort(hilbert_index(np.floor(grid).astype(np.int64)), kind="stable")
    bounds = np.linspace(0, n, k + 1).astype(np.int64)
    lows, highs = bounds[:-1], bounds[1:]
    picks = lows + (rng.random(k) * (highs - lows)).astype(np.int64)
    return np.sort(order[picks])


class BagCache:
    """Loaded bags (features and grid coords as tensors), least recently used dropped first.

    Example:
        >>> cache = BagCache(max_bytes=1 << 20)
        >>> cache.max_bytes
        1048576
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._items: OrderedDict[Path, tuple[Tensor, Tensor]] = OrderedDict()

    def get(self, path: Path) -> tuple[Tensor, Tensor]:
        if path in self._items:
            self._items.move_to_end(path)
            return self._items[path]
        bag = load_bag(path)
        item = (torch.from_numpy(np.ascontiguousarray(bag.features, np.float32)), grid_coords(bag))
        size = sum(t.numel() * t.element_size() for t in item)
        if size <= self.max_bytes:
            self._items[path] = item
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (feats, grid) = self._items.popitem(last=False)
                self.bytes -= feats.numel() * feats.element_size()
                self.bytes -= grid.numel() * grid.element_size()
        return item

    def __len__(self) -> int:
        return len(self._items)


class BagDataset(Dataset[dict[str, Any]]):
    """Slides → ``{"features", "coords", "slide_id", "index", "target"}``, one slide per item.

    In training (``train=True``) each item is a patch sample drawn with a generator seeded by
    ``(seed, epoch, index)``, so an epoch's samples are the same in every run and every process;
    the sampler sets ``epoch``. In evaluation every patch is returned.
    """

    def __init__(
        self,
        items: Sequence[SlideItem],
        *,
        train: bool,
        sample_ratio: float = 1.0,
        max_patches: int = 1 << 30,
        seed: int = 0,
        cache: BagCache | None = None,
    ) -> None:
        self.items = list(items)
        self.train = train
        self.sample_ratio = sample_ratio
        self.max_patches = max_patches
        self.seed = seed
        self.epoch = 0
        # Not ``cache or ...``: an empty BagCache has length 0, so it is falsy, and the run's
        # shared cache would be swapped for one that keeps nothing (every epoch re-read files).
        self.cache = cache if cache is not None else BagCache(0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            features, grid = self.cache.get(item.path)
        except BagError as exc:  # checked at planning: the file changed during training
            raise TrainError(
                f"{item.slide_id}: feature file became unusable during training ({exc}); "
                "training stopped unfinished: fix or remove the file and run again to resume"
            ) from None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            keep = torch.from_numpy(
                sample_patches(grid, rng, ratio=self.sample_ratio, max_patches=self.max_patches)
            )
            features, grid = features[keep], grid[keep]
        return {
            "features": features,
            "coords": grid,
            "slide_id": item.slide_id,
            "index": index,
            "target": -1 if item.target is None else item.target,
        }


@dataclass
class TrainingBatch:
    """A padded batch plus what the losses need: dataset indices and class targets."""

    bags: BagBatch
    index: Tensor
    target: Tensor

    def to(self, device: torch.device | str) -> TrainingBatch:
        return TrainingBatch(self.bags.to(device), self.index.to(device), self.target.to(device))


def collate_bags(items: list[dict[str, Any]]) -> TrainingBatch:
    """Pad a list of dataset items into one :class:`TrainingBatch`."""
    bags = BagBatch.from_bags(
        [i["features"] for i in items], [i["coords"] for i in items], [i["slide_id"] for i in items]
    )
    index = torch.tensor([i["index"] for i in items], dtype=torch.long)
    target = torch.tensor([i["target"] for i in items], dtype=torch.long)
    return TrainingBatch(bags, index, target)


class EpochSampler(DistributedSampler):
    """This process's share of the slides, reshuffled per epoch from the seed alone.

    Also tells the dataset the epoch, so patch samples follow it. Works without a process group
    (one replica); under DDP every rank gets an equal share (padded by repetition).
    """

    def __init__(
        self, dataset: BagDataset, *, shuffle: bool, seed: int, num_replicas: int, rank: int
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )
        self.bag_dataset = dataset

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.bag_dataset.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__()))
