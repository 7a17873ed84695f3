"""Plain data passed between the model stage's parts: a padded batch of bags, a model's output.

Every aggregator (FiVE's TFS module and the label-only baselines) takes a :class:`BagBatch` and
returns an :class:`AggregatorOutput`, so training, evaluation and prediction treat them alike.

Example:
    >>> import torch
    >>> batch = BagBatch.from_bags([torch.ones(3, 4), torch.ones(5, 4)])
    >>> batch.features.shape, batch.mask.sum(1).tolist()
    (torch.Size([2, 5, 4]), [3, 5])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from fivewsi.features.bags import Bag


@dataclass
class BagBatch:
    """Bags of patch features padded to the longest bag.

    Attributes:
        features: ``[B, N, D]`` float patch features, zeros where padded.
        coords: ``[B, N, 2]`` float patch positions in patch-grid units (level-0 (x, y) divided
            by the patch side in level-0 pixels), zeros where padded.
        mask: ``[B, N]`` bool, True for a real patch.
        slide_ids: one id per bag.
    """

    features: Tensor
    coords: Tensor
    mask: Tensor
    slide_ids: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> BagBatch:
        return BagBatch(
            self.features.to(device),
            self.coords.to(device),
            self.mask.to(device),
            list(self.slide_ids),
        )

    @classmethod
    def from_bags(
        cls,
        features: Sequence[Tensor],
        coords: Sequence[Tensor | None] | None = None,
        slide_ids: Sequence[str] | None = None,
    ) -> BagBatch:
        """Pad ``[N_i, D]`` feature tensors (and ``[N_i, 2]`` grid coords) into one batch.

        Bags without coords get a raster position from their patch index, so position-aware
        aggregators still run on CLAM ``.pt`` bags.
        """
        n_max = max(int(f.shape[0]) for f in features)
        dim = int(features[0].shape[1])
        out = torch.zeros(len(features), n_max, dim, dtype=torch.float32)
        grid = torch.zeros(len(features), n_max, 2, dtype=torch.float32)
        mask = torch.zeros(len(features), n_max, dtype=torch.bool)
        for i, feats in enumerate(features):
            n = int(feats.shape[0])
            out[i, :n] = feats.float()
            mask[i, :n] = True
            xy = coords[i] if coords is not None else None
            grid[i, :n] = xy.float() if xy is not None else raster_coords(n)
        ids = list(slide_ids) if slide_ids is not None else [str(i) for i in range(len(features))]
        return cls(out, grid, mask, ids)


def grid_coords(bag: Bag) -> Tensor:
    """The bag's patch positions in patch-grid units, ``[N, 2]`` float.

    Coords are divided by the patch side in their own unit (:attr:`Bag.grid_step`: level-0
    pixels, or µm for STAMP bags); without it the side is guessed as the smallest step between
    distinct coords; bags without coords get raster positions.

    Example:
        >>> import numpy as np
        >>> from fivewsi.features.bags import Bag
        >>> bag = Bag("s", np.zeros((2, 3), np.float32), np.array([[0, 0], [512, 256]]),
        ...           {"patch_size_level0": 256})
        >>> grid_coords(bag).tolist()
        [[0.0, 0.0], [2.0, 1.0]]
    """
    if bag.coords is None:
        return raster_coords(bag.n_patches)
    coords = np.asarray(bag.coords, dtype=np.float64)
    side = bag.grid_step or _guess_step(coords)
    return torch.from_numpy(coords / float(side)).float()


def _guess_step(coords: np.ndarray) -> float:
    steps = []
    for axis in (0, 1):
        values = np.unique(coords[:, axis])
        if len(values) > 1:
            steps.append(float(np.diff(values).min()))
    return min(steps) if steps else 1.0


def raster_coords(n: int) -> Tensor:
    """Grid positions of ``n`` patches laid out row by row in a square (bags without coords)."""
    side = max(1, int(n**0.5 + 0.999))
    index = torch.arange(n)
    return torch.stack([index % side, index // side], dim=1).float()


@dataclass
class AggregatorOutput:
    """What an aggregator returns for a batch.

    Attributes:
        embedding: ``[B, E]`` slide embedding. FiVE: L2-normalised, in the space shared with text.
        logits: ``[B, C]`` class logits of label-only baselines (None for FiVE, which scores
            classes by similarity to their descriptions).
        patch_attention: ``[B, N]`` weight of each patch in the slide's prediction, summing to 1
            over real patches (zeros where padded); drives the class heatmap.
        prompt_attention: ``[B, P, N]`` FiVE's cross-attention of each prompt over the patches
            (question prompts first, then learnable ones), averaged over heads.
        prompt_tokens: ``[B, P, E]`` FiVE's per-prompt outputs before pooling over prompts.
        aux_loss: an extra training loss of the model itself (CLAM's instance clustering,
            DSMIL's instance branch); None when it has none.
    """

    embedding: Tensor
    logits: Tensor | None = None
    patch_attention: Tensor | None = None
    prompt_attention: Tensor | None = None
    prompt_tokens: Tensor | None = None
    aux_loss: Tensor | None = None


def bag_batch(bags: Sequence[Bag]) -> BagBatch:
    """One padded :class:`BagBatch` of loaded bags (every patch, grid coords, their ids)."""
    features = [torch.from_numpy(np.asarray(b.features, np.float32)) for b in bags]
    return BagBatch.from_bags(features, [grid_coords(b) for b in bags], [b.slide_id for b in bags])
