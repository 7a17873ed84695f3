"""Label-only multiple-instance-learning (MIL) baselines that FiVE is compared against.

Each baseline turns a padded :class:`~fivewsi.model.outputs.BagBatch` of patch features into class
logits with a linear head over class indices (a :class:`~fivewsi.model.interfaces.LabelModel`).
All of them:

* declare their options as a pydantic model next to their class (defaults = training defaults)
  and are built as ``create_model(name, in_dim=..., n_classes=..., **options)``;
* take ``forward(batch, labels=None)`` and return an :class:`AggregatorOutput` with ``logits``
  ``[B, C]``, ``embedding`` ``[B, E]`` and ``patch_attention`` ``[B, N]`` (sums to 1 over a bag's
  real patches, exactly 0 on padding);
* handle bags of different sizes through ``batch.mask``: padding never changes a bag's output;
* return ``aux_loss`` only when ``labels`` are given and the model has an auxiliary objective
  (``dsmil``, ``clam-sb``). The trainer's loss is ``cross_entropy(logits, labels) + aux_loss``;
  each model scales its ``aux_loss`` so that this sum reproduces the published loss balance up to
  a constant factor (see :class:`DSMIL` and :class:`CLAMSB`).

Models:

``mean`` / ``max``
    Linear(in_dim, dim) + ReLU + dropout on each patch, masked mean / max pooling over patches,
    Linear(dim, C).
``abmil``
    Gated attention MIL. Ilse, Tomczak & Welling, "Attention-based deep multiple instance
    learning", ICML 2018. Layer sizes as in CLAM's ``Attn_Net_Gated`` (in_dim → 512 → 256).
``dsmil``
    Dual-stream MIL. Li, Li & Eliceiri, "Dual-stream multiple instance learning network for whole
    slide image classification with self-supervised contrastive learning", CVPR 2021.
``transmil``
    Shao et al., "TransMIL: Transformer based correlated multiple instance learning for whole
    slide image classification", NeurIPS 2021, with Nyström attention from Xiong et al.,
    "Nyströmformer", AAAI 2021.
``clam-sb``
    Single-branch CLAM. Lu et al., "Data-efficient and weakly supervised computational pathology
    on whole-slide images", Nature Biomedical Engineering 2021.

Example:
    >>> import torch
    >>> from fivewsi.model.outputs import BagBatch
    >>> _ = torch.manual_seed(0)
    >>> model = ABMIL(in_dim=16, n_classes=3, dim=32).eval()
    >>> batch = BagBatch.from_bags([torch.randn(5, 16), torch.randn(9, 16)])
    >>> with torch.no_grad():
    ...     out = model(batch)
    >>> out.logits.shape, out.embedding.shape, out.patch_attention.shape
    (torch.Size([2, 3]), torch.Size([2, 32]), torch.Size([2, 9]))
    >>> round(float(out.patch_attention[0].sum()), 4), float(out.patch_attention[0, 5:].sum())
    (1.0, 0.0)
"""

from __future__ import annotations

import abc
import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from fivewsi.model.interfaces import LabelModel
from fivewsi.model.outputs import AggregatorOutput, BagBatch
from fivewsi.model.registry import ModelOptions, register_model

logger = logging.getLogger(__name__)

__all__ = [
    "ABMIL",
    "CLAMSB",
    "DSMIL",
    "MILClassifier",
    "MaxMIL",
    "MeanMIL",
    "NystromAttention",
    "TransMIL",
    "masked_softmax",
    "moore_penrose_pinv",
]

class PooledOptions(ModelOptions):
    """Options of ``mean`` and ``max``: hidden size and dropout of the per-patch MLP."""

    dim: int = Field(512, ge=1)
    dropout: float = Field(0.25, ge=0, lt=1)


class ABMILOptions(PooledOptions):
    """Options of ``abmil``: :class:`PooledOptions` and the gated attention's width."""

    attention_dim: int = Field(256, ge=1)


class DSMILOptions(ModelOptions):
    """Options of ``dsmil`` (see :class:`DSMIL`); training adds the per-patch MLP (dim 512)."""

    dim: int | None = Field(512, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    query_dim: int = Field(128, ge=1)
    nonlinear: bool = True
    passing_v: bool = False


class TransMILOptions(ModelOptions):
    """Options of ``transmil`` (see :class:`TransMIL`)."""

    dim: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    heads: int = Field(8, ge=1)
    num_landmarks: int | None = Field(None, ge=1)
    pinv_iterations: int = Field(6, ge=1)
    residual_kernel: int = Field(33, ge=1)


class CLAMSBOptions(ABMILOptions):
    """Options of ``clam-sb`` (see :class:`CLAMSB`)."""

    k_sample: int = Field(8, ge=1)
    bag_weight: float = Field(0.7, gt=0, le=1)
    subtyping: bool = True
    instance_loss: Literal["ce", "svm"] = "ce"


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` restricted to ``mask``; exactly 0 where masked.

    Example:
        >>> masked_softmax(torch.zeros(1, 3), torch.tensor([[True, True, False]]))
        tensor([[0.5000, 0.5000, 0.0000]])
    """
    filled = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(filled, dim=dim).masked_fill(~mask, 0.0)


def moore_penrose_pinv(x: Tensor, iterations: int = 6) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of the last two dims (Razavi et al. 2014).

    The initialisation ``Z0 = Xᵀ / (‖X‖₁ ‖X‖∞)`` and the cubic update are those of the
    Nyströmformer; 6 iterations are enough for softmax matrices.

    Example:
        >>> a = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
        >>> bool(torch.allclose(moore_penrose_pinv(a, 12) @ a, torch.eye(2), atol=1e-4))
        True
    """
    abs_x = x.abs()
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (col.max() * row.max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def _check_batch(batch: BagBatch, in_dim: int) -> None:
    if batch.features.ndim != 3 or batch.features.shape[-1] != in_dim:
        raise ValueError(
            f"expected features [B, N, {in_dim}], got {tuple(batch.features.shape)}"
        )
    if batch.mask.shape != batch.features.shape[:2]:
        raise ValueError(
            f"mask {tuple(batch.mask.shape)} does not match features "
            f"{tuple(batch.features.shape[:2])}"
        )
    empty = (~batch.mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        ids = [batch.slide_ids[i] if i < len(batch.slide_ids) else str(i) for i in empty]
        raise ValueError(f"bags without patches: {', '.join(ids)}")


def _patch_mlp(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))


class MILClassifier(LabelModel):
    """Common base of the label-only baselines: a bag → class-logits model.

    Subclasses implement :meth:`forward`. ``in_dim`` is the patch feature size, ``n_classes`` the
    number of classes (≥ 2); ``dim`` and ``dropout`` are the hidden size and dropout rate.
    """

    def __init__(self, in_dim: int, n_classes: int, *, dim: int = 512, dropout: float = 0.25):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be positive, got {in_dim}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim = int(in_dim)
        self.n_classes = int(n_classes)
        self.dim = int(dim)
        self.dropout_rate = float(dropout)

    @abc.abstractmethod
    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        """Class logits, slide embedding and patch attention of each bag in ``batch``;
        ``aux_loss`` too when ``labels`` ``[B]`` (class indices) are given and the model has an
        auxiliary objective."""


class GatedAttention(nn.Module):
    """Gated attention scores ``w · (tanh(V h) ⊙ sigmoid(U h))`` (Ilse et al. 2018).

    Same layout as CLAM's ``Attn_Net_Gated``: two ``dim → attention_dim`` branches with dropout,
    one linear score per patch.
    """

    def __init__(self, dim: int, attention_dim: int, dropout: float):
        super().__init__()
        self.attention_a = nn.Sequential(
            nn.Linear(dim, attention_dim), nn.Tanh(), nn.Dropout(dropout)
        )
        self.attention_b = nn.Sequential(
            nn.Linear(dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout)
        )
        self.attention_c = nn.Linear(attention_dim, 1)

    def forward(self, h: Tensor) -> Tensor:
        """``[..., N, dim]`` → raw scores ``[..., N]``."""
        return self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)


class _PooledMIL(MILClassifier):
    """Per-patch MLP, a fixed pooling over patches (:meth:`pool`), linear classifier."""

    def __init__(self, in_dim: int, n_classes: int, *, dim: int = 512, dropout: float = 0.25):
        super().__init__(in_dim, n_classes, dim=dim, dropout=dropout)
        self.fc = _patch_mlp(in_dim, dim, dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, dim]`` slide embedding and ``[B, N]`` patch attention of patch features ``h``."""
        raise NotImplementedError

    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        _check_batch(batch, self.in_dim)
        pooled, attention = self.pool(self.fc(batch.features), batch.mask)
        return AggregatorOutput(
            embedding=pooled, logits=self.classifier(pooled), patch_attention=attention
        )


@register_model(
    "mean",
    options=PooledOptions,
    description="Mean pooling of per-patch MLP features, linear classifier.",
)
class MeanMIL(_PooledMIL):
    """Linear + ReLU + dropout per patch, masked mean over patches, linear classifier.

    ``patch_attention`` is uniform over a bag's real patches.
    """

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = mask.float() / mask.sum(dim=1, keepdim=True).float()
        return torch.einsum("bn,bnd->bd", weights, h), weights


@register_model(
    "max",
    options=PooledOptions,
    description="Max pooling of per-patch MLP features, linear classifier.",
)
class MaxMIL(_PooledMIL):
    """Linear + ReLU + dropout per patch, masked max over patches, linear classifier.

    ``patch_attention`` of a patch is its share of the argmax positions over the ``dim`` feature
    dims (a dim whose maximum is tied between patches is split evenly between them).
    """

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = h.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        pooled = h.max(dim=1).values
        with torch.no_grad():
            is_max = (h == pooled.unsqueeze(1)) & mask.unsqueeze(-1)  # [B, N, dim]
            share = is_max.float() / is_max.sum(dim=1, keepdim=True).float()
        return pooled, share.mean(dim=-1)


@register_model(
    "abmil",
    options=ABMILOptions,
    description="Gated attention MIL (Ilse et al., ICML 2018).",
)
class ABMIL(MILClassifier):
    """Gated attention MIL (Ilse et al. 2018).

    Patch features go through Linear(in_dim, dim) + ReLU + dropout; gated attention
    (``dim → attention_dim → 1``) gives one score per patch; the softmax over a bag's patches
    weights their features into the slide embedding; Linear(dim, C) classifies it.
    ``patch_attention`` is that softmax.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
    ):
        super().__init__(in_dim, n_classes, dim=dim, dropout=dropout)
        self.fc = _patch_mlp(in_dim, dim, dropout)
        self.attention = GatedAttention(dim, attention_dim, dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        _check_batch(batch, self.in_dim)
        h = self.fc(batch.features)
        attention = masked_softmax(self.attention(h), batch.mask)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        return AggregatorOutput(
            embedding=pooled, logits=self.classifier(pooled), patch_attention=attention
        )


@register_model(
    "dsmil",
    options=DSMILOptions,
    description="Dual-stream MIL: max-instance stream plus critical-instance attention "
    "(Li et al., CVPR 2021).",
)
class DSMIL(MILClassifier):
    """Dual-stream MIL (Li et al. 2021), following the official ``dsmil.py``.

    * Instance stream: a linear instance classifier scores every patch for every class; the
      highest-scoring patch per class is that class's critical instance.
    * Bag stream: queries ``q(h)`` (Linear 128 + ReLU + Linear 128 + Tanh); the attention of
      patch ``i`` for class ``c`` is the softmax over patches of
      ``⟨q(h_i), q(h_crit(c))⟩ / √128``; the bag representation ``B [C, V]`` is the
      attention-weighted sum of ``v(h)``; a Conv1d(C, C, kernel V) turns it into bag logits.

    ``logits`` are the bag-stream logits. The official training loss is
    ``0.5·L(bag) + 0.5·L(max-instance)`` where the max-instance logits are each class's highest
    instance score. With ``labels`` this model returns ``aux_loss = CE(max-instance logits,
    labels)``, so the trainer's ``CE(logits, labels) + aux_loss`` equals twice the official mix
    (the official code uses BCE on one-hot labels; here both terms are cross-entropy).
    Inference uses the bag logits alone (the official script optionally averages in the
    max-instance probabilities).

    ``embedding`` is ``B`` flattened (``[C·V]``). ``patch_attention`` is the attention averaged
    over classes (each class column sums to 1, so the average does too), since every bag logit
    reads all classes' rows of ``B``.

    Options: ``dim=None`` uses the patch features directly as the official DSMIL does on
    precomputed features; an integer adds Linear(in_dim, dim) + ReLU + dropout first.
    ``passing_v=True`` uses ``v = Dropout + Linear + ReLU`` instead of the identity.
    ``dropout`` (default 0, as the official ``dropout_v``) applies to those layers.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        dim: int | None = None,
        dropout: float = 0.0,
        query_dim: int = 128,
        nonlinear: bool = True,
        passing_v: bool = False,
    ):
        feature_dim = in_dim if dim is None else dim
        super().__init__(in_dim, n_classes, dim=feature_dim, dropout=dropout)
        self.feature = nn.Identity() if dim is None else _patch_mlp(in_dim, dim, dropout)
        self.instance_classifier = nn.Linear(feature_dim, n_classes)
        if nonlinear:
            self.query: nn.Module = nn.Sequential(
                nn.Linear(feature_dim, query_dim),
                nn.ReLU(),
                nn.Linear(query_dim, query_dim),
                nn.Tanh(),
            )
        else:
            self.query = nn.Linear(feature_dim, query_dim)
        if passing_v:
            self.value: nn.Module = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(feature_dim, feature_dim), nn.ReLU()
            )
        else:
            self.value = nn.Identity()
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=feature_dim)
        self.query_dim = int(query_dim)

    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        _check_batch(batch, self.in_dim)
        mask = batch.mask
        feats = self.feature(batch.features)  # [B, N, K]
        instance_logits = self.instance_classifier(feats).masked_fill(
            ~mask.unsqueeze(-1), float("-inf")
        )  # [B, N, C]
        max_logits, critical = instance_logits.max(dim=1)  # [B, C] each
        critical_feats = torch.gather(
            feats, 1, critical.unsqueeze(-1).expand(-1, -1, feats.shape[-1])
        )  # [B, C, K]
        queries = self.query(feats)  # [B, N, Q]
        critical_queries = self.query(critical_feats)  # [B, C, Q]
        scores = queries @ critical_queries.transpose(1, 2) / math.sqrt(self.query_dim)
        attention = masked_softmax(scores, mask.unsqueeze(-1), dim=1)  # [B, N, C]
        bag = attention.transpose(1, 2) @ self.value(feats)  # [B, C, V]
        logits = self.bag_classifier(bag).squeeze(-1)  # [B, C]
        aux = F.cross_entropy(max_logits, labels) if labels is not None else None
        return AggregatorOutput(
            embedding=bag.flatten(1),
            logits=logits,
            patch_attention=attention.mean(dim=-1),
            aux_loss=aux,
        )


class NystromAttention(nn.Module):
    """Multi-head Nyström self-attention (Xiong et al. 2021) for one unpadded sequence.

    Landmarks are the means of ``m = min(num_landmarks, n)`` contiguous, near-equal segments of
    the queries and keys (no zero padding, so short sequences use every token as a landmark);
    ``softmax(QKᵀ)`` is approximated by ``softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) ·
    softmax(Q̃ Kᵀ)`` with the iterative pseudo-inverse; a depthwise convolution over the sequence
    of the values (kernel ``residual_kernel``) is added, as in the reference implementation
    used by TransMIL.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 8,
        dim_head: int | None = None,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
    ):
        super().__init__()
        dim_head = dim // heads if dim_head is None else dim_head
        if dim_head < 1:
            raise ValueError(f"dim {dim} too small for {heads} heads")
        if num_landmarks < 1:
            raise ValueError(f"num_landmarks must be positive, got {num_landmarks}")
        self.heads = heads
        self.dim_head = dim_head
        self.num_landmarks = num_landmarks
        self.pinv_iterations = pinv_iterations
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(
            heads,
            heads,
            (residual_kernel, 1),
            padding=(residual_kernel // 2, 0),
            groups=heads,
            bias=False,
        )

    def _landmarks(self, t: Tensor, m: int) -> Tensor:
        """Means of ``m`` contiguous segments along dim -2 of ``t`` ``[..., n, d]``."""
        n = t.shape[-2]
        if m == n:
            return t
        segment = torch.arange(n, device=t.device) * m // n
        sums = t.new_zeros(*t.shape[:-2], m, t.shape[-1]).index_add_(-2, segment, t)
        counts = torch.bincount(segment, minlength=m).to(t.dtype)
        return sums / counts.unsqueeze(-1)

    def forward(self, x: Tensor, *, query_rows: int = 0) -> tuple[Tensor, Tensor | None]:
        """``x`` ``[1, n, dim]`` → (output ``[1, n, dim]``, attention of the first
        ``query_rows`` tokens ``[heads, query_rows, n]`` or None when ``query_rows`` is 0)."""
        _, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(1, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale
        m = min(self.num_landmarks, n)
        q_land = self._landmarks(q, m)
        k_land = self._landmarks(k, m)
        attn1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)  # [1, h, n, m]
        attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)  # [1, h, m, m]
        attn3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)  # [1, h, m, n]
        attn2_inv = moore_penrose_pinv(attn2, self.pinv_iterations)
        out = (attn1 @ attn2_inv) @ (attn3 @ v) + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).reshape(1, n, self.heads * self.dim_head))
        rows = None
        if query_rows:
            rows = ((attn1[:, :, :query_rows] @ attn2_inv) @ attn3)[0]
        return out, rows


class _TransLayer(nn.Module):
    def __init__(self, dim: int, **attention_options: object):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, **attention_options)  # type: ignore[arg-type]

    def forward(self, x: Tensor, *, query_rows: int = 0) -> tuple[Tensor, Tensor | None]:
        out, rows = self.attn(self.norm(x), query_rows=query_rows)
        return x + out, rows


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7/5/3 convolutions on the patch grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls_token, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


@register_model(
    "transmil",
    options=TransMILOptions,
    description="TransMIL: Nyström-attention transformer with PPEG position encoding "
    "(Shao et al., NeurIPS 2021).",
)
class TransMIL(MILClassifier):
    """TransMIL (Shao et al. 2021), following the official ``TransMIL.py``.

    Linear(in_dim, dim) + ReLU; the patch sequence is wrapped around (its first patches repeated)
    to fill a square ``⌈√n⌉ × ⌈√n⌉`` grid in sequence order; a learnable class token is prepended;
    Nyström transformer layer, PPEG, Nyström transformer layer, LayerNorm; Linear(dim, C) on the
    class token, which is also the ``embedding``.

    Each bag is processed on its own (TransMIL assumes batch size 1), so padding cannot leak into
    the attention, the landmarks or the grid.

    ``patch_attention``: the class token's row of the Nyström-approximated attention matrix of the
    last layer, averaged over heads; the attention on wrap-around copies is added to their source
    patch; negative values of the approximation are clipped to 0 and the row is renormalised over
    the real patches (uniform in the degenerate case of no positive weight).

    Options: ``heads=8``; ``num_landmarks`` (default ``dim // 2`` = 256, capped at the sequence
    length); ``pinv_iterations=6``; ``residual_kernel=33``; ``dropout`` (default 0.1, the
    attention-output dropout of the reference implementation).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        dim: int = 512,
        dropout: float = 0.1,
        heads: int = 8,
        num_landmarks: int | None = None,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
    ):
        super().__init__(in_dim, n_classes, dim=dim, dropout=dropout)
        attention_options = {
            "heads": heads,
            "num_landmarks": dim // 2 if num_landmarks is None else num_landmarks,
            "pinv_iterations": pinv_iterations,
            "residual_kernel": residual_kernel,
            "dropout": dropout,
        }
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = _TransLayer(dim, **attention_options)
        self.pos_layer = PPEG(dim)
        self.layer2 = _TransLayer(dim, **attention_options)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def _forward_bag(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """One bag ``[n, in_dim]`` → (class token ``[dim]``, patch attention ``[n]``)."""
        n = features.shape[0]
        h = self.fc(features).unsqueeze(0)  # [1, n, dim]
        side = math.isqrt(n - 1) + 1  # ⌈√n⌉
        wrap = torch.arange(side * side, device=h.device) % n
        h = torch.cat([self.cls_token, h[:, wrap]], dim=1)
        h, _ = self.layer1(h)
        h = self.pos_layer(h, side)
        h, rows = self.layer2(h, query_rows=1)
        assert rows is not None
        cls = self.norm(h)[0, 0]
        with torch.no_grad():
            row = rows.mean(dim=0)[0, 1:]  # class token → grid tokens
            weights = torch.zeros(n, device=h.device, dtype=row.dtype).index_add_(0, wrap, row)
            weights = weights.clamp(min=0)
            total = weights.sum()
            weights = weights / total if total > 0 else torch.full_like(weights, 1.0 / n)
        return cls, weights

    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        _check_batch(batch, self.in_dim)
        tokens = []
        attention = batch.features.new_zeros(batch.mask.shape)
        for i in range(batch.size):
            index = batch.mask[i].nonzero().flatten()
            cls, weights = self._forward_bag(batch.features[i, index])
            tokens.append(cls)
            attention[i, index] = weights
        embedding = torch.stack(tokens)
        return AggregatorOutput(
            embedding=embedding, logits=self.classifier(embedding), patch_attention=attention
        )


def _smooth_top1_svm(logits: Tensor, targets: Tensor, alpha: float = 1.0, tau: float = 1.0):
    """Smooth top-1 multi-class SVM loss (Berrada et al. 2018), CLAM's default instance loss.

    ``τ · log Σ_j exp((s_j + α·[j ≠ y]) / τ) − s_y``, averaged over instances.
    """
    margin = alpha * (1.0 - F.one_hot(targets, logits.shape[-1]).to(logits.dtype))
    return (tau * torch.logsumexp((logits + margin) / tau, dim=-1)).mean() - logits.gather(
        1, targets.unsqueeze(1)
    ).mean()


@register_model(
    "clam-sb",
    options=CLAMSBOptions,
    description="Single-branch CLAM: gated attention with instance-level clustering "
    "(Lu et al., Nat. Biomed. Eng. 2021).",
)
class CLAMSB(MILClassifier):
    """Single-branch CLAM (Lu et al. 2021), following the official ``CLAM_SB``.

    Linear(in_dim, dim) + ReLU + dropout; gated attention (``dim → attention_dim → 1``) softmaxed
    over the bag's patches; attention-pooled embedding; Linear(dim, C) bag classifier. One binary
    instance classifier Linear(dim, 2) per class.

    Instance clustering (when ``labels`` are given): for the true class, the ``k`` most attended
    patches get pseudo-label 1 and the ``k`` least attended pseudo-label 0; with
    ``subtyping=True`` (default, CLAM's setting for subtyping tasks) every other class's
    classifier also sees the ``k`` most attended patches with pseudo-label 0, and the summed
    instance loss is divided by C. ``k = k_sample`` (8) or fewer in small bags: at most ``n // 2``
    for the in-class branch (so positives and negatives are distinct; a 1-patch bag only gets its
    positive) and at most ``n`` for the out-of-class branches. ``instance_loss`` is ``"ce"``
    (default) or ``"svm"`` (smooth top-1 SVM, CLAM's default). Bags in a batch are averaged.

    CLAM trains on ``bag_weight · L_bag + (1 − bag_weight) · L_inst`` (bag_weight 0.7). This model
    returns ``aux_loss = (1 − bag_weight) / bag_weight · L_inst`` so the trainer's
    ``CE(logits, labels) + aux_loss`` equals CLAM's loss divided by ``bag_weight``.

    ``patch_attention`` is the softmaxed attention used for pooling.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        k_sample: int = 8,
        bag_weight: float = 0.7,
        subtyping: bool = True,
        instance_loss: Literal["ce", "svm"] = "ce",
    ):
        super().__init__(in_dim, n_classes, dim=dim, dropout=dropout)
        if k_sample < 1:
            raise ValueError(f"k_sample must be positive, got {k_sample}")
        if not 0.0 < bag_weight <= 1.0:
            raise ValueError(f"bag_weight must be in (0, 1], got {bag_weight}")
        if instance_loss not in ("ce", "svm"):
            raise ValueError(f"instance_loss must be 'ce' or 'svm', got {instance_loss!r}")
        self.k_sample = int(k_sample)
        self.bag_weight = float(bag_weight)
        self.subtyping = bool(subtyping)
        self.instance_loss = instance_loss
        self.fc = _patch_mlp(in_dim, dim, dropout)
        self.attention = GatedAttention(dim, attention_dim, dropout)
        self.classifier = nn.Linear(dim, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(n_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # CLAM's initialize_weights: Xavier-normal linear weights, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _instance_loss_fn(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.instance_loss == "svm":
            return _smooth_top1_svm(logits, targets)
        return F.cross_entropy(logits, targets)

    def _bag_instance_loss(self, attention: Tensor, h: Tensor, label: int) -> Tensor:
        """Instance clustering loss of one bag: attention ``[n]``, features ``[n, dim]``."""
        n = attention.shape[0]
        total = h.new_zeros(())
        for c, classifier in enumerate(self.instance_classifiers):
            if c == label:
                k = min(self.k_sample, n // 2)
                top = torch.topk(attention, max(k, 1)).indices
                chosen = top
                targets = torch.ones(top.shape[0], dtype=torch.long, device=h.device)
                if k > 0:
                    bottom = torch.topk(-attention, k).indices
                    chosen = torch.cat([top, bottom])
                    targets = torch.cat([targets, torch.zeros_like(targets)])
            elif self.subtyping:
                chosen = torch.topk(attention, min(self.k_sample, n)).indices
                targets = torch.zeros(chosen.shape[0], dtype=torch.long, device=h.device)
            else:
                continue
            total = total + self._instance_loss_fn(classifier(h[chosen]), targets)
        if self.subtyping:
            total = total / len(self.instance_classifiers)
        return total

    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        _check_batch(batch, self.in_dim)
        mask = batch.mask
        h = self.fc(batch.features)
        attention = masked_softmax(self.attention(h), mask)
        pooled = torch.einsum("bn,bnd->bd", attention, h)
        logits = self.classifier(pooled)
        aux = None
        if labels is not None:
            losses = []
            for i in range(batch.size):
                index = mask[i].nonzero().flatten()
                losses.append(
                    self._bag_instance_loss(attention[i, index], h[i, index], int(labels[i]))
                )
            instance = torch.stack(losses).mean()
            aux = instance * (1.0 - self.bag_weight) / self.bag_weight
        return AggregatorOutput(
            embedding=pooled, logits=logits, patch_attention=attention, aux_loss=aux
        )
