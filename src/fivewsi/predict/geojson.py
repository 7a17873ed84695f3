"""Patch scores as a GeoJSON FeatureCollection that QuPath imports (File → Import objects).

QuPath's conventions (its GeoJSON reader, v0.4 and later): coordinates are level-0 pixels
with the origin at the image's top-left corner; each Feature's ``properties`` carry
``objectType`` (``"tile"``, ``"detection"``, ``"annotation"``, ...), ``measurements`` as an
object mapping name → number, and optionally ``classification`` as ``{"name", "color"}`` with
an RGB triple. JSON has no NaN and QuPath cannot read ``null`` measurements, so a
non-finite score is left out of its patch's measurements (QuPath then shows it as missing).

Features follow the bag's patch order, so feature *i* is row *i* of the bag's ``features``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fivewsi.utils.atomic import atomic_path

log = logging.getLogger(__name__)

OBJECT_TYPES = ("tile", "detection", "annotation")
#: Scores are rounded to this many decimals: plenty for a heatmap, and half the file size.
DEFAULT_DECIMALS = 6


def patch_geojson(
    coords: np.ndarray,
    patch_size_level0: int,
    scores: Mapping[str, np.ndarray],
    *,
    slide_id: str,
    object_type: str = "tile",
    classifications: Sequence[str | None] | None = None,
    class_colors: Mapping[str, tuple[int, int, int]] | None = None,
    decimals: int = DEFAULT_DECIMALS,
) -> dict[str, Any]:
    """A FeatureCollection with one square Polygon per patch and its scores as measurements.

    Args:
        coords: ``[N, 2]`` level-0 top-left (x, y) of the patches.
        patch_size_level0: patch side in level-0 pixels.
        scores: measurement name → ``[N]`` scores (e.g. ``"attention"``, one per question).
        slide_id: recorded in the collection's ``fivewsi`` member (a GeoJSON foreign member,
            which QuPath ignores).
        object_type: QuPath object type of every patch: ``"tile"`` (default), ``"detection"``
            or ``"annotation"``.
        classifications: optional class name per patch (``None`` leaves a patch unclassified).
        class_colors: optional RGB colour per class name for ``classification.color``.
        decimals: scores are rounded to this many decimals.

    Example:
        >>> import numpy as np
        >>> fc = patch_geojson(np.array([[0, 0]]), 256, {"attention": np.array([0.5])},
        ...                    slide_id="s1")
        >>> feature = fc["features"][0]
        >>> feature["geometry"]["coordinates"]
        [[[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]]]
        >>> feature["properties"]
        {'objectType': 'tile', 'measurements': {'attention': 0.5}}
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    if patch_size_level0 <= 0:
        raise ValueError(f"patch_size_level0 must be positive, got {patch_size_level0}")
    coords = np.asarray(coords)
    if coords.size == 0:
        coords = coords.reshape(0, 2)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must have shape [N, 2], got {coords.shape}")
    n = coords.shape[0]
    names = [str(name) for name in scores]
    matrix = np.zeros((n, len(names)), dtype=np.float64)
    for column, (name, values) in enumerate(scores.items()):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape[0] != n:
            raise ValueError(f"measurement {name!r} has {values.shape[0]} scores for {n} patches")
        matrix[:, column] = values
    finite = np.isfinite(matrix)
    rows = np.round(np.where(finite, matrix, 0.0), decimals).tolist()
    complete = finite.all(axis=1).tolist()
    if classifications is not None and len(classifications) != n:
        raise ValueError(f"{len(classifications)} classifications given for {n} patches")
    colors = {str(k): [int(c) for c in v] for k, v in (class_colors or {}).items()}

    # Plain Python ints: numpy integers are not JSON-serialisable.
    x0 = coords[:, 0].astype(np.int64).tolist()
    y0 = coords[:, 1].astype(np.int64).tolist()
    size = int(patch_size_level0)
    features = []
    for i in range(n):
        x, y = x0[i], y0[i]
        x1, y1 = x + size, y + size
        if complete[i]:
            measurements = dict(zip(names, rows[i], strict=True))
        else:
            keep = finite[i]
            measurements = {
                name: value
                for name, value, ok in zip(names, rows[i], keep, strict=True)
                if ok
            }
        properties: dict[str, Any] = {"objectType": object_type, "measurements": measurements}
        if classifications is not None and classifications[i] is not None:
            name = str(classifications[i])
            properties["classification"] = (
                {"name": name, "color": colors[name]} if name in colors else {"name": name}
            )
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    # Closed ring, counter-clockwise in GeoJSON's y-up sense (RFC 7946).
                    "coordinates": [[[x, y], [x1, y], [x1, y1], [x, y1], [x, y]]],
                },
                "properties": properties,
            }
        )
    n_missing = int((~finite).sum())
    if n_missing:
        log.debug("%s: %d non-finite patch scores left out of the GeoJSON", slide_id, n_missing)
    return {
        "type": "FeatureCollection",
        "features": features,
        "fivewsi": {
            "slide_id": str(slide_id),
            "patch_size_level0": size,
            "measurements": names,
        },
    }


def write_geojson(path: str | os.PathLike[str], collection: Mapping[str, Any]) -> Path:
    """Write ``collection`` as compact JSON atomically (NaN refused); return the path.

    Example:
        >>> write_geojson("out/slide-1.geojson", fc)  # doctest: +SKIP
        PosixPath('out/slide-1.geojson')
    """
    path = Path(path)
    # allow_nan=False: a NaN would make the file unreadable for QuPath and most JSON parsers.
    text = json.dumps(collection, separators=(",", ":"), allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
