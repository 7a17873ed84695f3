"""Bags of patch features on disk: fivewsi writes, and reads, the CLAM / TRIDENT HDF5 layout.

A bag file holds ``features`` ``[N, D]`` float32 and ``coords`` ``[N, 2]`` int64 (level-0
top-left x, y of each patch). ``coords`` carries TRIDENT's attributes (``patch_size``,
``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``level0_width``,
``level0_height``, ``name``); ``features`` carries the encoder and the resolutions.
:func:`load_bag` also reads:

- CLAM files (``coords`` attributes ``patch_level`` / ``patch_size``, features possibly
  ``[1, N, D]``) and CLAM's feature-only ``.pt`` files;
- STAMP's HDF5 bags: datasets ``feats`` ``[N, D]`` (float16) and ``coords`` ``[N, 2]``
  (top-left x, y in µm), file attributes ``extractor``, ``unit`` (``"um"``),
  ``tile_size_um``, ``tile_size_px``, ``stamp_version``. The coordinates stay in µm (the file
  does not say the slide's mpp), rounded to whole µm: ``attrs["coords_unit"] == "um"``.
  Historic STAMP files (no unit, a tile stride of 224) hold pixels of 256 µm / 224 px tiles and
  are converted to µm the way STAMP's own reader does;
- slideflow's ``.pt`` bags: a tensor ``[N, D]`` saved with ``torch.save``, the tile locations
  ``[N, 2]`` in a companion ``<slide>.index.npz`` (array ``arr_0``) or ``.index.npy``.

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
            has none (CLAM ``.pt``); in whole µm for STAMP bags (``attrs["coords_unit"]``).
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

    @property
    def grid_step(self) -> float | None:
        """Side of a patch in the units of :attr:`coords`: level-0 pixels, or µm for STAMP
        bags (``patch_size_um``); None when the file does not say.

        Example:
            >>> Bag("s", np.ones((1, 2)), None, {"coords_unit": "um", "patch_size_um": 256.0}
            ...     ).grid_step
            256.0
        """
        if self.attrs.get("coords_unit") == "um":
            step = self.attrs.get("patch_size_um")
            return float(step) if step else None
        side = self.patch_size_level0
        return None if side is None else float(side)


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
            if "features" not in handle and "feats" in handle:
                return _load_stamp(handle, path)
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
    coords, attrs = _slideflow_locations(path, len(features))
    check_bag(features, coords, path.name)
    return Bag(_slide_id(path), features, coords, attrs, path)


#: Companion files of a slideflow ``<slide>.pt`` bag holding its tile locations.
SLIDEFLOW_INDEX_SUFFIXES = (".index.npz", ".index.npy")


def _slideflow_locations(path: Path, n: int) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The tile locations slideflow writes next to ``<slide>.pt``, or (None, {}) if none."""
    for suffix in SLIDEFLOW_INDEX_SUFFIXES:
        index = path.with_name(path.name[: -len(path.suffix)] + suffix)
        if index.is_file():
            break
    else:
        return None, {}
    try:
        if index.name.endswith(".npy"):
            locations = np.load(index, allow_pickle=False)  # never unpickle
        else:
            with np.load(index, allow_pickle=False) as data:
                if not data.files:
                    raise BagError(f"{index.name}: holds no array")
                locations = np.asarray(data["arr_0" if "arr_0" in data.files else data.files[0]])
    except (OSError, ValueError, EOFError) as exc:
        raise BagError(f"{index.name}: cannot read tile locations ({exc})") from None
    coords = _numeric_coords(locations, index)
    if coords.ndim != 2 or coords.shape != (n, 2):
        raise BagError(f"{index.name}: {coords.shape} tile locations for {n} features in "
                       f"{path.name}; expected [{n}, 2]")
    return coords, {"coords_source": "slideflow", "coords_file": index.name}


def _numeric_coords(coords: np.ndarray, path: Path) -> np.ndarray:
    if coords.dtype.kind not in "iuf" or (
        coords.dtype.kind == "f" and not np.isfinite(coords).all()
    ):
        raise BagError(f"{path.name}: coords are not finite numbers ({coords.dtype})")
    return np.rint(coords).astype(np.int64) if coords.dtype.kind == "f" else coords.astype(
        np.int64)


#: Tile grid of historic STAMP files (coordinates in pixels of 256 µm / 224 px tiles).
STAMP_HISTORIC_TILE_UM, STAMP_HISTORIC_TILE_PX = 256.0, 224


def _load_stamp(handle: h5py.File, path: Path) -> Bag:
    """A STAMP bag: ``feats`` ``[N, D]``, ``coords`` in µm, the facts in the file's attributes.

    The three coordinate conventions are the ones STAMP's reader (``stamp.modeling.data.
    get_coords``) accepts: ``tile_size`` with ``unit == "um"`` (STAMP 2), ``tile_size_um``
    (newer), or a stride of about 224 px (historic, 256 µm per 224 px).
    """
    features = _squeeze_bag(np.asarray(handle["feats"][()], dtype=np.float32), path)
    root = {k: _plain(v) for k, v in handle.attrs.items()}
    attrs: dict[str, Any] = {"format": "stamp", **root}
    if "extractor" in root:
        attrs["encoder"] = str(root["extractor"])
    coords = None
    if "coords" in handle:
        raw = np.asarray(handle["coords"][()])
        if raw.dtype.kind not in "iuf" or not np.isfinite(raw.astype(np.float64)).all():
            raise BagError(f"{path.name}: coords are not finite numbers ({raw.dtype})")
        raw = raw.astype(np.float64)
        tile_um = root.get("tile_size_um") or (
            root.get("tile_size") if root.get("unit") == "um" else None
        )
        if tile_um is None:
            if _stride(raw) is None or round(_stride(raw) or 0) != STAMP_HISTORIC_TILE_PX:
                raise BagError(f"{path.name}: a STAMP bag whose coordinates have no unit "
                               "(no tile_size_um attribute); re-extract it with STAMP 2")
            raw = raw / STAMP_HISTORIC_TILE_PX * STAMP_HISTORIC_TILE_UM
            tile_um = STAMP_HISTORIC_TILE_UM
            attrs.setdefault("tile_size_px", STAMP_HISTORIC_TILE_PX)
        attrs["patch_size_um"] = float(tile_um)
        attrs["coords_unit"] = "um"
        if attrs.get("tile_size_px"):
            attrs["patch_size"] = int(attrs["tile_size_px"])
            attrs["target_mpp"] = float(tile_um) / int(attrs["tile_size_px"])
        coords = np.rint(raw).astype(np.int64)
        if coords.ndim == 2 and coords.shape[0] != features.shape[0]:
            raise BagError(f"{path.name}: {features.shape[0]} features but "
                           f"{coords.shape[0]} coords")
    check_bag(features, coords, path.name)
    return Bag(_slide_id(path), features, coords, attrs, path)


def _stride(coords: np.ndarray) -> float | None:
    """The smallest non-zero step between distinct x or y coordinates, None if none."""
    steps = [np.diff(np.unique(coords[:, axis])) for axis in (0, 1)] if coords.ndim == 2 else []
    positive = np.concatenate([s[s > 0] for s in steps]) if steps else np.array([])
    return float(positive.min()) if positive.size else None


def _slide_id(path: Path) -> str:
    # Imported here: the slides package loads OpenCV, which reading a bag does not need.
    from fivewsi.slides.readers import slide_id_from_path

    return slide_id_from_path(path)
