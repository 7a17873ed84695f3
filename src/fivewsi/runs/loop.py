"""The one prediction loop: feature files → predictions, failures recorded per slide.

``evaluate`` (and thereby the few-shot grid) and ``predict`` both call :func:`predict_files`.
Bags are loaded one by one, checked (a file, at least one patch, finite values, coords
matching features — :func:`fivewsi.features.bags.check_bag` — and the model's feature size)
and predicted in padded batches of at most ``max_batch_patches`` patches (``0``: each bag
alone); when a batch fails its bags are predicted one by one, so one bad bag fails alone; a
prediction with non-finite probabilities fails its slide.

Example:
    >>> results = predict_files(load_model("runs/r0"), [("s1", Path("f/s1.h5"))])  # doctest: +SKIP
    >>> [(r.slide_id, r.prediction.predicted, r.error) for r in results]  # doctest: +SKIP
    [('s1', 'LUAD', None)]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fivewsi.features.bags import Bag
    from fivewsi.runs.classifier import SlideClassifier, SlidePrediction

log = logging.getLogger(__name__)

#: Patches predicted together at most (bags are batched until they reach this many).
MAX_BATCH_PATCHES = 1 << 16


@dataclass
class BagResult:
    """One input of :func:`predict_files`: its prediction, or why it has none.

    Attributes:
        slide_id: the id given with the file (it names the prediction).
        path: the feature file (None when there is none).
        prediction: the classifier's output (None when ``error`` is set).
        error: why the slide could not be predicted.
        bag: the loaded bag, when ``keep_bags`` asked for it.
    """

    slide_id: str
    path: Path | None
    prediction: SlidePrediction | None = None
    error: str | None = None
    bag: Bag | None = None


def predict_files(
    classifier: SlideClassifier,
    items: Iterable[tuple[str, Path | None] | tuple[str, Path | None, str | None]],
    *,
    max_batch_patches: int = MAX_BATCH_PATCHES,
    keep_bags: bool = False,
) -> Iterator[BagResult]:
    """Predict ``(slide_id, feature file[, earlier error])`` items; results in input order.

    An item with an earlier error (e.g. its slide failed preprocessing) or no file is passed
    through as failed; load errors, empty bags, a feature size the model does not take and
    errors of the model are recorded on their slide and never stop the others; so is a
    prediction whose class probabilities are not finite.
    """
    from fivewsi.features.bags import BagError, load_bag

    pending: list[tuple[BagResult, Bag]] = []
    done: list[BagResult] = []
    pending_patches = 0
    for item in items:
        slide_id, path = item[0], item[1]
        result = BagResult(slide_id, path, error=item[2] if len(item) > 2 else None)
        if result.error is None and path is None:
            result.error = "no feature file"
        bag = None
        if result.error is None:
            try:
                bag = load_bag(path)  # type: ignore[arg-type]
            except (BagError, OSError, ValueError, RuntimeError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
        if bag is not None:
            if bag.n_patches == 0:
                result.error, bag = "no patches", None
            elif bag.dim != classifier.in_dim:
                result.error = f"feature size {bag.dim}, the model expects {classifier.in_dim}"
                bag = None
        if bag is None:
            done.append(result)
        else:
            bag.slide_id = slide_id  # the given id names the prediction
            full = pending and pending_patches + bag.n_patches > max_batch_patches
            if full:
                yield from _flush(classifier, pending, done, keep_bags)
                pending, done, pending_patches = [], [], 0
            pending.append((result, bag))
            done.append(result)
            pending_patches += bag.n_patches
    yield from _flush(classifier, pending, done, keep_bags)


def _flush(
    classifier: SlideClassifier,
    pending: list[tuple[BagResult, Bag]],
    done: list[BagResult],
    keep_bags: bool,
) -> Iterator[BagResult]:
    if pending:
        _predict(classifier, pending)
        if keep_bags:
            for result, bag in pending:
                result.bag = bag
    yield from done


def _predict(classifier: SlideClassifier, pending: list[tuple[BagResult, Bag]]) -> None:
    try:
        predictions = classifier.predict_batch([bag for _, bag in pending])
    except Exception as exc:  # recorded per slide; the others go on
        if len(pending) == 1:
            log.debug("prediction of %s failed", pending[0][1].slide_id, exc_info=True)
            pending[0][0].error = f"{type(exc).__name__}: {exc}"
            return
        for one in pending:  # one bad bag should not sink the batch: find it
            _predict(classifier, [one])
        return
    for (result, _), prediction in zip(pending, predictions, strict=True):
        probabilities = np.asarray(prediction.probabilities, dtype=np.float64)
        if probabilities.size == 0 or not np.isfinite(probabilities).all():
            # A prediction of NaN is no prediction: the slide fails, never "ok".
            result.error = "the model gave non-finite class probabilities (NaN or Inf)"
            continue
        result.prediction = prediction
