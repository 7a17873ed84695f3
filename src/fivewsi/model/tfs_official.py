"""The released TFS module (FiVE's ``models/patch_fusion.py``) as a variant: ``five-official``.

:class:`OfficialTFS` follows the data flow of the released ``PatchFusionTransformer`` (written
anew here, checked against it: ``docs/model.md``); :class:`FiveOfficialModel` is FiVE
(:class:`~fivewsi.model.five.FiveModel`: same text encoder, projection, prompts and scoring)
with this aggregator in place of fivewsi's TFS, and :class:`FiveOfficialOptions` holds the
released defaults.

Data flow, for patch features ``x`` (already ``dim`` wide in the released code) and
L2-normalised prompts ``p`` [P, dim]:

1. ``pos``: a 1-D sinusoid of each patch's index divided by the bag's patch count (the
   released encoding, with its own frequencies); ``position="grid"`` uses fivewsi's 2-D grid
   encoding instead.
2. Instance branch: ``h = x + pos``; ``h = h + SelfAttn(LN(h))``; ``h = h + MLP(LN(h))`` (4×,
   QuickGELU); ``t = h + x`` (the outer residual); the instance vector is the mean of ``t``
   over the bag's patches.
3. Prompt branch, reading the tokens *after* self-attention: ``k = t + pos`` (the position is
   added again); ``a = CrossAttn(LN(p), LN(k))`` with no residual; ``a = MLP(LN(a))`` (4×,
   QuickGELU, no residual); the prompt vector is the mean over prompts.
4. Fusion: ``Linear(2·dim → dim)`` of ``[prompt vector, instance vector]`` (in that order).

No dropout anywhere (the released module has none). Padding is masked here: padded patches are
never keys of either attention and never enter a mean. The released code masks the
cross-attention and the instance mean but not the self-attention, where padded positions hold a
learned ``pad_embed`` vector that every real patch attends to; so its output for a bag depends
on how much padding its batch adds, and this one's does not (tested). Patch features of another
width than ``dim`` first go through a plain ``Linear(D → dim)`` (the released model took CLIP
features of its own width and had no input layer).

Example:
    >>> import torch
    >>> from fivewsi.model.outputs import BagBatch
    >>> tfs = OfficialTFS(16, dim=32, heads=4).eval()
    >>> with torch.no_grad():
    ...     out = tfs(BagBatch.from_bags([torch.randn(30, 16), torch.randn(20, 16)]),
    ...               torch.randn(5, 32))
    >>> out.embedding.shape, out.prompt_attention.shape
    (torch.Size([2, 32]), torch.Size([2, 5, 30]))
    >>> float(out.prompt_attention[1, :, 20:].sum())  # the second bag's padding
    0.0
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fivewsi.model.five import FiveModel, TextAlignedOptions
from fivewsi.model.outputs import BagBatch
from fivewsi.model.registry import register_model
from fivewsi.model.text import TextEncoder
from fivewsi.model.tfs import TFSAggregator, TFSOutput, grid_position_encoding

PositionMode = Literal["index", "grid"]
#: The released logit scale (fixed).
RELEASED_LOGIT_SCALE = 300.0


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x · sigmoid(1.702 x)`` (the released MLPs use it)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Linear(4 * dim, dim))


def index_position_encoding(mask: Tensor, dim: int, dtype: torch.dtype) -> Tensor:
    """``[B, N, dim]`` the released 1-D encoding of ``index / count`` of each bag's patches.

    Channel ``i`` is ``sin(r / 10000^(2i/dim))`` for even ``i`` and ``cos(r /
    10000^((2i−1)/dim))`` for odd ``i`` (the released frequencies), ``r`` = patch index / the
    bag's patch count; zeros at padding.

    Example:
        >>> enc = index_position_encoding(torch.tensor([[True, True, False]]), 4, torch.float64)
        >>> enc[0, 0].tolist(), enc[0, 2].abs().sum().item()
        ([0.0, 1.0, 0.0, 1.0], 0.0)
    """
    n = mask.shape[1]
    counts = mask.sum(1, keepdim=True).clamp_min(1).to(dtype)
    ratio = torch.arange(n, device=mask.device, dtype=dtype).unsqueeze(0) / counts  # [B, N]
    channel = torch.arange(dim, device=mask.device)
    even = channel % 2 == 0
    exponent = torch.where(even, 2 * channel, 2 * channel - 1).to(dtype) / dim
    angles = ratio.unsqueeze(-1) / torch.pow(torch.tensor(10000.0, dtype=dtype), exponent)
    encoding = torch.where(even, angles.sin(), angles.cos())
    return encoding * mask.unsqueeze(-1).to(dtype)


class OfficialTFS(nn.Module):
    """The released TFS data flow with padding masked (see the module docstring).

    Args:
        in_dim: patch feature size D (a ``Linear(D → dim)`` first when D ≠ dim).
        dim: model width (released: 512).
        heads: attention heads of both branches (released: dim // 64).
        position: ``"index"`` (released: patch index / count) or ``"grid"`` (fivewsi's 2-D).

    Example:
        >>> import torch
        >>> tfs = OfficialTFS(8, dim=16, heads=2).eval()
        >>> with torch.no_grad():
        ...     out = tfs(BagBatch.from_bags([torch.randn(40, 8)]), torch.randn(3, 16))
        >>> round(float(out.patch_attention.sum()), 4)
        1.0
    """

    def __init__(
        self, in_dim: int, dim: int = 512, *, heads: int = 8, position: PositionMode = "index"
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if position not in ("index", "grid"):
            raise ValueError(f"position must be 'index' or 'grid', got {position!r}")
        self.in_dim, self.dim, self.heads, self.position = int(in_dim), int(dim), heads, position
        self.input: nn.Module = nn.Identity() if in_dim == dim else nn.Linear(in_dim, dim)
        # (i) instance branch: pre-norm self-attention and MLP sublayers, then an outer residual.
        self.self_norm = nn.LayerNorm(dim)
        self.self_qkv = nn.Linear(dim, 3 * dim)
        self.self_out = nn.Linear(dim, dim)
        self.self_mlp_norm = nn.LayerNorm(dim)
        self.self_mlp = _mlp(dim)
        # (ii) prompt branch: layer-normed prompts read the layer-normed tokens, then an MLP.
        self.prompt_norm = nn.LayerNorm(dim)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_q = nn.Linear(dim, dim)
        self.cross_kv = nn.Linear(dim, 2 * dim)
        self.cross_out = nn.Linear(dim, dim)
        self.prompt_mlp_norm = nn.LayerNorm(dim)
        self.prompt_mlp = _mlp(dim)
        self.fuse = nn.Linear(2 * dim, dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """As released: attention in-projections Xavier-uniform over the stacked q/k/v matrix,
        other Linear weights of the branches truncated normal (sd 0.02), biases zero."""
        with torch.no_grad():
            nn.init.xavier_uniform_(self.self_qkv.weight)
            stacked = nn.init.xavier_uniform_(torch.empty(3 * self.dim, self.dim))
            self.cross_q.weight.copy_(stacked[: self.dim])
            self.cross_kv.weight.copy_(stacked[self.dim :])
            branch_linears = [self.self_out, self.cross_out, *self.self_mlp, *self.prompt_mlp]
            for layer in branch_linears:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.02)
            for layer in (self.self_qkv, self.cross_q, self.cross_kv, *branch_linears):
                if isinstance(layer, nn.Linear):
                    nn.init.zeros_(layer.bias)

    def _heads(self, t: Tensor) -> Tensor:
        """``[B, n, dim]`` → ``[B, H, n, hd]``."""
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def _merge(self, t: Tensor) -> Tensor:
        """``[B, H, n, hd]`` → ``[B, n, dim]``."""
        b, _, n, _ = t.shape
        return t.transpose(1, 2).reshape(b, n, self.dim)

    def _positions(self, batch: BagBatch, mask: Tensor, dtype: torch.dtype) -> Tensor:
        if self.position == "grid":
            return grid_position_encoding(batch.coords.to(dtype), mask, self.dim)
        return index_position_encoding(mask, self.dim, dtype)

    def forward(
        self, batch: BagBatch, prompts: Tensor, prompt_mask: Tensor | None = None
    ) -> TFSOutput:
        """Aggregate ``batch`` guided by ``prompts`` ([P, dim] shared, or [B, P, dim]).

        ``prompt_mask`` ([P] or [B, P] bool, True = keep) drops prompts from the mean over
        prompts and from ``patch_attention`` (prompts do not interact, so this equals the
        released way of removing them from the prompt list).
        """
        features, mask = batch.features, batch.mask.bool()
        b, n, _ = features.shape
        if n == 0 or not bool(mask.any(1).all()):
            raise ValueError("every bag in the batch needs at least one patch")
        real = mask.unsqueeze(-1).to(features.dtype)
        x = self.input(features) * real
        pos = self._positions(batch, mask, x.dtype)
        key_mask = None if bool(mask.all()) else mask[:, None, None, :]

        # (i) instance branch
        h = x + pos
        q, k, v = self.self_qkv(self.self_norm(h)).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=key_mask
        )
        h = h + self.self_out(self._merge(attended))
        h = h + self.self_mlp(self.self_mlp_norm(h))
        tokens = h + x
        instance = (tokens * real).sum(1) / real.sum(1)

        # (ii) prompt branch over the tokens after self-attention, position added again
        queries = prompts.unsqueeze(0).expand(b, -1, -1) if prompts.dim() == 2 else prompts
        n_prompts = queries.shape[1]
        keys, values = self.cross_kv(self.cross_norm(tokens + pos)).chunk(2, dim=-1)
        qh = self._heads(self.cross_q(self.prompt_norm(queries)))
        scores = qh @ self._heads(keys).transpose(-1, -2) / math.sqrt(self.dim // self.heads)
        weights = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        attended = self.cross_out(self._merge(weights @ self._heads(values)))
        prompt_tokens = self.prompt_mlp(self.prompt_mlp_norm(attended))
        prompt_attention = weights.mean(1)  # [B, P, N], zeros at padding

        keep = TFSAggregator._keep(prompt_mask, b, n_prompts, queries.device)
        keep_w = keep.unsqueeze(-1).to(prompt_tokens.dtype)
        pooled = (prompt_tokens * keep_w).sum(1) / keep_w.sum(1)
        patch_attention = (prompt_attention * keep_w).sum(1) / keep_w.sum(1)
        embedding = self.fuse(torch.cat([pooled, instance], dim=-1))
        return TFSOutput(embedding, prompt_tokens, prompt_attention, patch_attention)


class FiveOfficialOptions(TextAlignedOptions):
    """``five-official``'s options, with the released defaults (width 512, 8 heads = 512 / 64,
    16 learnable prompts, a fixed logit scale of 300, the released index positions).

    Attributes:
        dim, heads, n_learnable_prompts: as in :class:`~fivewsi.model.five.FiveOptions`.
        logit_scale: fixed 300 as released; None → learnable (CLIP init, capped at 100).
        position: ``"index"`` (released) or ``"grid"`` (fivewsi's 2-D grid encoding).
        text_encoder, lora, lora_r, lora_alpha, lora_dropout: as in ``FiveOptions``.
    """

    logit_scale: float | None = Field(RELEASED_LOGIT_SCALE, gt=0)
    position: PositionMode = "index"


@register_model(
    "five-official",
    options=FiveOfficialOptions,
    description="FiVE with the released TFS module (patch_fusion.py data flow, padding masked, "
    "no dropout, fixed logit scale 300); slides scored by similarity to texts",
)
class FiveOfficialModel(FiveModel):
    """FiVE (text encoder, projection, prompts, scoring shared with ``five``) whose aggregator
    is :class:`OfficialTFS`.

    Example:
        >>> import torch
        >>> model = FiveOfficialModel(64, ["Differentiation?"], TextEncoder(), dim=32, heads=4)
        >>> out = model.eval()(BagBatch.from_bags([torch.randn(50, 64)]))
        >>> type(model.aggregator).__name__, out.embedding.shape
        ('OfficialTFS', torch.Size([1, 32]))
    """

    def __init__(
        self,
        in_dim: int,
        questions: list[str],
        text_encoder: TextEncoder,
        *,
        dim: int = 512,
        n_learnable_prompts: int = 16,
        heads: int = 8,
        logit_scale: float | None = RELEASED_LOGIT_SCALE,
        position: PositionMode = "index",
    ) -> None:
        super().__init__(
            in_dim, questions, text_encoder, dim=dim, n_learnable_prompts=n_learnable_prompts,
            heads=heads, dropout=0.0, attention="full", logit_scale=logit_scale,
        )
        self.aggregator = OfficialTFS(in_dim, dim, heads=heads, position=position)  # type: ignore[assignment]
