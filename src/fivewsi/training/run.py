"""A run folder on disk, and the classifier loaded back from it.

Layout of ``RUN/``:

- ``run.json`` — status (``running`` / ``finished``), the training config, the model (name,
  kind, options, input size, text encoder), classes and their descriptions, the question set
  (name, version, fingerprint), the patch encoder read from the bags, preprocess settings when
  known, library versions, seed, split and shots, skipped slides and the result.
- ``model.safetensors`` — the final weights (best on validation when there is a validation
  set), without the text encoder's base weights (recorded by name; LoRA weights are included).
- ``split.csv`` — the slides used for training and validation (``slide_id,role,label``).
- ``checkpoints/last.ckpt`` — Lightning checkpoint for exact resumption.
- ``logs/`` — metrics as CSV (and TensorBoard when installed).

Example:
    >>> clf = load_model("runs/luad-lusc")  # doctest: +SKIP
    >>> clf.predict(load_bag("features/slide-1.h5")).predicted  # doctest: +SKIP
    'LUAD'
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fivewsi.cohort.table import ClassDescription, read_classes
from fivewsi.errors import RunError
from fivewsi.features.bags import Bag
from fivewsi.model.outputs import BagBatch
from fivewsi.reports.questions import QuestionSet, load_question_set
from fivewsi.training.data import grid_coords
from fivewsi.training.module import excluded_keys, saved_state_dict
from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
SPLIT_FILE = "split.csv"


def read_run_info(run: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a run folder (clear error when there is none)."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise RunError(f"{run} is not a fivewsi run folder: no {RUN_FILE}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None


def build_model(info: dict[str, Any]) -> nn.Module:
    """A fresh model as described by the ``model`` section of ``run.json``."""
    from fivewsi.model.registry import create_model

    spec = info["model"]
    options = dict(spec.get("options") or {})
    if spec["kind"] == "text":
        from fivewsi.model.text import TextEncoder

        text = spec["text_encoder"]
        encoder = TextEncoder(
            text["name"],
            lora=bool(text.get("lora", False)),
            lora_r=int(text.get("lora_r", 8)),
            lora_alpha=int(text.get("lora_alpha", 32)),
            lora_dropout=float(text.get("lora_dropout", 0.05)),
        )
        return create_model(
            spec["name"],
            in_dim=int(spec["in_dim"]),
            questions=list(spec["questions"]),
            text_encoder=encoder,
            **options,
        )
    return create_model(
        spec["name"], in_dim=int(spec["in_dim"]), n_classes=int(spec["n_classes"]), **options
    )


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the model's saved weights (see :func:`saved_state_dict`) atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in saved_state_dict(model).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load weights written by :func:`save_weights`; every non-excluded weight must be there."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    result = model.load_state_dict(state, strict=False)
    allowed = excluded_keys(model)
    missing = [k for k in result.missing_keys if k not in allowed]
    if missing or result.unexpected_keys:
        raise RunError(
            f"{path} does not fit the model: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
    for module in model.modules():  # loaded LoRA weights change what the text encoder returns
        if hasattr(module, "clear_cache"):
            module.clear_cache()


@dataclass
class SlidePrediction:
    """A classifier's output for one slide.

    Attributes:
        probabilities: ``[C]`` class probabilities (softmax of the class scores).
        predicted: the most probable class.
        embedding: ``[E]`` slide embedding.
        patch_attention: ``[N]`` weight of each patch in the slide embedding (sums to 1).
        prompt_attention: ``[P, N]`` FiVE's per-prompt attention; None for baselines.
        class_attention: ``[N]`` evidence for the predicted class: for FiVE, the prompts'
            attention weighted by how well each prompt's output matches the predicted class's
            description (softmax over prompts); for baselines the patch attention.
    """

    slide_id: str
    probabilities: np.ndarray
    predicted: str
    embedding: np.ndarray
    patch_attention: np.ndarray
    prompt_attention: np.ndarray | None
    class_attention: np.ndarray


class SlideClassifier:
    """A trained model with its classes, ready to score bags.

    Use :func:`load_model` to get one.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        model_name: str,
        classes: Sequence[str],
        descriptions: Sequence[str],
        run_info: dict[str, Any],
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.kind = kind
        self.model_name = model_name
        self.classes = list(classes)
        self.descriptions = list(descriptions)
        self.run_info = run_info
        self.prompt_names: list[str] = list(getattr(model, "prompt_names", []))
        self._class_embeddings: Tensor | None = None

    @property
    def questions(self) -> QuestionSet:
        """The question set the run was trained with (its prompts and fine-grained fields)."""
        stored = self.run_info.get("question_set") or {}
        if "definition" in stored:
            return QuestionSet.model_validate(stored["definition"])
        return load_question_set(stored.get("name", "lung"))

    def logit_scale(self) -> float:
        """The factor FiVE multiplies cosine similarities by before a softmax (1 for baselines)."""
        if self.kind != "text":
            return 1.0
        probe = torch.ones(1, 1, device=self.device)
        with torch.no_grad():
            return float(self.model.similarity(probe, probe)[0, 0])

    def preprocess_settings(self) -> dict[str, Any]:
        """How the run's features were made (encoder, target mpp, patch size, min tissue).

        From the feature folder's ``preprocess.json`` when training saw one, else from the
        bags' attributes; predict uses them to preprocess new slides the same way.
        """
        settings = dict(self.run_info.get("preprocess") or {})
        encoder = self.run_info.get("feature_encoder") or {}
        for key in ("encoder", "target_mpp", "patch_size"):
            if settings.get(key) is None and key in encoder:
                settings[key] = encoder[key]
        return settings

    def _batch(self, bags: Sequence[Bag]) -> BagBatch:
        features = [torch.from_numpy(np.asarray(b.features, np.float32)) for b in bags]
        return BagBatch.from_bags(
            features, [grid_coords(b) for b in bags], [b.slide_id for b in bags]
        ).to(self.device)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[T, E]`` L2-normalised text embeddings (text models only)."""
        self._need_text()
        return self.model.encode_texts(list(texts)).float().cpu().numpy()

    @torch.no_grad()
    def similarities(self, bag: Bag, texts: list[str]) -> np.ndarray:
        """``[T]`` similarity logits (scale × cosine) of the slide to each text."""
        self._need_text()
        output = self.model(self._batch([bag]))
        scores = self.model.similarity(output.embedding, self.model.encode_texts(list(texts)))
        return scores[0].float().cpu().numpy()

    def predict(self, bag: Bag) -> SlidePrediction:
        """Classify one bag using all of its patches."""
        return self.predict_batch([bag])[0]

    @torch.no_grad()
    def predict_batch(self, bags: list[Bag]) -> list[SlidePrediction]:
        """Classify several bags in one padded batch."""
        if not bags:
            return []
        batch = self._batch(bags)
        output = self.model(batch)
        if self.kind == "text":
            if self._class_embeddings is None:
                self._class_embeddings = self.model.encode_texts(self.descriptions)
            logits = self.model.similarity(output.embedding, self._class_embeddings)
        else:
            logits = output.logits
        probabilities = torch.softmax(logits.float(), dim=1)
        predicted = probabilities.argmax(1)
        results = []
        for i, bag in enumerate(bags):
            n = bag.n_patches
            patch = _row(output.patch_attention, i, n)
            prompt = None
            if output.prompt_attention is not None:
                prompt = output.prompt_attention[i, :, :n].float().cpu().numpy()
            if self.kind == "text" and prompt is not None and output.prompt_tokens is not None:
                klass = self._prompt_weighted(output.prompt_tokens[i], int(predicted[i]), prompt)
            else:
                klass = patch
            results.append(
                SlidePrediction(
                    slide_id=bag.slide_id,
                    probabilities=probabilities[i].cpu().numpy(),
                    predicted=self.classes[int(predicted[i])],
                    embedding=output.embedding[i].float().cpu().numpy(),
                    patch_attention=patch,
                    prompt_attention=prompt,
                    class_attention=klass,
                )
            )
        return results

    def _prompt_weighted(self, tokens: Tensor, klass: int, prompt: np.ndarray) -> np.ndarray:
        assert self._class_embeddings is not None
        scores = self.model.similarity(tokens, self._class_embeddings[klass : klass + 1])[:, 0]
        weights = torch.softmax(scores.float(), dim=0).cpu().numpy()
        combined = (weights[:, None] * prompt).sum(0)
        total = combined.sum()
        return combined / total if total > 0 else combined

    def _need_text(self) -> None:
        if self.kind != "text":
            raise TypeError(f"{self.model_name} is a label model: it has no text side")


def _row(attention: Tensor | None, i: int, n: int) -> np.ndarray:
    if attention is None:
        return np.full(n, 1.0 / max(n, 1), dtype=np.float32)
    return attention[i, :n].float().cpu().numpy()


def _class_list(
    classes: str | os.PathLike[str] | Sequence[ClassDescription],
) -> list[ClassDescription]:
    if isinstance(classes, str | os.PathLike):
        return read_classes(classes)
    out = list(classes)
    if not out or not all(isinstance(c, ClassDescription) for c in out):
        raise RunError("classes must be a classes CSV or a non-empty list of ClassDescription")
    return out


def load_model(
    run: str | os.PathLike[str],
    *,
    classes: str | os.PathLike[str] | Sequence[ClassDescription] | None = None,
    device: str | torch.device = "cpu",
) -> SlideClassifier:
    """Load a finished run as a :class:`SlideClassifier`.

    For a run pretrained on reports, ``classes`` (a classes CSV or a list of
    :class:`ClassDescription`) must be given: the model classifies zero-shot by similarity to
    the descriptions. For a classes run they come from ``run.json``; FiVE runs may be given other
    descriptions. A label baseline only knows the classes it was trained on.

    Example:
        >>> clf = load_model("runs/pretrain", classes="classes.csv")  # doctest: +SKIP
        >>> clf.classes  # doctest: +SKIP
        ['LUAD', 'LUSC']
    """
    run = Path(run)
    info = read_run_info(run)
    weights = run / WEIGHTS_FILE
    if info.get("status") != "finished" or not weights.is_file():
        raise RunError(f"{run}: the run has not finished (no {WEIGHTS_FILE}); train it first")
    kind = info["model"]["kind"]
    stored = [ClassDescription(c["name"], c["description"]) for c in info.get("classes") or []]
    if classes is None:
        if not stored:
            raise RunError(
                f"{run} was pretrained on reports and has no classes: pass classes "
                "(a classes CSV with name,description) to classify zero-shot"
            )
        chosen = stored
    else:
        chosen = _class_list(classes)
        if kind == "label" and [c.name for c in chosen] != [c.name for c in stored]:
            raise RunError(
                f"{run} is a label model trained on classes {[c.name for c in stored]}; "
                f"it cannot classify {[c.name for c in chosen]}"
            )
    model = build_model(info)
    load_weights(model, weights)
    return SlideClassifier(
        model,
        kind=kind,
        model_name=info["model"]["name"],
        classes=[c.name for c in chosen],
        descriptions=[c.description for c in chosen],
        run_info=info,
        device=device,
    )
