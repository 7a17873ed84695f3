"""Losses: FiVE's report contrastive loss (with field dropping) and the class losses.

Report pretraining, per step: a random subset of the question fields is dropped, both from the
prompts (``prompt_mask``) and from every label text; Unknown parts are dropped. Each slide is
then classified against a set of distinct label texts: those of the batch (``negatives="batch"``)
or every distinct training label rendered with the same dropped fields (``negatives="all"``, the
paper's scheme). Texts with the same parts are one target, so two slides with the same label are
never each other's negatives.

Positives and negatives are rendered by one function (:func:`render_parts`), so nothing but
their content tells them apart: in canonical order (``shuffle=False``, the default with a frozen
text encoder, whose per-string cache then stays small), or every text's parts shuffled
(``shuffle=True``, as the released code does). Rendering only the positives shuffled is a
shortcut a model learns (slides end up closer to any shuffled text than to canonical ones).

Example:
    >>> from fivewsi.cohort.labels import LabelPart
    >>> a = [LabelPart("grade", "high grade", False), LabelPart("margin", "Unknown", True)]
    >>> b = [LabelPart("grade", "high grade", False)]
    >>> step = report_step([a, b], ["grade", "margin"], 3, np.random.default_rng(0),
    ...                    max_drop_fraction=0.0)
    >>> step.texts, step.targets.tolist()
    (['high grade'], [0, 0])
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fivewsi.cohort.labels import LabelPart, sample_drop_keys
from fivewsi.model.outputs import AggregatorOutput

#: Target of a slide whose label has nothing left after dropping: it sits out the step.
IGNORE = -100
SEPARATOR = "; "


@dataclass
class ReportStep:
    """What one report-contrastive step scores.

    Attributes:
        texts: distinct label texts; the first ``n_positive`` are the batch's own.
        targets: ``[B]`` index of each slide's text in ``texts`` (``IGNORE`` when its label is
            empty after dropping).
        prompt_mask: ``[P]`` bool, False for the prompts of dropped questions.
        drop_keys: the question keys dropped this step.
        n_positive: how many of ``texts`` belong to slides of the batch.
    """

    texts: list[str]
    targets: Tensor
    prompt_mask: Tensor
    drop_keys: set[str]
    n_positive: int


def kept_parts(
    parts: Sequence[LabelPart], drop_keys: set[str]
) -> list[LabelPart]:
    """The parts a label keeps: not Unknown, not of a dropped question."""
    return [p for p in parts if not p.unknown and p.key not in drop_keys and p.text.strip()]


def content_key(parts: Sequence[LabelPart]) -> tuple[str, ...]:
    """Order-free identity of a label's parts: same parts, same target."""
    return tuple(sorted(" ".join(p.text.lower().split()) for p in parts))


def render_parts(
    parts: Sequence[LabelPart], rng: np.random.Generator | None = None, *, shuffle: bool = False
) -> str:
    """The text of kept ``parts``: in their order, or shuffled with ``rng`` when ``shuffle``.

    The one rendering of every training and validation text, positive or negative.

    Example:
        >>> parts = [LabelPart("a", "x"), LabelPart("b", " y ")]
        >>> render_parts(parts)
        'x; y'
    """
    texts = [p.text.strip() for p in parts]
    if shuffle and len(texts) > 1:
        if rng is None:
            raise ValueError("shuffling needs an rng")
        texts = [texts[i] for i in rng.permutation(len(texts))]
    return SEPARATOR.join(texts)


def prompt_mask_for(
    question_keys: Sequence[str], n_prompts: int, drop_keys: set[str]
) -> Tensor:
    """``[n_prompts]`` bool: question prompts come first, learnable prompts are always kept.

    Example:
        >>> prompt_mask_for(["a", "b"], 4, {"b"}).tolist()
        [True, False, True, True]
    """
    mask = torch.ones(n_prompts, dtype=torch.bool)
    for i, key in enumerate(question_keys):
        if key in drop_keys:
            mask[i] = False
    return mask


def report_step(
    labels: Sequence[Sequence[LabelPart]],
    question_keys: Sequence[str],
    n_prompts: int,
    rng: np.random.Generator,
    *,
    negatives: str = "batch",
    pool: Sequence[Sequence[LabelPart]] | None = None,
    max_drop_fraction: float = 0.5,
    max_tries: int = 8,
    shuffle: bool = False,
) -> ReportStep:
    """Draw the dropped fields for a step and build the texts and targets of the batch.

    ``labels`` are the parsed fine-grained labels of the batch's slides; ``pool`` the distinct
    labels of all training slides (needed for ``negatives="all"``). When every slide of the batch
    would be left with nothing, the draw is repeated (after ``max_tries``, nothing is dropped).
    Every text, positive or negative, is :func:`render_parts` of its kept parts with the same
    ``shuffle``.
    """
    if negatives not in ("batch", "all"):
        raise ValueError(f"negatives must be 'batch' or 'all', got {negatives!r}")
    if negatives == "all" and pool is None:
        raise ValueError("negatives='all' needs the pool of training labels")
    drop: set[str] = set()
    for _ in range(max_tries):
        drop = set(sample_drop_keys(list(question_keys), rng, max_fraction=max_drop_fraction))
        if any(kept_parts(parts, drop) for parts in labels):
            break
    else:
        drop = set()
    texts: list[str] = []
    index: dict[tuple[str, ...], int] = {}
    targets = []
    for parts in labels:
        kept = kept_parts(parts, drop)
        if not kept:
            targets.append(IGNORE)
            continue
        key = content_key(kept)
        if key not in index:
            index[key] = len(texts)
            texts.append(render_parts(kept, rng, shuffle=shuffle))
        targets.append(index[key])
    n_positive = len(texts)
    if negatives == "all":
        for parts in pool or ():
            kept = kept_parts(parts, drop)
            key = content_key(kept)
            if kept and key not in index:
                index[key] = len(texts)
                texts.append(render_parts(kept, rng, shuffle=shuffle))
    return ReportStep(
        texts,
        torch.tensor(targets, dtype=torch.long),
        prompt_mask_for(question_keys, n_prompts, drop),
        drop,
        n_positive,
    )


def eval_report_texts(labels: Sequence[Sequence[LabelPart]]) -> tuple[list[str], Tensor]:
    """Distinct texts (nothing dropped, canonical order) and each slide's target, for validation.

    Example:
        >>> from fivewsi.cohort.labels import LabelPart
        >>> eval_report_texts([[LabelPart("g", "high grade", False)]] * 2)[1].tolist()
        [0, 0]
    """
    texts: list[str] = []
    index: dict[tuple[str, ...], int] = {}
    targets = []
    for parts in labels:
        kept = kept_parts(parts, set())
        if not kept:
            targets.append(IGNORE)
            continue
        key = content_key(kept)
        if key not in index:
            index[key] = len(texts)
            texts.append(render_parts(kept))
        targets.append(index[key])
    return texts, torch.tensor(targets, dtype=torch.long)


def encode_step_texts(model: torch.nn.Module, texts: list[str], n_grad: int, *, grad_rest: bool):
    """Text embeddings of ``texts``; only the first ``n_grad`` get gradients unless ``grad_rest``.

    With a LoRA text encoder, running every negative with gradients would cost a full backward
    pass through the encoder per text; the paper likewise lets only some texts learn per step.
    """
    if grad_rest or n_grad >= len(texts):
        return model.encode_texts(texts)
    first = model.encode_texts(texts[:n_grad])
    with torch.no_grad():
        rest = model.encode_texts(texts[n_grad:])
    return torch.cat([first, rest.to(first.dtype)], dim=0)


def contrastive_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of each slide against the texts (slides with ``IGNORE`` sit out)."""
    valid = targets != IGNORE
    if not bool(valid.any()):
        return logits.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
    return F.cross_entropy(logits[valid].float(), targets[valid])


def class_loss(output: AggregatorOutput, logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over class scores, plus the model's own auxiliary loss when it has one.

    ``logits`` are a label model's ``output.logits`` or FiVE's similarities to the class
    description embeddings.
    """
    loss = F.cross_entropy(logits.float(), targets)
    if output.aux_loss is not None:
        loss = loss + output.aux_loss.float()
    return loss


def no_grad_if(condition: bool) -> contextlib.AbstractContextManager[None]:
    """``torch.no_grad()`` when ``condition``, else a context that does nothing."""
    return torch.no_grad() if condition else contextlib.nullcontext()
