"""A finished run loaded back as a slide classifier.

:func:`load_model` rebuilds the model from the run record (architecture + model arguments),
loads its weights and, for a text-aligned run, its own texts' features, so that predicting a bag
needs neither Lightning nor the text model; the text model loads only for new texts (other class
descriptions, :meth:`SlideClassifier.similarities` with new texts).

Example:
    >>> clf = load_model("runs/luad-lusc")  # doctest: +SKIP
    >>> clf.predict(load_bag("features/slide-1.h5")).predicted  # doctest: +SKIP
    'LUAD'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fivewsi.cohort.table import ClassDescription, read_classes
from fivewsi.errors import RunError
from fivewsi.features.bags import Bag
from fivewsi.model.interfaces import SlideModel, TextAlignedModel
from fivewsi.model.outputs import bag_batch
from fivewsi.reports.questions import QuestionSet, load_question_set
from fivewsi.runs.adapter import TipAdapter, load_adapter
from fivewsi.runs.record import (
    WEIGHTS_FILE,
    CalibrationRecord,
    ModelRecord,
    RunRecord,
    read_record,
)
from fivewsi.runs.weights import load_text_features, load_weights

log = logging.getLogger(__name__)


def build_model(model: ModelRecord, *, lazy: bool = False) -> SlideModel:
    """A fresh model as a record's ``model`` section describes it (weights not loaded)."""
    from fivewsi.model.registry import get_model_spec

    try:
        spec = get_model_spec(model.architecture)
    except KeyError as exc:
        raise RunError(f"run model: {exc.args[0]}") from None
    return spec.build(model.task(), model.args, lazy=lazy)


def record_questions(record: RunRecord) -> QuestionSet:
    """The question set a run was trained with (stored whole in the record)."""
    stored = record.question_set
    if "definition" in stored:
        return QuestionSet.model_validate(stored["definition"])
    return load_question_set(stored.get("name", "lung"))


def attribute_phrases(questions: QuestionSet) -> dict[str, tuple[list[str], list[str]]]:
    """Question key → (its known categories, their rendered phrases), the texts that predict
    scores a slide's fine-grained attributes against."""
    phrases = {}
    for question in questions.questions:
        categories = [c for c in question.render if c in question.categories]
        phrases[question.key] = (categories, [question.render[c] for c in categories])
    return phrases


def own_texts(record: RunRecord) -> list[list[str]]:
    """The run's own texts in the batches prediction encodes them: the question prompts, the
    class descriptions, then each question's attribute phrases."""
    batches = [list(record.model.questions)]
    batches.append([c.description for c in record.classes or []])
    batches += [p for _, p in attribute_phrases(record_questions(record)).values()]
    return batches


@dataclass
class SlidePrediction:
    """A classifier's output for one slide.

    Attributes:
        probabilities: ``[C]`` class probabilities: ``softmax(logits / T)`` with the run's
            calibration temperature T (:attr:`SlideClassifier.temperature`; 1 when uncalibrated).
        predicted: the most probable class.
        embedding: ``[E]`` slide embedding.
        patch_attention: ``[N]`` weight of each patch in the slide embedding (sums to 1).
        prompt_attention: ``[P, N]`` FiVE's per-prompt attention; None for baselines.
        class_attention: ``[N]`` evidence for the predicted class: for FiVE, the prompts'
            attention weighted by how well each prompt's output matches the predicted class's
            description (softmax over prompts); for baselines the patch attention.
        logits: ``[C]`` the raw class scores, before the temperature (None when not known).
    """

    slide_id: str
    probabilities: np.ndarray
    predicted: str
    embedding: np.ndarray
    patch_attention: np.ndarray
    prompt_attention: np.ndarray | None
    class_attention: np.ndarray
    logits: np.ndarray | None = None


class SlideClassifier:
    """A trained model with its classes, ready to score bags.

    Use :func:`load_model` to get one.
    """

    def __init__(
        self,
        model: SlideModel,
        *,
        classes: Sequence[str],
        descriptions: Sequence[str],
        record: RunRecord,
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
        adapter: TipAdapter | None = None,
    ) -> None:
        if not temperature > 0:
            raise RunError(f"the calibration temperature must be positive, got {temperature}")
        self.device = torch.device(device)
        #: Divides the class scores before the softmax (1: uncalibrated).
        self.temperature = float(temperature)
        #: A ``tip-adapter`` run's cache of its shots, added to the class scores (None: none).
        self.adapter = adapter
        if adapter is not None and adapter.n_classes != len(classes):
            raise RunError(f"the adapter cache has {adapter.n_classes} classes, the classifier "
                           f"{len(classes)}")
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.descriptions = list(descriptions)
        self.record = record
        self.prompt_names: list[str] = list(model.prompt_names)
        self._class_embeddings: Tensor | None = None
        self._attribute_texts: dict[str, tuple[list[str], np.ndarray]] | None = None

    @property
    def model_name(self) -> str:
        """The model's registry name."""
        return self.record.model.architecture

    @property
    def kind(self) -> str:
        """``"text"`` for a text-aligned model, ``"label"`` for a label-only one."""
        return "text" if self.model.text_aligned else "label"

    @property
    def in_dim(self) -> int:
        """The patch feature size the model expects."""
        return self.record.model.in_dim

    @property
    def questions(self) -> QuestionSet:
        """The question set the run was trained with (its prompts and fine-grained fields)."""
        return record_questions(self.record)

    @property
    def calibration(self) -> str:
        """In words: whether and how :attr:`SlidePrediction.probabilities` are calibrated.

        Example:
            >>> from fivewsi.runs.record import CalibrationRecord
            >>> calibration_words(CalibrationRecord(temperature=1.5, fitted_on="val",
            ...                                     n_slides=12), 1.5)
            'calibrated: temperature 1.5 fitted on 12 validation slides'
        """
        return calibration_words(self.record.calibration, self.temperature)

    def logit_scale(self) -> float:
        """The factor FiVE multiplies cosine similarities by before a softmax (1 for baselines)."""
        if not isinstance(self.model, TextAlignedModel):
            return 1.0
        probe = torch.ones(1, 1, device=self.device)
        with torch.no_grad():
            return float(self.model.similarity(probe, probe)[0, 0])

    def preprocess_settings(self) -> dict[str, Any]:
        """How the run's features were made (encoder, target mpp, patch size, min tissue).

        From the feature folder's ``preprocess.json`` when training saw one, else from the
        bags' attributes; predict uses them to preprocess new slides the same way.
        """
        settings = dict(self.record.preprocess or {})
        encoder = self.record.feature_encoder
        for key in ("encoder", "target_mpp", "patch_size"):
            if settings.get(key) is None and key in encoder:
                settings[key] = encoder[key]
        return settings

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``[T, E]`` L2-normalised text embeddings (text models only)."""
        model = self._text_model()
        return model.encode_texts(list(texts)).float().cpu().numpy()

    @torch.no_grad()
    def similarities(self, bag: Bag, texts: list[str]) -> np.ndarray:
        """``[T]`` similarity logits (scale × cosine) of the slide to each text."""
        model = self._text_model()
        output = model(bag_batch([bag]).to(self.device))
        scores = model.similarity(output.embedding, model.encode_texts(list(texts)))
        return scores[0].float().cpu().numpy()

    def attribute_keys(self) -> list[str]:
        """Keys of the fine-grained attributes :meth:`attributes` scores ([] for label models)."""
        if not self.model.text_aligned:
            return []
        return [q.key for q in self.questions.questions]

    def attributes(self, prediction: SlidePrediction) -> dict[str, tuple[str, float]]:
        """Question key → (most similar category, its probability) for a text-aligned model."""
        if not self.model.text_aligned:
            return {}
        if self._attribute_texts is None:
            self._attribute_texts = {
                key: (categories, self.embed_texts(phrases))
                for key, (categories, phrases) in attribute_phrases(self.questions).items()
            }
        scale = self.logit_scale()
        found = {}
        for key, (categories, embeddings) in self._attribute_texts.items():
            logits = scale * embeddings @ prediction.embedding
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            best = int(np.argmax(probs))
            found[key] = (categories[best], float(probs[best]))
        return found

    def predict(self, bag: Bag) -> SlidePrediction:
        """Classify one bag using all of its patches."""
        return self.predict_batch([bag])[0]

    @torch.no_grad()
    def predict_batch(self, bags: list[Bag]) -> list[SlidePrediction]:
        """Classify several bags in one padded batch."""
        if not bags:
            return []
        output = self.model(bag_batch(bags).to(self.device))
        logits = self.model.class_logits(output, self.descriptions).float()
        if self.adapter is not None:
            logits = self.adapter.logits(output.embedding, logits, scale=self.logit_scale())
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        predicted = probabilities.argmax(1)
        results = []
        for i, bag in enumerate(bags):
            n = bag.n_patches
            patch = _row(output.patch_attention, i, n)
            prompt = None
            if output.prompt_attention is not None:
                prompt = output.prompt_attention[i, :, :n].float().cpu().numpy()
            klass = patch
            if prompt is not None and output.prompt_tokens is not None:
                klass = self._prompt_weighted(output.prompt_tokens[i], int(predicted[i]), prompt)
            results.append(
                SlidePrediction(
                    slide_id=bag.slide_id,
                    probabilities=probabilities[i].cpu().numpy(),
                    predicted=self.classes[int(predicted[i])],
                    embedding=output.embedding[i].float().cpu().numpy(),
                    patch_attention=patch,
                    prompt_attention=prompt,
                    class_attention=klass,
                    logits=logits[i].cpu().numpy(),
                )
            )
        return results

    def _prompt_weighted(self, tokens: Tensor, klass: int, prompt: np.ndarray) -> np.ndarray:
        model = self._text_model()
        if self._class_embeddings is None:
            self._class_embeddings = model.encode_texts(self.descriptions)
        scores = model.similarity(tokens, self._class_embeddings[klass : klass + 1])[:, 0]
        weights = torch.softmax(scores.float(), dim=0).cpu().numpy()
        combined = (weights[:, None] * prompt).sum(0)
        total = combined.sum()
        return combined / total if total > 0 else combined

    def _text_model(self) -> TextAlignedModel:
        if not isinstance(self.model, TextAlignedModel):
            raise TypeError(f"{self.model_name} is a label model: it has no text side")
        return self.model


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
    stored_texts: bool = True,
) -> SlideClassifier:
    """Load a finished run as a :class:`SlideClassifier`.

    For a run pretrained on reports, ``classes`` (a classes CSV or a list of
    :class:`ClassDescription`) must be given: the model classifies zero-shot by similarity to
    the descriptions. For a classes run they come from ``run.json``; FiVE runs may be given other
    descriptions. A label baseline only knows the classes it was trained on.
    ``stored_texts=False`` ignores the run's stored text features (its text model encodes every
    text; the predictions are the same).

    Example:
        >>> clf = load_model("runs/pretrain", classes="classes.csv")  # doctest: +SKIP
        >>> clf.classes  # doctest: +SKIP
        ['LUAD', 'LUSC']
    """
    run = Path(run)
    record = read_record(run)
    weights = run / WEIGHTS_FILE
    if record.status != "finished" or not weights.is_file():
        raise RunError(f"{run}: the run has not finished (no {WEIGHTS_FILE}); train it first")
    stored = [ClassDescription(c.name, c.description) for c in record.classes or []]
    if classes is None:
        if not stored:
            raise RunError(
                f"{run} was pretrained on reports and has no classes: give --classes "
                "(classes= in Python), a classes CSV with name,description, to classify "
                "zero-shot"
            )
        chosen = stored
    else:
        chosen = _class_list(classes)
        if not record_text_aligned(record) and [c.name for c in chosen] != [
            c.name for c in stored
        ]:
            raise RunError(
                f"{run} is a label model trained on classes {[c.name for c in stored]}; "
                f"it cannot classify {[c.name for c in chosen]}"
            )
    texts_file = run / record.texts_file if record.texts_file and stored_texts else None
    lazy = texts_file is not None and texts_file.is_file()
    model = build_model(record.model, lazy=lazy)
    load_weights(model, weights)
    if lazy and isinstance(model, TextAlignedModel):
        assert texts_file is not None
        model.remember_texts(*load_text_features(texts_file))
    own_classes = [(c.name, c.description) for c in chosen] == [
        (c.name, c.description) for c in stored
    ]
    if record.calibration is not None and not own_classes and record.temperature != 1.0:
        log.info("%s: other class descriptions than the run's: its temperature is not applied",
                 run)
    adapter = None
    if record.adapter_file:
        if own_classes:
            adapter = load_adapter(run / record.adapter_file)
        else:
            log.info("%s: other class descriptions than the run's: its shots' cache is not "
                     "applied (zero-shot scores)", run)
    return SlideClassifier(
        model,
        classes=[c.name for c in chosen],
        descriptions=[c.description for c in chosen],
        record=record,
        device=device,
        # The temperature was fitted on the run's own classes; other descriptions are other
        # scores, which it was not fitted for.
        temperature=record.temperature if own_classes else 1.0,
        adapter=adapter,
    )


def calibration_words(calibration: CalibrationRecord | None, temperature: float) -> str:
    """How probabilities made with ``temperature`` under a run's ``calibration`` are calibrated.

    Example:
        >>> calibration_words(None, 1.0)
        'uncalibrated (softmax of the class scores)'
    """
    not_applied = calibration is not None and temperature == 1.0 != calibration.temperature
    if calibration is None or calibration.fitted_on == "none" or not_applied:
        return "uncalibrated (softmax of the class scores)"
    where = {"val": "validation", "train": "training"}[calibration.fitted_on]
    return (
        f"calibrated: temperature {temperature:.4g} fitted on {calibration.n_slides} "
        f"{where} slides"
    )


def record_text_aligned(record: RunRecord) -> bool:
    """Whether the run's model scores classes by their descriptions."""
    from fivewsi.model.registry import get_model_spec

    try:
        return get_model_spec(record.model.architecture).text_aligned
    except KeyError as exc:
        raise RunError(f"run model: {exc.args[0]}") from None
