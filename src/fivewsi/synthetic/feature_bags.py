"""Feature-level synthetic slides: patch feature bags with a known tumour region and findings.

The generative model of :mod:`fivewsi.synthetic.feature_cohort` (steps 1 and 3-5 of its
docstring): a :class:`FeatureWorld` of random directions shared by all slides, and
:func:`make_bag`, which lays one slide's patches on an irregular tissue grid, grows a tumour
region with its findings and adds the slide's nuisance shift and noise.

Example:
    >>> import numpy as np
    >>> from fivewsi.reports.questions import load_question_set
    >>> from fivewsi.synthetic.lung import draw_categories
    >>> rng = np.random.default_rng(0)
    >>> world = make_world(rng, 8, 3, 6.0, 6.0, 3.0, 4.0, load_question_set("lung"))
    >>> categories = draw_categories("LUAD", rng)
    >>> features, coords, tumour, grid = make_bag(rng, world, "LUAD", categories, (40, 40),
    ...                                           (0.1, 0.1), 5.0, 0.5)
    >>> features.shape[1], coords.shape[1], len(tumour) >= 6
    (8, 2, True)
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic.lung import CLASSES, FIELDS, FINDING

#: Level-0 pixels per patch of the feature grid (patch coordinates are grid cells x this).
PATCH_SIZE = 256


@dataclass(frozen=True)
class FeatureWorld:
    """The random directions shared by every slide of a feature-level cohort."""

    tissue: np.ndarray  # [K, d]
    tumour: np.ndarray  # [d]
    class_axis: np.ndarray  # [d]
    findings: dict[tuple[str, str], np.ndarray]  # (key, category) → [d]
    nuisance: np.ndarray  # [4, d]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_world(
    rng: np.random.Generator,
    dim: int,
    tissue_types: int,
    tissue_strength: float,
    tumour_strength: float,
    class_strength: float,
    attribute_strength: float,
    qs: QuestionSet,
) -> FeatureWorld:
    """Background prototypes, the tumour prototype, the class axis, one direction per finding
    and 4 nuisance directions, each a random unit vector times its strength."""
    tissue = _unit(rng, tissue_types, dim) * tissue_strength
    tumour = _unit(rng, 1, dim)[0] * tumour_strength
    class_axis = _unit(rng, 1, dim)[0] * class_strength
    findings = {}
    for key in FIELDS:
        cats = ([c for c in qs.question(key).categories if c != UNKNOWN]
                if key == "differentiation" else [FINDING[key]])
        for cat in cats:
            findings[key, cat] = _unit(rng, 1, dim)[0] * attribute_strength
    nuisance = _unit(rng, 4, dim)
    return FeatureWorld(tissue, tumour, class_axis, findings, nuisance)


def _tissue_grid(rng: np.random.Generator, target: int) -> np.ndarray:
    """An irregular star-shaped tissue outline: grid cells (row, col) of ~``target`` patches."""
    aspect = rng.uniform(0.7, 1.4)
    harmonics = [(k, rng.uniform(0.0, 0.22 / k**0.5), rng.uniform(0, 2 * np.pi))
                 for k in range(2, 6)]
    r0 = np.sqrt(target / np.pi)
    for _ in range(3):  # rescale until the patch count is close to the target
        half = int(np.ceil(r0 * 1.8 * max(aspect, 1 / aspect))) + 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
        xs, ys = xx / aspect**0.5, yy * aspect**0.5
        angle, radius = np.arctan2(ys, xs), np.hypot(xs, ys)
        edge = r0 * (1 + sum(a * np.cos(k * angle + ph) for k, a, ph in harmonics))
        inside = radius <= edge
        count = int(inside.sum())
        if abs(count - target) <= max(2, 0.02 * target):
            break
        r0 *= np.sqrt(target / max(count, 1))
    cells = np.argwhere(inside)
    return cells - cells.min(axis=0)


def _neighbour_table(cells: np.ndarray) -> np.ndarray:
    """``[n, 4]`` index of each cell's up / down / left / right neighbour, -1 where glass."""
    rows, cols = cells[:, 0] + 1, cells[:, 1] + 1
    index = np.full((rows.max() + 2, cols.max() + 2), -1, dtype=np.int64)
    index[rows, cols] = np.arange(len(cells))
    return np.stack(
        [index[rows - 1, cols], index[rows + 1, cols], index[rows, cols - 1],
         index[rows, cols + 1]],
        axis=1,
    )


def _grow(seed: int, size: int, cells: np.ndarray, neighbours: np.ndarray,
          allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A contiguous set of ``size`` allowed cells grown from ``seed``, nearest first under a
    random elliptical metric (so regions are blobs of varied shape)."""
    angle = rng.uniform(0, np.pi)
    axes = np.array([1.0, rng.uniform(1.0, 2.0)])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    offsets = (cells - cells[seed]) @ rot / axes
    dist = np.hypot(offsets[:, 0], offsets[:, 1]) + rng.uniform(0, 0.3, len(cells))
    chosen, seen = [], {seed}
    heap = [(dist[seed], seed)]
    while heap and len(chosen) < size:
        _, i = heapq.heappop(heap)
        chosen.append(i)
        for j in neighbours[i].tolist():
            if j >= 0 and j not in seen and allowed[j]:
                seen.add(j)
                heapq.heappush(heap, (dist[j], j))
    return np.array(sorted(chosen), dtype=np.int64)


def _depth(neighbours: np.ndarray) -> np.ndarray:
    """Grid steps from each cell to the tissue edge (0 on the edge), by repeated erosion."""
    n = len(neighbours)
    depth = np.zeros(n, dtype=np.int64)
    inside = (neighbours >= 0).all(axis=1)
    padded = np.append(inside, False)  # index -1 (glass) reads False
    while inside.any():
        depth += inside
        inside = inside & padded[neighbours].all(axis=1)
        padded = np.append(inside, False)
    return depth


def _smooth_fields(rng: np.random.Generator, cells: np.ndarray, k: int) -> np.ndarray:
    """``k`` smooth random fields over the cells (each a sum of three low-frequency waves)."""
    theta = rng.uniform(0, 2 * np.pi, 3 * k)
    wavelength = rng.uniform(6.0, 20.0, 3 * k)
    waves = np.stack([np.cos(theta), np.sin(theta)]) * (2 * np.pi / wavelength)
    phase = rng.uniform(0, 2 * np.pi, 3 * k)
    values = np.cos(cells.astype(float) @ waves + phase)
    return values.reshape(len(cells), k, 3).sum(axis=2)


def make_bag(
    rng: np.random.Generator,
    world: FeatureWorld,
    label: str,
    categories: Mapping[str, str],
    n_patches: tuple[int, int],
    tumour_fraction: tuple[float, float],
    nuisance_strength: float,
    noise: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """One slide's bag: ``(features [n, dim] float32, coords [n, 2] level-0 px, tumour patch
    indices, grid (rows, cols))``, patches in row-major order of their coordinates."""
    cells = _tissue_grid(rng, int(rng.integers(n_patches[0], n_patches[1] + 1)))
    n, dim = len(cells), world.tissue.shape[1]
    neighbours = _neighbour_table(cells)
    at_edge = (neighbours < 0).any(axis=1)  # a 4-neighbour is glass

    # Background: tissue prototypes mixed by smooth fields plus per-slide abundances.
    k = world.tissue.shape[0]
    logits = 2.5 * _smooth_fields(rng, cells, k) / np.sqrt(3) + rng.normal(0, 1.0, k)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    features = weights @ world.tissue

    # Tumour region: at the tissue edge when the pleura / adjacent structures are invaded.
    size = max(6, round(n * rng.uniform(*tumour_fraction)))
    edge_invasion = (categories["pleural_invasion"] == "present"
                     or categories["adjacent_invasion"] == "present")
    depth = _depth(neighbours)
    if edge_invasion:
        pool = np.flatnonzero(at_edge)
    else:
        pool = np.flatnonzero(depth >= np.sqrt(size / np.pi) + 1)
        if len(pool) == 0:
            pool = np.flatnonzero(depth == depth.max())
    seed = int(rng.choice(pool))
    everywhere = np.ones(n, dtype=bool)
    tumour = _grow(seed, size, cells, neighbours, everywhere, rng)
    in_tumour = np.zeros(n, dtype=bool)
    in_tumour[tumour] = True
    features[tumour] = 0.25 * features[tumour] + world.tumour
    sign = 0.5 if label == CLASSES[0] else -0.5
    features[tumour] += sign * world.class_axis
    features[tumour] += world.findings["differentiation", categories["differentiation"]]

    outside = ~np.append(in_tumour, False)[neighbours]  # glass counts as outside
    rim = tumour[outside[tumour].any(axis=1)]
    edge_part = tumour[at_edge[tumour]]
    parts = {
        "stas": rim,
        "pleural_invasion": edge_part if len(edge_part) else rim,
        "adjacent_invasion": edge_part if len(edge_part) else rim,
    }
    for key in ("vascular_invasion", "margins"):
        start = int(rng.choice(tumour))
        parts[key] = _grow(start, max(2, round(0.3 * size)), cells, neighbours, in_tumour,
                           rng)
    for key, where in parts.items():
        if categories[key] == FINDING[key]:
            features[where] += world.findings[key, FINDING[key]]

    # Per-slide stain / scanner shift (mostly along the nuisance directions), then noise.
    shift = rng.normal(0, nuisance_strength / 2, 4) @ world.nuisance
    shift += rng.normal(0, nuisance_strength / (2 * np.sqrt(dim)), dim)
    features += shift + rng.normal(0, noise, (n, dim))

    # Patches in row-major order of their level-0 (x, y), as tiling writes them.
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    coords = cells[order][:, ::-1].astype(np.int64) * PATCH_SIZE
    grid = (int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1)
    return features[order].astype(np.float32), coords, np.sort(rank[tumour]), grid
