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
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_validator
from torch import Tensor, nn

from fivewsi.model.interfaces import ModelTask, TextAlignedModel
from fivewsi.model.outputs import AggregatorOutput, BagBatch
from fivewsi.model.registry import ModelOptions, register_model
from fivewsi.model.text import DEFAULT_TEXT_ENCODER, TextEncoder
from fivewsi.model.tfs import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CHECKPOINT_PATCHES,
    DEFAULT_CHUNK_SIZE,
    AttentionMode,
    TFSAggregator,
)

logger = logging.getLogger(__name__)

#: CLIP's initial temperature (1 / 0.07) and cap (100) for a learnable logit scale.
INIT_LOGIT_SCALE = 1.0 / 0.07
MAX_LOGIT_SCALE = 100.0
#: Options of the text side, in every FiVE-like model's options (see :meth:`FiveModel.build`).
TEXT_OPTIONS = ("text_encoder", "lora", "lora_r", "lora_alpha", "lora_dropout")
TEXT_ENCODER_PREFIX = "text_encoder."


class TextAlignedOptions(ModelOptions):
    """What every FiVE-like model's options share: the joint width, the prompts, the TFS
    heads and the text side (:data:`TEXT_OPTIONS`), with ``dim`` divisible by ``heads``.

    Attributes:
        dim: joint embedding width. heads: TFS attention heads.
        n_learnable_prompts: learnable prompts after the question prompts (FiVE: 16).
        text_encoder: packaged name, local folder or cached Hugging Face repo of the text model.
        lora, lora_r, lora_alpha, lora_dropout: tune the text encoder with LoRA.
    """

    dim: int = Field(512, ge=8)
    n_learnable_prompts: int = Field(16, ge=0)
    heads: int = Field(8, ge=1)
    text_encoder: str = DEFAULT_TEXT_ENCODER
    lora: bool = False
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _check_heads(self) -> TextAlignedOptions:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        return self


class FiveOptions(TextAlignedOptions):
    """FiVE's options (the defaults are those of ``fivewsi train``).

    Attributes:
        dim: joint embedding width. heads / dropout: TFS attention heads and dropout.
        n_learnable_prompts: learnable prompts after the question prompts.
        attention: TFS self-attention, ``"local"`` (linear) or ``"full"`` (paper).
        logit_scale: None → learnable temperature; a float → fixed (the paper uses 300).
        text_encoder: packaged name, local folder or cached Hugging Face repo of the text model.
        lora, lora_r, lora_alpha, lora_dropout: tune the text encoder with LoRA.
        block_size, shift, chunk_size, checkpoint_patches, query_norm: see
            :class:`~fivewsi.model.tfs.TFSAggregator` (``query_norm``: layer-normalise the
            prompts before they attend, as the released module does; off by default).
    """

    dropout: float = Field(0.1, ge=0, lt=1)
    attention: AttentionMode = "local"
    logit_scale: float | None = Field(None, gt=0)
    block_size: int = Field(DEFAULT_BLOCK_SIZE, ge=2)
    shift: bool = True
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, ge=1)
    checkpoint_patches: int = Field(DEFAULT_CHECKPOINT_PATCHES, ge=0)
    query_norm: bool = False


@register_model(
    "five",
    options=FiveOptions,
    description="FiVE: question + learnable prompts guide a TFS aggregator (local or full "
    "self-attention); slides scored by similarity to texts",
)
class FiveModel(TextAlignedModel):
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
        self._prompt_names = self.questions + [
            f"learnable-{i + 1}" for i in range(n_learnable_prompts)
        ]

    @classmethod
    def build(cls, task: ModelTask, options: BaseModel, *, lazy: bool = False) -> FiveModel:
        """This class for ``task.questions`` from its options: the text side's
        (:data:`TEXT_OPTIONS`) build the text encoder, the rest are the class's keyword
        arguments, so FiVE-like subclasses (``five-official``) share this. A ``lazy`` text
        encoder loads its transformer only for texts it has not been given (see
        :meth:`remember_texts`)."""
        settings = options.model_dump()
        text = {key: settings.pop(key) for key in TEXT_OPTIONS}
        encoder = TextEncoder(text.pop("text_encoder"), **text, lazy=lazy)
        return cls(task.in_dim, list(task.questions), encoder, **settings)

    @property
    def prompt_names(self) -> list[str]:
        """The question texts, then ``learnable-1`` … (rows of ``prompt_attention``)."""
        return list(self._prompt_names)

    @property
    def n_prompts(self) -> int:
        return len(self._prompt_names)

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

    def forward(
        self, batch: BagBatch, prompt_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> AggregatorOutput:
        """Slide embeddings (normalised) and attention maps for ``batch``.

        ``prompt_mask`` [P] bool (True = keep) drops prompts from the pooled slide embedding and
        from ``patch_attention``, as FiVE's pretraining drops questions with their answers.
        ``labels`` are not used: FiVE has no auxiliary loss.
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

    def text_features(self, texts: Sequence[str]) -> Tensor:
        """``[T, H]`` text-encoder outputs (before the projection), without gradients."""
        with torch.no_grad():
            return self.text_encoder(list(texts)).detach().cpu()

    def remember_texts(self, texts: Sequence[str], features: Tensor) -> None:
        self.text_encoder.remember(texts, features)

    def clear_text_cache(self) -> None:
        self.text_encoder.clear_cache()

    def frozen_state_keys(self) -> set[str]:
        """The text encoder's base weights and buffers (LoRA adapters are saved)."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {
            key
            for key in self.state_dict()
            if key.startswith(TEXT_ENCODER_PREFIX) and key not in trainable
        }

    def load_saved_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load saved weights; LoRA weights wait in a lazy text encoder until it loads."""
        text = {k: v for k, v in state.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        if not self.text_encoder.loaded and text:
            if not self.text_encoder.lora:
                raise ValueError(f"weights do not fit FiveModel: unexpected {sorted(text)[:5]}")
            self.text_encoder.load_lora_state(
                {k.removeprefix(TEXT_ENCODER_PREFIX): v for k, v in text.items()}
            )
            state = {k: v for k, v in state.items() if k not in text}
        super().load_saved_state_dict(state)
        self.text_encoder.clear_cache()
