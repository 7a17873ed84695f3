"""FiVE's TFS aggregator: patch self-attention and prompt cross-attention, fused into a slide.

Patch features are projected to the model width and given the position of their patch on the
slide's grid (2-D sinusoids of the grid x and y). Two branches then read the bag:

(i) instance branch: self-attention over the patches (with a residual), then the masked mean
    over patches;
(ii) prompt branch: the prompts (question texts and learnable prompts, ``[P, dim]``) attend over
    the patches (padding masked), then an MLP with a residual; the per-prompt attention maps are
    kept (averaged over heads) and the prompt outputs are averaged over the kept prompts.

The two ``dim`` vectors are concatenated and projected back to ``dim``, the slide embedding.

Self-attention comes in two modes. ``"full"`` is the paper's: every patch attends to every
patch, quadratic in the number of patches N. ``"local"`` (the default) orders the patches along
a Morton (Z-order) curve of their grid coordinates and attends within blocks of ``block_size``
spatially close patches; half of the heads use blocks shifted by half a block (within each
bag's own length) so neighbouring blocks exchange information. Its cost is linear in N, and it
is exactly full attention when a bag fits in one block. Local mode also runs chunk by chunk
(``chunk_size`` patches plus half a block either side), recomputing each chunk in the backward
pass, so its memory is flat in N in training as well as inference.

Example:
    >>> import torch
    >>> from fivewsi.model.outputs import BagBatch
    >>> batch = BagBatch.from_bags([torch.randn(30, 16), torch.randn(20, 16)])
    >>> tfs = TFSAggregator(16, dim=32, heads=4).eval()
    >>> out = tfs(batch, torch.randn(5, 32))
    >>> out.embedding.shape, out.prompt_attention.shape, out.patch_attention.shape
    (torch.Size([2, 32]), torch.Size([2, 5, 30]), torch.Size([2, 30]))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fivewsi.model.outputs import BagBatch

logger = logging.getLogger(__name__)

AttentionMode = Literal["local", "full"]
ATTENTION_MODES = ("local", "full")

#: Default patches per local-attention block (chosen by benchmarks/bench_aggregator.py).
DEFAULT_BLOCK_SIZE = 256
#: Default patches per chunk of the local pass (memory per chunk, recomputed when training).
DEFAULT_CHUNK_SIZE = 4096
#: Above this many patches per batch, local mode recomputes chunks in backward (training).
DEFAULT_CHECKPOINT_PATCHES = 16384
_MORTON_BITS = 16  # grid coordinates up to 65 535 patches per side


@dataclass
class TFSOutput:
    """What :class:`TFSAggregator` returns (``embedding`` is not normalised here)."""

    embedding: Tensor  # [B, dim]
    prompt_tokens: Tensor  # [B, P, dim]
    prompt_attention: Tensor  # [B, P, N], zeros at padding
    patch_attention: Tensor  # [B, N], mean over kept prompts; sums to 1 over real patches


def bag_origin(coords: Tensor, mask: Tensor) -> Tensor:
    """``[B, 1, 2]`` top-left corner (min x, min y) of each bag's real patches."""
    big = torch.finfo(coords.dtype).max
    origin = coords.masked_fill(~mask.unsqueeze(-1), big).amin(dim=1, keepdim=True)
    return origin.clamp_max(big / 2)


def grid_position_encoding(
    coords: Tensor, mask: Tensor, dim: int, origin: Tensor | None = None
) -> Tensor:
    """``[B, N, dim]`` 2-D sinusoidal encoding of patch grid positions (zeros at padding).

    Half the channels encode x, half y (sin and cos over geometric frequencies, as in the
    Transformer). Positions are taken relative to each bag's top-left real patch (``origin``,
    by default from ``coords`` themselves), so a slide shifted on its canvas encodes the same.

    Example:
        >>> enc = grid_position_encoding(torch.tensor([[[3.0, 4.0], [4.0, 4.0]]]),
        ...                              torch.tensor([[True, True]]), 8)
        >>> enc.shape, bool(enc[0, 0, 0] == 0.0)
        (torch.Size([1, 2, 8]), True)
    """
    if dim % 4:
        raise ValueError(f"position encoding needs dim divisible by 4, got {dim}")
    origin = bag_origin(coords, mask) if origin is None else origin
    relative = (coords - origin).masked_fill(~mask.unsqueeze(-1), 0.0)
    quarter = dim // 4
    freqs = torch.exp(
        -math.log(10000.0) * torch.arange(quarter, device=coords.device, dtype=coords.dtype)
        / quarter
    )
    angles = relative.unsqueeze(-1) * freqs  # [B, N, 2, quarter]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(2)  # [B, N, dim]
    return encoding * mask.unsqueeze(-1).to(encoding.dtype)


def morton_order(coords: Tensor, mask: Tensor) -> Tensor:
    """``[B, N]`` patch indices sorting each bag along a Z-order curve, padding last.

    Example:
        >>> xy = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
        >>> morton_order(xy, torch.ones(1, 4, dtype=torch.bool)).tolist()
        [[1, 2, 3, 0]]
    """
    grid = (coords - bag_origin(coords, mask)).round().clamp(0, 2**_MORTON_BITS - 1).long()
    x, y = grid[..., 0], grid[..., 1]
    code = torch.zeros_like(x)
    for bit in range(_MORTON_BITS):
        code |= ((x >> bit) & 1) << (2 * bit)
        code |= ((y >> bit) & 1) << (2 * bit + 1)
    code = code.masked_fill(~mask, torch.iinfo(torch.long).max)
    return torch.argsort(code, dim=1, stable=True)


class PatchSelfAttention(nn.Module):
    """Multi-head self-attention over patches: ``full`` or block-``local`` (on a window).

    Both return the attention output before the residual. Local attention works on a *window*
    of Morton-ordered tokens: the chunk's own ``C`` positions plus half a block on each side
    (``halo``); plain heads attend within the chunk's blocks, shifted heads (the other half,
    when ``shift``) within blocks offset by half a block, which the halo completes.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        shift: bool = True,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if block_size < 2 or block_size % 2:
            raise ValueError(f"block_size must be even and at least 2, got {block_size}")
        self.dim, self.heads = dim, heads
        self.block_size = int(block_size)
        self.shift = bool(shift) and heads >= 2
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    @property
    def halo(self) -> int:
        """Positions a chunk's window reaches beyond it on each side (shifted heads)."""
        return self.block_size // 2 if self.shift else 0

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, N, hd]
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        b, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, self.dim))

    def full(self, x: Tensor, mask: Tensor) -> Tensor:
        """Every patch attends to every real patch; ``x`` [B, N, dim] → [B, N, dim]."""
        q, k, v = self._qkv(x)
        # No mask when nothing is padded (batch size 1): SDPA then takes its fastest path.
        key_mask = None if bool(mask.all()) else mask[:, None, None, :]
        return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask))

    def window(self, x: Tensor, plain_keys: Tensor, shifted_keys: Tensor, halo: int) -> Tensor:
        """Local attention of a window ``x`` [B, C + 2·halo, dim] → the chunk's [B, C, dim].

        ``plain_keys`` [B, C] marks real patches among the chunk's own positions;
        ``shifted_keys`` [B, C + 2·halo] among the window's (shifted heads' keys). ``halo`` 0
        means the chunk is a single block for every bag: all heads attend within it.
        """
        q, k, v = self._qkv(x)
        h, c = halo, x.shape[1] - 2 * halo
        if not self.shift or halo == 0:
            return self._merge(_block_attention(q, k, v, plain_keys, self.block_size))
        half = self.heads // 2
        own = slice(h, h + c)
        plain = _block_attention(
            q[:, :half, own], k[:, :half, own], v[:, :half, own], plain_keys, self.block_size
        )
        shifted = _block_attention(
            q[:, half:], k[:, half:], v[:, half:], shifted_keys, self.block_size
        )
        return self._merge(torch.cat([plain, shifted[:, :, own]], dim=1))


def _block_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor, size: int) -> Tensor:
    """Attention within consecutive blocks of ``size`` positions; ``[B, h, n, hd]``, n % size = 0
    or n < size (one block)."""
    b, h, n, d = q.shape
    size = min(size, n)
    n_blocks = n // size

    def split(t: Tensor) -> Tensor:  # [B, h, nb*S, d] -> [B*nb, h, S, d]
        return t.reshape(b, h, n_blocks, size, d).transpose(1, 2).reshape(-1, h, size, d)

    block_keys = keys.reshape(b * n_blocks, size)
    # A block of padding only would attend to nothing (NaN); let it see itself, then drop it.
    block_keys = block_keys | ~block_keys.any(1, keepdim=True)
    key_mask = None if bool(block_keys.all()) else block_keys[:, None, None, :]
    y = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=key_mask)
    return y.reshape(b, n_blocks, h, size, d).transpose(1, 2).reshape(b, h, n, d)




class TFSAggregator(nn.Module):
    """FiVE's Text-guided Feature Selection aggregator (see the module docstring).

    Args:
        in_dim: patch feature size D.
        dim: model width (the joint space of slides and texts).
        heads: attention heads of both branches.
        dropout: dropout after the input projection, on the branch outputs, on the prompt
            attention weights and in the MLP. Not on the patch self-attention weights: that
            would make SDPA materialise every block's (or, full, the whole N×N) attention
            matrix in training instead of using its fused kernel.
        attention: ``"local"`` (default, linear in N) or ``"full"`` (the paper's).
        block_size: patches per local block (local mode; even).
        shift: local mode, half the heads on half-block-shifted blocks.
        chunk_size: local mode, patches processed at a time (rounded up to whole blocks).
        checkpoint_patches: local mode with gradients on, batches of more patches than this
            (B·N) recompute each chunk in the backward pass (activation checkpointing), so
            training memory stays flat in N; smaller ones keep their activations (faster).
        query_norm: layer-normalise the prompts before the query projection, as the released
            module does (queries of norm ≈ √dim instead of 1); FiVE's option ``query_norm``,
            recorded in the run. Measured on a development cohort it did not make the prompts select
            (``docs/model.md``), so it is off and FiVE's weights and numerics are unchanged.

    Example:
        >>> import torch
        >>> batch = BagBatch.from_bags([torch.randn(40, 8)])
        >>> tfs = TFSAggregator(8, dim=16, heads=2, attention="full").eval()
        >>> with torch.no_grad():
        ...     out = tfs(batch, torch.randn(3, 16))
        >>> round(float(out.patch_attention.sum()), 4)
        1.0
    """

    def __init__(
        self,
        in_dim: int,
        dim: int = 512,
        *,
        heads: int = 8,
        dropout: float = 0.1,
        attention: AttentionMode = "local",
        block_size: int = DEFAULT_BLOCK_SIZE,
        shift: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        checkpoint_patches: int = DEFAULT_CHECKPOINT_PATCHES,
        query_norm: bool = False,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.in_dim, self.dim, self.heads, self.attention = int(in_dim), int(dim), heads, attention
        self.input = nn.Sequential(
            nn.Linear(in_dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Dropout(dropout)
        )
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = PatchSelfAttention(
            dim, heads, block_size=block_size, shift=shift
        )
        self.self_drop = nn.Dropout(dropout)
        self.cross_norm = nn.LayerNorm(dim)
        # Queries layer-normed as in the released module (norm ≈ √dim, like the keys').
        self.query_norm = nn.LayerNorm(dim) if query_norm else None
        self.cross_q = nn.Linear(dim, dim)
        self.cross_k = nn.Linear(dim, dim)
        self.cross_v = nn.Linear(dim, dim)
        self.cross_out = nn.Linear(dim, dim)
        self.cross_attn_drop = nn.Dropout(dropout)
        self.cross_drop = nn.Dropout(dropout)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )
        self.fuse = nn.Linear(2 * dim, dim)
        block = self.self_attn.block_size
        self.chunk_size = max(block, -(-int(chunk_size) // block) * block)
        self.checkpoint_patches = int(checkpoint_patches)

    def forward(
        self, batch: BagBatch, prompts: Tensor, prompt_mask: Tensor | None = None
    ) -> TFSOutput:
        """Aggregate ``batch`` guided by ``prompts`` ([P, dim] shared, or [B, P, dim]).

        ``prompt_mask`` ([P] or [B, P] bool, True = keep) drops prompts from the mean over
        prompts and from ``patch_attention``; their own outputs are still computed.
        """
        features, coords, mask = batch.features, batch.coords.to(batch.features.dtype), batch.mask
        mask = mask.bool()
        b, n, _ = features.shape
        if n == 0 or not bool(mask.any(1).all()):
            raise ValueError("every bag in the batch needs at least one patch")
        queries = prompts.unsqueeze(0).expand(b, -1, -1) if prompts.dim() == 2 else prompts
        n_prompts = queries.shape[1]
        head_dim = self.dim // self.heads
        normed = queries if self.query_norm is None else self.query_norm(queries)
        q = self.cross_q(normed).view(b, n_prompts, self.heads, head_dim).transpose(1, 2)
        origin = bag_origin(coords, mask)
        counts = mask.sum(1)

        order = None
        if self.attention == "local":
            # Morton order: spatial neighbours are neighbours in the sequence (and in blocks).
            order = morton_order(coords, mask)
            features = features.gather(1, order.unsqueeze(-1).expand_as(features))
            coords = coords.gather(1, order.unsqueeze(-1).expand_as(coords))
            mask = mask.gather(1, order)
        recompute = (
            self.attention == "local"
            and torch.is_grad_enabled()
            and b * n > self.checkpoint_patches
        )
        # Tokens computed once and shared by both branches, unless chunks are recomputed.
        x = None if recompute else self._embed(features, coords, mask, origin)
        if self.attention == "local":
            instance_sum, scores = self._local_pass(features, coords, origin, counts, q, x)
        else:
            assert x is not None
            instance_sum, scores = self._full_pass(x, mask, q)
        instance = instance_sum / counts.unsqueeze(-1).to(instance_sum.dtype)

        # (ii) prompt branch: softmax over all patches, then values chunk by chunk.
        weights = scores.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
        dropped = self.cross_attn_drop(weights)
        if x is None:
            attended = self._values(dropped, features, coords, mask, origin)
        else:
            attended = dropped @ self._heads(self.cross_v(self.cross_norm(x)))  # [B, H, P, hd]
        attended = self.cross_out(attended.transpose(1, 2).reshape(b, n_prompts, self.dim))
        prompt_tokens = queries + self.cross_drop(attended)
        prompt_tokens = prompt_tokens + self.mlp(self.mlp_norm(prompt_tokens))
        prompt_attention = weights.mean(1)  # [B, P, N] in the working order
        if order is not None:  # back to the bag's own patch order
            prompt_attention = torch.zeros_like(prompt_attention).scatter(
                2, order.unsqueeze(1).expand_as(prompt_attention), prompt_attention
            )
        keep = self._keep(prompt_mask, b, n_prompts, queries.device)
        keep_w = keep.unsqueeze(-1).to(prompt_tokens.dtype)
        pooled = (prompt_tokens * keep_w).sum(1) / keep_w.sum(1)
        patch_attention = (prompt_attention * keep_w).sum(1) / keep_w.sum(1)

        embedding = self.fuse(torch.cat([instance, pooled], dim=-1))
        return TFSOutput(embedding, prompt_tokens, prompt_attention, patch_attention)

    def _embed(self, features: Tensor, coords: Tensor, valid: Tensor, origin: Tensor) -> Tensor:
        """Projected patch tokens with their grid position added."""
        return self.input(features) + grid_position_encoding(coords, valid, self.dim, origin)

    def _heads(self, t: Tensor) -> Tensor:
        """``[B, n, dim]`` → ``[B, H, n, hd]``."""
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def _scores(self, x: Tensor, q: Tensor) -> Tensor:
        """Prompt-to-patch attention logits ``[B, H, P, n]`` of tokens ``x``."""
        k = self._heads(self.cross_k(self.cross_norm(x)))
        return (q @ k.transpose(-1, -2)) / math.sqrt(self.dim // self.heads)

    def _full_pass(self, x: Tensor, mask: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        """(i) with full self-attention: summed instance tokens [B, dim], prompt scores."""
        tokens = x + self.self_drop(self.self_attn.full(self.self_norm(x), mask))
        instance_sum = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1)
        return instance_sum, self._scores(x, q)

    def _chunks(self, n: int) -> tuple[int, int, int]:
        """(block, chunk, padded length) for a local pass over ``n`` Morton-ordered positions."""
        block = self.self_attn.block_size
        if n <= block:  # one block for every bag: plain attention over all, no halo needed
            return n, n, n
        length = -(-n // block) * block
        chunk = min(self.chunk_size, length)
        return block, chunk, -(-length // chunk) * chunk

    def _local_pass(
        self,
        features: Tensor,
        coords: Tensor,
        origin: Tensor,
        counts: Tensor,
        q: Tensor,
        x: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """(i) with local self-attention, chunk by chunk; also the prompt scores per patch.

        Shifted heads roll each bag within its own padded length ``ceil(n_i / block) · block``
        (so a bag's blocks never depend on the batch's padding, and a bag within one block sees
        itself whole); a chunk's window reads the rolled neighbours through a modulo index.
        With ``x`` None, each chunk embeds its patches itself and is recomputed in backward.
        """
        n = features.shape[1]
        block, chunk, padded = self._chunks(n)
        halo = self.self_attn.halo if block < padded else 0
        own_len = ((counts + block - 1) // block * block).clamp_min(1).unsqueeze(1)  # [B, 1]
        sums, scores = [], []
        for start in range(0, padded, chunk):
            window = torch.arange(start - halo, start + chunk + halo, device=features.device)
            args = (features, coords, origin, counts, own_len, q, window, halo, x)
            if x is None:
                part = checkpoint(self._local_chunk, *args, use_reentrant=False)
            else:
                part = self._local_chunk(*args)
            sums.append(part[0])
            scores.append(part[1])
        return torch.stack(sums).sum(0), torch.cat(scores, dim=-1)[..., :n]

    def _local_chunk(
        self,
        features: Tensor,
        coords: Tensor,
        origin: Tensor,
        counts: Tensor,
        own_len: Tensor,
        q: Tensor,
        window: Tensor,
        halo: int,
        tokens: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """One chunk: summed instance tokens of its real patches [B, dim], prompt scores."""
        n = features.shape[1]
        unwrapped = window.unsqueeze(0)  # [1, W] positions, may run past either end
        rolled = torch.remainder(unwrapped, own_len)  # [B, W] shifted heads' view of the bag
        index = rolled.clamp_max(n - 1)
        shifted_keys = rolled < counts.unsqueeze(1)
        own = slice(halo, window.numel() - halo)
        plain_keys = (unwrapped[:, own] < counts.unsqueeze(1)) & (unwrapped[:, own] >= 0)
        if tokens is not None:
            x = tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[2]))
        else:
            x = self._embed(
                features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.shape[2])),
                coords.gather(1, index.unsqueeze(-1).expand(-1, -1, 2)),
                shifted_keys,
                origin,
            )
        attended = self.self_attn.window(self.self_norm(x), plain_keys, shifted_keys, halo)
        out = x[:, own] + self.self_drop(attended)
        instance_sum = (out * plain_keys.unsqueeze(-1).to(out.dtype)).sum(1)
        return instance_sum, self._scores(x[:, own], q)

    def _values(
        self, weights: Tensor, features: Tensor, coords: Tensor, mask: Tensor, origin: Tensor
    ) -> Tensor:
        """``weights @ values`` over all patches, chunk by chunk, recomputed in backward."""
        n = features.shape[1]
        chunk = self._chunks(n)[1]
        total = None
        for start in range(0, n, chunk):
            part = slice(start, min(start + chunk, n))
            args = (weights[..., part], features[:, part], coords[:, part], mask[:, part], origin)
            out = checkpoint(self._values_chunk, *args, use_reentrant=False)
            total = out if total is None else total + out
        assert total is not None
        return total

    def _values_chunk(
        self, weights: Tensor, features: Tensor, coords: Tensor, mask: Tensor, origin: Tensor
    ) -> Tensor:
        # Tokens are recomputed here rather than kept from the scores pass (memory flat in N);
        # in training the input dropout therefore draws its own mask for the values.
        x = self._embed(features, coords, mask, origin)
        return weights @ self._heads(self.cross_v(self.cross_norm(x)))  # [B, H, P, hd]

    @staticmethod
    def _keep(prompt_mask: Tensor | None, b: int, n_prompts: int, device: torch.device) -> Tensor:
        if prompt_mask is None:
            return torch.ones(b, n_prompts, dtype=torch.bool, device=device)
        keep = prompt_mask.to(device=device, dtype=torch.bool)
        keep = keep.unsqueeze(0).expand(b, -1) if keep.dim() == 1 else keep
        if keep.shape != (b, n_prompts):
            raise ValueError(f"prompt_mask shape {tuple(prompt_mask.shape)} != ({n_prompts},)")
        if not bool(keep.any(1).all()):
            raise ValueError("prompt_mask must keep at least one prompt")
        return keep
