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
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from fivewsi.features.bags import Bag, BagError, load_bag, read_bag_attrs
from fivewsi.model.outputs import BagBatch, raster_coords

log = logging.getLogger(__name__)

#: Feature file suffixes, preferred first when a slide has several.
FEATURE_SUFFIXES = (".h5", ".pt")


def find_feature_files(features: str | os.PathLike[str]) -> dict[str, Path]:
    """Map slide id → feature file for every bag anywhere under ``features``.

    Works on a ``fivewsi preprocess`` output (``OUT/features/*.h5``), a TRIDENT job folder
    (``20x_256px_0px_overlap/features_<encoder>/*.h5``), CLAM's ``h5_files`` / ``pt_files``, or a
    flat folder. ``.h5`` wins over ``.pt`` for the same slide; temporary files are ignored.

    Example:
        >>> find_feature_files("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ...
    """
    root = Path(features)
    if not root.is_dir():
        raise FileNotFoundError(f"features folder not found: {root}")
    found: dict[str, Path] = {}
    for suffix in FEATURE_SUFFIXES:
        for path in sorted(root.rglob(f"*{suffix}")):
            if path.name.startswith(".") or not path.is_file():
                continue
            slide_id = path.stem
            if slide_id in found:
                if found[slide_id].suffix == suffix and found[slide_id] != path:
                    log.warning("%s: several feature files, using %s", slide_id, found[slide_id])
                continue
            found[slide_id] = path
    return found


def grid_coords(bag: Bag) -> Tensor:
    """The bag's patch positions in patch-grid units, ``[N, 2]`` float.

    Level-0 coords are divided by the patch side in level-0 pixels (``patch_size_level0``);
    without that attribute the side is guessed as the smallest step between distinct coords;
    bags without coords get raster positions.

    Example:
        >>> import numpy as np
        >>> bag = Bag("s", np.zeros((2, 3), np.float32), np.array([[0, 0], [512, 256]]),
        ...           {"patch_size_level0": 256})
        >>> grid_coords(bag).tolist()
        [[0.0, 0.0], [2.0, 1.0]]
    """
    if bag.coords is None:
        return raster_coords(bag.n_patches)
    coords = np.asarray(bag.coords, dtype=np.float64)
    side = bag.patch_size_level0 or _guess_step(coords)
    return torch.from_numpy(coords / float(side)).float()


def _guess_step(coords: np.ndarray) -> float:
    steps = []
    for axis in (0, 1):
        values = np.unique(coords[:, axis])
        if len(values) > 1:
            steps.append(float(np.diff(values).min()))
    return min(steps) if steps else 1.0


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


@dataclass
class SlideItem:
    """One slide of a training or validation set.

    Attributes:
        slide_id: the slide's id.
        path: its feature file.
        target: class index (classes stage), else None.
        report_index: index of its fine-grained label in the stage's label list (reports stage).
        n_patches: patches in the bag.
    """

    slide_id: str
    path: Path
    target: int | None = None
    report_index: int | None = None
    n_patches: int = 0


@dataclass
class FeatureCheck:
    """Slides whose feature files were found usable, and those that were not (with why)."""

    ok: dict[str, tuple[Path, int]] = field(default_factory=dict)  # id → (path, n_patches)
    missing: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    dim: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # attributes of one usable bag


def check_feature_files(slide_ids: Sequence[str], files: dict[str, Path]) -> FeatureCheck:
    """Read the attributes of each slide's bag (not its arrays) and sort the slides.

    A bag is broken when it cannot be read, holds no patches, or has another feature size than
    most bags. Missing and broken slides are logged with a count; the caller skips them.
    """
    check = FeatureCheck()
    dims: dict[str, int] = {}
    for slide_id in slide_ids:
        path = files.get(slide_id)
        if path is None:
            check.missing.append(slide_id)
            continue
        try:
            n, dim, attrs = _bag_shape(path)
        except (BagError, OSError, KeyError, ValueError, RuntimeError) as exc:
            check.broken[slide_id] = f"{type(exc).__name__}: {exc}"
            continue
        if n == 0:
            check.broken[slide_id] = "no patches"
            continue
        dims[slide_id] = dim
        check.ok[slide_id] = (path, n)
        if not check.attrs:
            check.attrs = attrs
    if dims:
        values, counts = np.unique(list(dims.values()), return_counts=True)
        check.dim = int(values[np.argmax(counts)])
        for slide_id, dim in dims.items():
            if dim != check.dim:
                check.broken[slide_id] = f"feature size {dim}, most bags have {check.dim}"
                del check.ok[slide_id]
    if check.missing:
        shown = ", ".join(check.missing[:10]) + (" ..." if len(check.missing) > 10 else "")
        log.warning("%d slides have no feature file and are skipped: %s", len(check.missing), shown)
    for slide_id, why in list(check.broken.items())[:10]:
        log.warning("%s: broken feature file, skipped (%s)", slide_id, why)
    if len(check.broken) > 10:
        log.warning("... %d broken feature files in all", len(check.broken))
    return check


def _bag_shape(path: Path) -> tuple[int, int, dict[str, Any]]:
    if path.suffix == ".pt":
        bag = load_bag(path)
        return bag.n_patches, bag.dim, {}
    attrs = read_bag_attrs(path)
    import h5py

    with h5py.File(path, "r") as handle:
        if "features" not in handle:
            raise BagError(f"{path.name}: no 'features' dataset")
        dim = int(handle["features"].shape[-1])
    return int(attrs.get("n_patches", 0)), dim, attrs


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
        self.cache = cache or BagCache(0)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        features, grid = self.cache.get(item.path)
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
