"""What every slide model promises, and the two families: text-aligned and label-only.

A registered model is a :class:`SlideModel`: it turns a :class:`~fivewsi.model.outputs.BagBatch`
into an :class:`~fivewsi.model.outputs.AggregatorOutput`, scores classes
(:meth:`SlideModel.class_logits`), says which objectives it can learn from
(:attr:`SlideModel.objectives`), which weights a run saves, and which maps it exposes
(``patch_attention`` always; ``prompt_attention`` with :attr:`SlideModel.prompt_names`).

- :class:`TextAlignedModel` (FiVE): scores a slide against texts — class descriptions, report
  labels — by similarity in a space shared with a text encoder; learns from reports or classes.
- :class:`LabelModel` (MIL baselines): a head over class indices; learns from labelled slides.

Training, run loading and prediction call these methods; nothing switches on a model's name.

Example:
    >>> from fivewsi.model.registry import get_model_spec
    >>> get_model_spec("five").objectives, get_model_spec("abmil").objectives
    (('reports', 'classes'), ('classes',))
    >>> get_model_spec("five").text_aligned, get_model_spec("abmil").text_aligned
    (True, False)
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from torch import Tensor, nn

if TYPE_CHECKING:
    from pydantic import BaseModel

    from fivewsi.model.outputs import AggregatorOutput, BagBatch

#: What a model can be trained on: fine-grained report labels, or class labels.
Objective = Literal["reports", "classes"]


@dataclass(frozen=True)
class ModelTask:
    """What a model is built for, besides its own options.

    Attributes:
        in_dim: patch feature size.
        n_classes: number of classes (0 when trained on reports only).
        questions: the question prompts' texts (text-aligned models), in prompt order.
    """

    in_dim: int
    n_classes: int = 0
    questions: tuple[str, ...] = ()


class SlideModel(nn.Module, abc.ABC):
    """A bag → slide-embedding model that scores classes (every registered aggregator)."""

    #: Objectives this model can learn from.
    objectives: ClassVar[tuple[Objective, ...]] = ("classes",)
    #: Whether classes are scored by texts (class descriptions) rather than by index.
    text_aligned: ClassVar[bool] = False

    @classmethod
    @abc.abstractmethod
    def build(cls, task: ModelTask, options: BaseModel, *, lazy: bool = False) -> SlideModel:
        """The model for ``task`` with validated ``options`` (its registered options class).

        ``lazy``: defer loading pretrained parts (a text model) until they are needed; used when
        a trained run is loaded for inference.
        """

    @abc.abstractmethod
    def forward(self, batch: BagBatch, labels: Tensor | None = None) -> AggregatorOutput:
        """Outputs for ``batch``; ``labels`` ``[B]`` let a model add its auxiliary loss."""

    @abc.abstractmethod
    def class_logits(self, output: AggregatorOutput, descriptions: Sequence[str]) -> Tensor:
        """``[B, C]`` class logits of ``output``; ``descriptions`` name the C classes."""

    @property
    def prompt_names(self) -> list[str]:
        """Names of the rows of ``prompt_attention`` (question prompts first); [] without."""
        return []

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys a run does not save (frozen pretrained weights, recorded by name)."""
        return set()

    def saved_state_dict(self) -> dict[str, Tensor]:
        """The weights a run saves: the state dict less :meth:`frozen_state_keys`."""
        frozen = self.frozen_state_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def load_saved_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`saved_state_dict` gave; ``ValueError`` naming what does not fit."""
        result = self.load_state_dict(state, strict=False)
        frozen = self.frozen_state_keys()
        missing = [k for k in result.missing_keys if k not in frozen]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"weights do not fit {type(self).__name__}: missing {missing[:5]}, "
                f"unexpected {list(result.unexpected_keys)[:5]}"
            )


class TextAlignedModel(SlideModel):
    """A model scoring slides by similarity to texts in a space shared with a text encoder."""

    objectives: ClassVar[tuple[Objective, ...]] = ("reports", "classes")
    text_aligned: ClassVar[bool] = True

    @abc.abstractmethod
    def encode_texts(self, texts: list[str]) -> Tensor:
        """``[T, E]`` embeddings of ``texts`` in the shared space."""

    @abc.abstractmethod
    def similarity(self, embedding: Tensor, text_embedding: Tensor) -> Tensor:
        """``[B, T]`` logits of slides ``[B, E]`` against texts ``[T, E]``."""

    @property
    @abc.abstractmethod
    def n_prompts(self) -> int:
        """Prompts guiding the aggregator (report pretraining masks some of them)."""

    @abc.abstractmethod
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """``[T, H]`` text-encoder outputs of ``texts`` (what :meth:`remember_texts` takes)."""

    @abc.abstractmethod
    def remember_texts(self, texts: Sequence[str], features: Tensor) -> None:
        """Use ``features`` for ``texts`` instead of running the text encoder (a run's own)."""

    def clear_text_cache(self) -> None:
        """Forget text outputs cached while training (not those given to remember_texts)."""

    def class_logits(self, output: AggregatorOutput, descriptions: Sequence[str]) -> Tensor:
        return self.similarity(output.embedding, self.encode_texts(list(descriptions)))


class LabelModel(SlideModel):
    """A model with a head over class indices (``output.logits``); learns from labels only."""

    n_classes: int

    def class_logits(self, output: AggregatorOutput, descriptions: Sequence[str]) -> Tensor:
        assert output.logits is not None, "a label model returns logits"
        return output.logits

    @classmethod
    def build(cls, task: ModelTask, options: BaseModel, *, lazy: bool = False) -> SlideModel:
        return cls(task.in_dim, task.n_classes, **_fields(options))


def _fields(options: Any) -> dict[str, Any]:
    return {name: getattr(options, name) for name in type(options).model_fields}
