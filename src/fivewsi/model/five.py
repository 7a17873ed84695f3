"""FiVE's slide model: question and learnable prompts guiding the TFS aggregator, text alignment.

The slide embedding and text embeddings live in one ``dim``-wide space, both L2-normalised:
texts go through the :class:`~fivewsi.model.text.TextEncoder` and a trainable linear projection;
slides through :class:`~fivewsi.model.tfs.TFSAggregator`, guided by prompts — the question texts
(encoded like any text) followed by ``n_learnable_prompts`` learnable vectors. A slide is scored
against texts (class descriptions, fine-grained labels) by ``logit_scale × cosine``.

Example:
    >>> import torch
    >>> from fivewsi.model.outputs import BagBatch
    >>> from fivewsi.model.text import TextEncoder
    >>> model = FiveModel(64, ["Differentiation?"], TextEncoder(), dim=32, heads=4).eval()
    >>> out = model(BagBatch.from_bags([torch.randn(50, 64)]))
    >>> texts = model.encode_texts(["adenocarcinoma", "squamous cell carcinoma"])
    >>> model.similarity(out.embedding, texts).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fivewsi.model.outputs import AggregatorOutput, BagBatch
from fivewsi.model.registry import register_model
from fivewsi.model.text import TextEncoder
from fivewsi.model.tfs import AttentionMode, TFSAggregator

logger = logging.getLogger(__name__)

#: CLIP's initial temperature (1 / 0.07) and cap (100) for a learnable logit scale.
INIT_LOGIT_SCALE = 1.0 / 0.07
MAX_LOGIT_SCALE = 100.0
TEXT_ENCODER_PREFIX = "text_encoder."


class FiveModel(nn.Module):
    """FiVE: prompts from questions (+ learnable), TFS aggregation, slide-text similarity.

    Args:
        in_dim: patch feature size.
        questions: question texts (one prompt each, in this order).
        text_encoder: the (frozen or LoRA) text encoder shared by prompts and texts.
        dim: joint embedding width.
        n_learnable_prompts: learnable prompts after the question prompts (FiVE: 16).
        attention: TFS self-attention, ``"local"`` (default) or ``"full"`` (paper).
        heads, dropout: TFS attention heads and dropout.
        logit_scale: None → learnable temperature (CLIP init 1/0.07, capped at 100);
            a float → fixed (the paper uses 300).
        **tfs_options: passed to :class:`~fivewsi.model.tfs.TFSAggregator` (``block_size``,
            ``shift``).
    """

    def __init__(
        self,
        in_dim: int,
        questions: list[str],
        text_encoder: TextEncoder,
        *,
        dim: int = 512,
        n_learnable_prompts: int = 16,
        attention: AttentionMode = "local",
        heads: int = 8,
        dropout: float = 0.1,
        logit_scale: float | None = None,
        **tfs_options: Any,
    ) -> None:
        super().__init__()
        if n_learnable_prompts < 0:
            raise ValueError(f"n_learnable_prompts must be ≥ 0, got {n_learnable_prompts}")
        if not questions and n_learnable_prompts == 0:
            raise ValueError("FiveModel needs at least one prompt (questions or learnable)")
        self.in_dim, self.dim = int(in_dim), int(dim)
        self.questions = [str(q) for q in questions]
        self.text_encoder = text_encoder
        self.text_projection = nn.Linear(text_encoder.hidden_size, dim)
        # Learnable prompts live directly in the joint space (see docs/model.md, deviations).
        self.learnable_prompts = nn.Parameter(torch.randn(n_learnable_prompts, dim) * dim**-0.5)
        self.aggregator = TFSAggregator(
            in_dim, dim, heads=heads, dropout=dropout, attention=attention, **tfs_options
        )
        self.learn_scale = logit_scale is None
        initial = math.log(INIT_LOGIT_SCALE if logit_scale is None else float(logit_scale))
        if self.learn_scale:
            self.log_logit_scale = nn.Parameter(torch.tensor(initial))
        else:
            self.register_buffer("log_logit_scale", torch.tensor(initial))
        self.n_prompts = len(self.questions) + n_learnable_prompts
        self.prompt_names = self.questions + [
            f"learnable-{i + 1}" for i in range(n_learnable_prompts)
        ]

    @property
    def logit_scale(self) -> Tensor:
        """The current similarity scale (capped at 100 when learnable)."""
        scale = self.log_logit_scale.exp()
        return scale.clamp(max=MAX_LOGIT_SCALE) if self.learn_scale else scale

    def encode_texts(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` L2-normalised embeddings of ``texts`` in the joint space."""
        hidden = self.text_encoder(list(texts)).to(self.text_projection.weight.device)
        return F.normalize(self.text_projection(hidden), dim=-1)

    def prompts(self) -> Tensor:
        """``[P, dim]`` L2-normalised prompts: the questions' text embeddings, then learnable."""
        parts = [self.encode_texts(self.questions)] if self.questions else []
        parts.append(F.normalize(self.learnable_prompts, dim=-1))
        return torch.cat(parts, dim=0)

    def forward(self, batch: BagBatch, prompt_mask: Tensor | None = None) -> AggregatorOutput:
        """Slide embeddings (normalised) and attention maps for ``batch``.

        ``prompt_mask`` [P] bool (True = keep) drops prompts from the pooled slide embedding and
        from ``patch_attention``, as FiVE's pretraining drops questions with their answers.
        """
        out = self.aggregator(batch, self.prompts(), prompt_mask)
        return AggregatorOutput(
            embedding=F.normalize(out.embedding, dim=-1),
            patch_attention=out.patch_attention,
            prompt_attention=out.prompt_attention,
            prompt_tokens=out.prompt_tokens,
        )

    def similarity(self, embedding: Tensor, text_embedding: Tensor) -> Tensor:
        """``[B, T]`` logits: ``logit_scale × cosine(slide, text)``."""
        cosine = F.normalize(embedding, dim=-1) @ F.normalize(text_embedding, dim=-1).T
        return self.logit_scale * cosine

    def portable_state_dict(self) -> dict[str, Tensor]:
        """Weights to save in a run: everything but the text encoder's base weights.

        LoRA adapter weights (when the encoder has them) are included; the base text model is
        recorded by name in the run instead.
        """
        state = {
            name: tensor.detach().clone()
            for name, tensor in self.state_dict().items()
            if not name.startswith(TEXT_ENCODER_PREFIX)
        }
        for name, tensor in self.text_encoder.lora_state_dict().items():
            state[TEXT_ENCODER_PREFIX + name] = tensor
        return state

    def load_portable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`portable_state_dict` saved; fails on any other missing weight."""
        result = self.load_state_dict(state, strict=False)
        expected = set(self.portable_state_dict())
        missing = [key for key in result.missing_keys if key in expected]
        if missing or result.unexpected_keys:
            raise RuntimeError(
                f"weights do not fit FiveModel: missing {missing[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}"
            )
        self.text_encoder.clear_cache()


@register_model(
    "five",
    kind="text",
    description="FiVE: question + learnable prompts guide a TFS aggregator (local or full "
    "self-attention); slides scored by similarity to texts",
)
def five(
    in_dim: int, questions: list[str], text_encoder: TextEncoder | str, **options: Any
) -> FiveModel:
    """Registry factory: a :class:`FiveModel` (``text_encoder`` may also be a name or folder)."""
    encoder = TextEncoder(text_encoder) if isinstance(text_encoder, str) else text_encoder
    return FiveModel(in_dim, questions, encoder, **options)
