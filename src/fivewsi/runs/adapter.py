"""A training-free few-shot cache (Tip-Adapter) stored in a run: ``adapter.safetensors``.

A run made with the ``tip-adapter`` recipe keeps its starting (report-pretrained) weights as
they are and stores a cache of its k·C labelled shots: ``keys`` ``[M, E]``, the L2-normalised
slide embeddings of the shots from the frozen model, and ``values`` ``[M, C]``, their one-hot
labels over the run's classes. A slide with embedding ``e`` (normalised) and zero-shot class
scores ``z = s · cos(e, text_c)`` (``s`` the model's logit scale) is scored

    z + α · (s / 100) · exp(−β (1 − e · keysᵀ)) @ values  [/ k with ``reduce="mean"``]

Tip-Adapter (Zhang et al., ECCV 2022) adds ``α · exp(−β(1 − cos)) @ values`` to CLIP logits of
scale 100; the factor ``s / 100`` keeps α in its units whatever FiVE's learnt scale is.
``reduce="mean"`` divides the affinities of each class by its number of shots, so α does not
have to change with k. ``α = 0`` gives the zero-shot scores exactly.

Example:
    >>> import torch
    >>> keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    >>> cache = TipAdapter(keys, torch.eye(2), alpha=1.0, beta=5.5)
    >>> zero = torch.zeros(1, 2)
    >>> cache.logits(torch.tensor([[1.0, 0.0]]), zero, scale=100.0).argmax(1).item()
    0
    >>> TipAdapter(keys, torch.eye(2), alpha=0.0, beta=5.5).logits(
    ...     torch.tensor([[1.0, 0.0]]), zero, scale=100.0).abs().max().item()
    0.0
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fivewsi.errors import RunError
from fivewsi.utils.atomic import atomic_path

#: The cache's file in a run folder (recorded as ``run.json``'s ``adapter_file``).
ADAPTER_FILE = "adapter.safetensors"

#: Tip-Adapter's affinities are added to CLIP logits of this scale; α is in its units.
REFERENCE_SCALE = 100.0


@dataclass
class TipAdapter:
    """The shots' cache and how it is mixed into the class scores (see the module docstring).

    Attributes:
        keys: ``[M, E]`` L2-normalised slide embeddings of the shots.
        values: ``[M, C]`` one-hot labels of the shots over the run's classes.
        alpha: weight of the cache (0: zero-shot scores).
        beta: sharpness of the affinities ``exp(−β(1 − cos))``.
        reduce: ``"sum"`` (Tip-Adapter: the affinities of a class add up) or ``"mean"`` (divided
            by the class's number of shots).
    """

    keys: Tensor
    values: Tensor
    alpha: float
    beta: float
    reduce: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        if self.keys.ndim != 2 or self.values.ndim != 2 or len(self.keys) != len(self.values):
            raise RunError(
                f"adapter cache: keys {tuple(self.keys.shape)} and values "
                f"{tuple(self.values.shape)} do not match"
            )
        if not self.alpha >= 0 or not self.beta > 0:
            raise RunError(f"adapter cache: alpha must be ≥ 0 and beta > 0, got {self.alpha}, "
                           f"{self.beta}")
        if self.reduce not in ("sum", "mean"):
            raise RunError(f"adapter cache: reduce must be 'sum' or 'mean', got {self.reduce!r}")

    @property
    def n_classes(self) -> int:
        return int(self.values.shape[1])

    def cache_scores(self, embedding: Tensor) -> Tensor:
        """``[B, C]`` the cache's affinity scores of L2-normalised slide embeddings."""
        keys = self.keys.to(embedding.device, torch.float32)
        values = self.values.to(embedding.device, torch.float32)
        affinity = torch.exp(-self.beta * (1.0 - embedding.float() @ keys.T))
        scores = affinity @ values
        if self.reduce == "mean":
            scores = scores / values.sum(0).clamp_min(1.0)
        return scores

    def logits(self, embedding: Tensor, zero_shot: Tensor, *, scale: float) -> Tensor:
        """The zero-shot class scores ``[B, C]`` plus the cache's, for logit scale ``scale``."""
        if zero_shot.shape[1] != self.n_classes:
            raise RunError(f"adapter cache has {self.n_classes} classes, the scores "
                           f"{zero_shot.shape[1]}")
        if self.alpha == 0:
            return zero_shot
        extra = self.alpha * (scale / REFERENCE_SCALE) * self.cache_scores(embedding)
        return zero_shot + extra.to(zero_shot.dtype)


def save_adapter(adapter: TipAdapter, path: str | os.PathLike[str]) -> None:
    """Write the cache atomically (tensors, and α, β, reduce as metadata)."""
    from safetensors.torch import save_file

    from fivewsi.runs.weights import check_finite

    state = {"keys": adapter.keys.detach().float().cpu().contiguous(),
             "values": adapter.values.detach().float().cpu().contiguous()}
    check_finite(state, path)
    meta = {"kind": "tip-adapter", "alpha": adapter.alpha, "beta": adapter.beta,
            "reduce": adapter.reduce}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"adapter": json.dumps(meta)})


def load_adapter(path: str | os.PathLike[str]) -> TipAdapter:
    """The cache written by :func:`save_adapter`; :class:`RunError` when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["adapter"])
            keys, values = handle.get_tensor("keys"), handle.get_tensor("values")
    except Exception as exc:  # safetensors' own error type is not exported
        raise RunError(f"{path}: not an adapter cache ({exc})") from None
    if meta.get("kind") != "tip-adapter":
        raise RunError(f"{path}: unknown adapter kind {meta.get('kind')!r}")
    return TipAdapter(keys, values, alpha=float(meta["alpha"]), beta=float(meta["beta"]),
                      reduce=meta.get("reduce", "sum"))
