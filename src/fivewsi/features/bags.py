"""Bags of patch features on disk: fivewsi writes, and reads, the CLAM / TRIDENT HDF5 layout.

A bag file holds ``features`` ``[N, D]`` float32 and ``coords`` ``[N, 2]`` int64 (level-0
top-left x, y of each patch). ``coords`` carries TRIDENT's attributes (``patch_size``,
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``level0_width``,
``level0_height``, ``name``); ``features`` carries the encoder and the resolutions.
:func:`load_bag` also reads CLAM files (``coords`` attributes ``patch_level`` / ``patch_size``,
features possibly ``[1, N, D]``) and CLAM's feature-only ``.pt`` files.

Every bag is checked where it is read (:func:`check_bag`, called by :func:`load_bag`, which
training, evaluation and prediction all use): at least one patch, features ``[N, D]`` with
only finite values, coordinates ``[N, 2]`` when present. A bag that fails is a
:class:`BagError` naming the file and the fault, so the caller skips (training) or fails
(evaluation, prediction) that one slide.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fivewsi.errors import FeatureStageError
from fivewsi.utils.atomic import atomic_path

#: Attributes TRIDENT writes on ``coords``; fivewsi writes all of them.
TRIDENT_COORDS_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "level0_width",
    "level0_height",
    "name",
)


class BagError(FeatureStageError):
    """A feature file is missing, unreadable or not a bag of patch features."""


#: What a ``.pt`` file that cannot be read as plain tensors is told (torch's own message is
#: dropped: it suggests unsafe loading).
PT_REFUSED = "not a plain tensor file; fivewsi loads .pt bags with weights_only=True"


def check_bag(features: np.ndarray, coords: np.ndarray | None, name: str) -> None:
    """Raise :class:`BagError` unless ``features`` is ``[N, D]`` (N ≥ 1) and finite and
    ``coords`` (when given) is ``[N, 2]``.

    Example:
        >>> check_bag(np.ones((2, 3)), np.zeros((2, 2)), "s1.h5")
        >>> check_bag(np.array([[1.0, np.nan]]), None, "s1.h5")
        Traceback (most recent call last):
        ...
        fivewsi.features.bags.BagError: s1.h5: 1 of 2 feature values are not finite (NaN or Inf)
    """
    if features.ndim != 2:
        raise BagError(f"{name}: features must be [N, D], got shape {features.shape}")
    if features.shape[0] == 0:
        raise BagError(f"{name}: no patches (an empty bag)")
    if features.shape[1] == 0:
        raise BagError(f"{name}: features have size 0 ({features.shape})")
    finite = np.isfinite(features)
    if not finite.all():
        bad = int(features.size - np.count_nonzero(finite))
        raise BagError(
            f"{name}: {bad} of {features.size} feature values are not finite (NaN or Inf)"
        )
    if coords is not None and (coords.ndim != 2 or coords.shape != (features.shape[0], 2)):
        raise BagError(
            f"{name}: coords must be [N, 2] for {features.shape[0]} features, "
            f"got shape {coords.shape}"
        )


@dataclass
class Bag:
    """One slide's bag of patch features.

    Attributes:
        slide_id: the slide's id (file name without extension).
        features: ``[N, D]`` float32 patch features.
        coords: ``[N, 2]`` int64 level-0 top-left (x, y) of each patch, or None when the file
            has none (CLAM ``.pt``).
        attrs: attributes of ``coords`` and ``features`` merged (``coords`` wins on clashes).
    """

    slide_id: str
    features: np.ndarray
    coords: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def patch_size_level0(self) -> int | None:
        """Side of a patch in level-0 pixels, from TRIDENT or CLAM attributes."""
        if "patch_size_level0" in self.attrs:
            return int(self.attrs["patch_size_level0"])
        if int(self.attrs.get("patch_level", -1)) == 0 and "patch_size" in self.attrs:  # CLAM
            return int(self.attrs["patch_size"])
        return None


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_bag(
    path: str | os.PathLike[str],
    features: np.ndarray,
    coords: np.ndarray,
    coords_attrs: dict[str, Any],
    features_attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a bag atomically (temporary file, then rename) and return its path.

    The HDF5 file is built in memory and written with plain file I/O: libhdf5 crashes the
    process (SIGSEGV) when the disk fills under it, whereas a plain write raises ``OSError``
    (ENOSPC) and the atomic write removes its partial file.
    """
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or features.shape[0] != coords.shape[0]:
        raise BagError(f"features {features.shape} and coords {coords.shape} do not match")
    path = Path(path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        for name, data, attrs in (("features", features, features_attrs or {}),
                                  ("coords", coords, coords_attrs)):
            dataset = handle.create_dataset(name, data=data)
            for key, value in attrs.items():
                if value is not None:
                    dataset.attrs[key] = value
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
    return path


def read_bag_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Attributes of a bag file (``coords`` over ``features``) without reading the arrays."""
    with h5py.File(path, "r") as handle:
        attrs: dict[str, Any] = {}
        for name in ("features", "coords"):
            if name in handle:
                attrs.update({k: _plain(v) for k, v in handle[name].attrs.items()})
        attrs["n_patches"] = int(handle["features"].shape[-2]) if "features" in handle else 0
    return attrs


def load_bag(path: str | os.PathLike[str]) -> Bag:
    """Read a bag written by fivewsi, TRIDENT or CLAM (``.h5``), or a CLAM ``.pt`` file.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s1.h5"
        >>> _ = save_bag(p, np.ones((3, 4)), np.zeros((3, 2)), {"patch_size": 256})
        >>> load_bag(p).features.shape
        (3, 4)
    """
    path = Path(path)
    if not path.is_file():
        raise BagError(f"feature file not found: {path}")
    if path.suffix == ".pt":
        return _load_pt(path)
    try:
        with h5py.File(path, "r") as handle:
            if "features" not in handle:
                raise BagError(f"{path.name}: no 'features' dataset (has {list(handle)})")
            features = np.asarray(handle["features"][()], dtype=np.float32)
            has_coords = "coords" in handle
            coords = np.asarray(handle["coords"][()]) if has_coords else None
            attrs = {k: _plain(v) for k, v in handle["features"].attrs.items()}
            if "coords" in handle:
                attrs.update({k: _plain(v) for k, v in handle["coords"].attrs.items()})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BagError(f"cannot read feature file {path}: {exc}") from exc
    features = _squeeze_bag(features, path)
    if coords is not None:
        if coords.ndim == 3 and coords.shape[0] == 1:  # a CLAM batch axis, as for features
            coords = coords[0]
        if coords.dtype.kind not in "iuf" or (
            coords.dtype.kind == "f" and not np.isfinite(coords).all()
        ):
            raise BagError(f"{path.name}: coords are not finite numbers ({coords.dtype})")
        coords = coords.astype(np.int64)
        if coords.ndim == 2 and coords.shape[0] != features.shape[0]:
            raise BagError(
                f"{path.name}: {features.shape[0]} features but {coords.shape[0]} coords"
            )
    check_bag(features, coords, path.name)
    slide_id = str(attrs.get("name") or _slide_id(path))
    return Bag(slide_id, features, coords, attrs, path)


def _squeeze_bag(features: np.ndarray, path: Path) -> np.ndarray:
    if features.ndim == 3 and features.shape[0] == 1:  # some CLAM exports keep a batch axis
        features = features[0]
    if features.ndim != 2:
        raise BagError(f"{path.name}: features must be [N, D], got shape {features.shape}")
    return features


def _load_pt(path: Path) -> Bag:
    import torch

    # Feature files may come from anywhere: never unpickle arbitrary objects. Torch's message
    # for a refused or torn file advises unsafe loading: it is not passed on.
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (torn zip), EOFError, ...
        raise BagError(f"{path.name}: {PT_REFUSED} ({type(exc).__name__})") from None
    if isinstance(tensor, dict) and "features" in tensor:
        tensor = tensor["features"]
    if not isinstance(tensor, torch.Tensor):
        raise BagError(f"{path.name}: expected a tensor of features, got {type(tensor).__name__}")
    try:
        array = tensor.detach().float().numpy()
    except (RuntimeError, TypeError) as exc:
        raise BagError(f"{path.name}: not a tensor of numbers ({exc})") from None
    features = _squeeze_bag(array, path)
    check_bag(features, None, path.name)
    return Bag(_slide_id(path), features, None, {}, path)


def _slide_id(path: Path) -> str:
    # Imported here: the slides package loads OpenCV, which reading a bag does not need.
    from fivewsi.slides.readers import slide_id_from_path

    return slide_id_from_path(path)
