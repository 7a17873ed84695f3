"""Which feature files a training run reads: find them, check them, the slides to train on.

No torch here: the data plan (:mod:`fivewsi.training.plan`) and evaluation use it cheaply.

Example:
    >>> find_feature_files("/no/such/folder")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Feature file suffixes, preferred first when a slide has several.
FEATURE_SUFFIXES = (".h5", ".pt")


def find_feature_files(features: str | os.PathLike[str]) -> dict[str, Path]:
    """Map slide id → feature file for every bag anywhere under ``features``.

    Works on a ``fivewsi preprocess`` output (``OUT/features/*.h5``), a TRIDENT job folder
    (``20x_256px_0px_overlap/features_<encoder>/*.h5``), CLAM's ``h5_files`` / ``pt_files``, a
    STAMP output folder (``<extractor>/*.h5``), slideflow bags (``<slide>.pt``), or a
    flat folder. ``.h5`` wins over ``.pt`` for the same slide; temporary files are ignored.

    Example:
        >>> find_feature_files("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: ...
    """
    root = Path(features)
    if not root.is_dir():
        raise FileNotFoundError(f"features folder not found: {root}")
    found: dict[str, Path] = {}
    for suffix in FEATURE_SUFFIXES:
        for path in sorted(root.rglob(f"*{suffix}")):
            if path.name.startswith(".") or not path.is_file():
                continue
            slide_id = path.stem
            if slide_id in found:
                if found[slide_id].suffix == suffix and found[slide_id] != path:
                    log.warning("%s: several feature files, using %s", slide_id, found[slide_id])
                continue
            found[slide_id] = path
    return found


@dataclass
class SlideItem:
    """One slide of a training or validation set.

    Attributes:
        slide_id: the slide's id.
        path: its feature file.
        target: class index (classes stage), else None.
        report_index: index of its fine-grained label in the stage's label list (reports stage).
        n_patches: patches in the bag.
    """

    slide_id: str
    path: Path
    target: int | None = None
    report_index: int | None = None
    n_patches: int = 0


@dataclass
class FeatureCheck:
    """Slides whose feature files were found usable, and those that were not (with why)."""

    ok: dict[str, tuple[Path, int]] = field(default_factory=dict)  # id → (path, n_patches)
    missing: list[str] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    dim: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)  # attributes of one usable bag


def check_feature_files(slide_ids: Sequence[str], files: dict[str, Path]) -> FeatureCheck:
    """Read and check each slide's bag and sort the slides into usable and broken.

    A bag is broken when it cannot be read, holds no patches or a value that is not finite,
    its coords do not match its features (:func:`fivewsi.features.bags.check_bag`), or it has
    another feature size than most bags. Missing and broken slides are logged with a count;
    the caller skips them.
    """
    # Imported here: the features package loads torch (its encoders), which a plan does not need.
    from fivewsi.features.bags import BagError

    check = FeatureCheck()
    dims: dict[str, int] = {}
    for slide_id in slide_ids:
        path = files.get(slide_id)
        if path is None:
            check.missing.append(slide_id)
            continue
        try:
            n, dim, attrs = _bag_shape(path)
        except (BagError, OSError, KeyError, ValueError, RuntimeError) as exc:
            check.broken[slide_id] = f"{type(exc).__name__}: {exc}"
            continue
        if n == 0:
            check.broken[slide_id] = "no patches"
            continue
        dims[slide_id] = dim
        check.ok[slide_id] = (path, n)
        if not check.attrs:
            check.attrs = attrs
    if dims:
        values, counts = np.unique(list(dims.values()), return_counts=True)
        check.dim = int(values[np.argmax(counts)])
        for slide_id, dim in dims.items():
            if dim != check.dim:
                check.broken[slide_id] = f"feature size {dim}, most bags have {check.dim}"
                del check.ok[slide_id]
    if check.missing:
        shown = ", ".join(check.missing[:10]) + (" ..." if len(check.missing) > 10 else "")
        log.warning("%d slides have no feature file and are skipped: %s", len(check.missing), shown)
    for slide_id, why in list(check.broken.items())[:10]:
        log.warning("%s: broken feature file, skipped (%s)", slide_id, why)
    if len(check.broken) > 10:
        log.warning("... %d broken feature files in all", len(check.broken))
    return check


def _bag_shape(path: Path) -> tuple[int, int, dict[str, Any]]:
    """Patches, feature size and attributes of a bag, read and checked by ``load_bag``.

    The whole bag is read: a NaN or Inf value, a torn array or mismatched coords must be found
    here, where the slide can be skipped, not in the middle of training.
    """
    from fivewsi.features.bags import load_bag

    bag = load_bag(path)
    return bag.n_patches, bag.dim, dict(bag.attrs)
