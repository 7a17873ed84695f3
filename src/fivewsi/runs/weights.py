"""A run's tensors: ``model.safetensors`` (weights) and ``texts.safetensors`` (own texts).

``texts.safetensors`` holds one tensor, ``features`` ``[T, H]``: the text encoder's outputs for
the run's own texts — the question prompts, the class descriptions, each question's attribute
phrases — with the texts, in row order, as JSON in the file's metadata (``texts``). They are
computed at the end of training from the trained model (LoRA weights included), batch by batch in
the order prediction asks for them, so a run loaded with them predicts exactly what it predicts
when its text model encodes the texts anew.

Example:
    >>> import torch
    >>> from fivewsi.model.registry import create_model
    >>> model = create_model("mean", in_dim=4, n_classes=2, dim=8)
    >>> sorted(model.saved_state_dict())[:2]
    ['classifier.bias', 'classifier.weight']
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from fivewsi.errors import RunError
from fivewsi.model.interfaces import SlideModel, TextAlignedModel
from fivewsi.utils.atomic import atomic_path


def save_weights(model: SlideModel, path: str | os.PathLike[str]) -> None:
    """Write the model's saved weights (:meth:`SlideModel.saved_state_dict`) atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.saved_state_dict().items()}
    check_finite(state, path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    """Refuse to write tensors holding NaN or Inf: a run with such weights predicts nothing.

    Example:
        >>> check_finite({"w": torch.tensor([1.0, float("nan")])}, "model.safetensors")
        Traceback (most recent call last):
        ...
        fivewsi.errors.RunError: model.safetensors not written: 1 tensor(s) hold NaN or Inf ...
    """
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        shown = ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise RunError(
            f"{path} not written: {len(bad)} tensor(s) hold NaN or Inf values ({shown}); "
            "the training diverged: lower the learning rate and train again"
        )


def load_weights(model: SlideModel, path: str | os.PathLike[str]) -> None:
    """Load weights written by :func:`save_weights`; every saved weight must fit the model."""
    from safetensors.torch import load_file

    try:
        model.load_saved_state_dict(load_file(str(path)))
    except ValueError as exc:
        raise RunError(f"{path}: {exc}") from None


def save_text_features(
    model: TextAlignedModel, batches: Sequence[Sequence[str]], path: str | os.PathLike[str]
) -> int:
    """Encode ``batches`` of texts in order (as prediction will) and write them; the count."""
    from safetensors.torch import save_file

    texts: list[str] = []
    rows: list[torch.Tensor] = []
    training = model.training
    model.eval()
    try:
        for batch in batches:
            if batch:
                features = model.text_features(list(batch))
                for text, row in zip(batch, features, strict=True):
                    if text not in texts:
                        texts.append(text)
                        rows.append(row)
    finally:
        model.train(training)
    if not rows:
        return 0
    state = {"features": torch.stack(rows).float().contiguous()}
    check_finite(state, path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"texts": json.dumps(texts)})
    return len(texts)


def load_text_features(path: str | os.PathLike[str]) -> tuple[list[str], torch.Tensor]:
    """The texts and ``[T, H]`` features of a ``texts.safetensors`` file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            texts = json.loads((handle.metadata() or {})["texts"])
            features = handle.get_tensor("features")
    except Exception as exc:  # safetensors' own error type is not exported
        raise RunError(f"{path}: not a text features file ({exc})") from None
    if not isinstance(texts, list) or len(texts) != features.shape[0]:
        raise RunError(f"{path}: {len(texts)} texts for {features.shape[0]} rows")
    return [str(t) for t in texts], features

