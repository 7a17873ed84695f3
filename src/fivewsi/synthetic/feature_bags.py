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
    >>> features, coords, tumour, grid, evidence = make_bag(
    ...     rng, world, "LUAD", categories, (40, 40), (0.1, 0.1), 5.0, 0.5)
    >>> features.shape[1], coords.shape[1], len(tumour) >= 6
    (8, 2, True)
    >>> sorted(evidence) == sorted(FIELDS), set(evidence["differentiation"]) == set(tumour)
    (True, True)
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fivewsi.reports.questions import QuestionSet
from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic.lung import CLASSES, FIELDS, FINDING

#: Where the findings sit (:func:`make_bag`): ``"tumour"`` (the default, every finding on the
#: tumour region or its parts) or ``"distinct"`` (differentiation in the tumour core, pleural
#: invasion on a strip of tissue edge at the tumour, STAS in satellites away from it).
PLACEMENTS = ("tumour", "distinct")

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
    placement: str = "tumour",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], dict[str, np.ndarray]]:
    """One slide's bag: ``(features [n, dim] float32, coords [n, 2] level-0 px, tumour patch
    indices, grid (rows, cols), evidence)``, patches in row-major order of their coordinates.

    ``evidence`` maps each of :data:`~fivewsi.synthetic.lung.FIELDS` to the sorted indices of
    the patches that carry its finding (empty when the slide does not show the finding;
    differentiation: every patch that carries the grade's direction).

    ``placement="tumour"`` (default) puts every finding on the tumour region or its parts (the
    bags are those of earlier versions, draw for draw). ``"distinct"`` moves three findings so
    that their patches differ: the grade only on the tumour's core (the region less its rim),
    pleural invasion on the tissue-edge patches within 2 grid steps of the tumour (inside or
    outside it), STAS in 2-4 satellite clusters (2-4 patches each, half the tumour prototype
    plus the finding) 3-8 grid steps away from the tumour. Vascular invasion, adjacent
    invasion and margins stay where ``"tumour"`` puts them.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
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
    outside = ~np.append(in_tumour, False)[neighbours]  # glass counts as outside
    rim = tumour[outside[tumour].any(axis=1)]
    graded = tumour
    if placement == "distinct":
        core = np.setdiff1d(tumour, rim)
        graded = core if len(core) >= 2 else tumour
    features[graded] += world.findings["differentiation", categories["differentiation"]]

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
    if placement == "distinct":
        steps = _steps_from(tumour, neighbours)
        strip = np.flatnonzero(at_edge & (steps <= 2))
        parts["pleural_invasion"] = strip if len(strip) else parts["pleural_invasion"]
        satellites = _satellites(rng, cells, neighbours, steps)
        if categories["stas"] == FINDING["stas"] and len(satellites):
            features[satellites] = 0.5 * features[satellites] + 0.5 * world.tumour
        parts["stas"] = satellites if len(satellites) else rim
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
    empty = np.zeros(0, dtype=np.int64)
    evidence = {"differentiation": np.sort(rank[graded])}
    for key in FIELDS[1:]:
        shown = categories[key] == FINDING[key]
        evidence[key] = np.sort(rank[np.unique(parts[key])]) if shown else empty
    return (features[order].astype(np.float32), coords, np.sort(rank[tumour]), grid,
            evidence)


def _steps_from(region: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Grid steps (through tissue, 4-neighbours) from each cell to ``region`` (0 inside it;
    a large number where tissue does not connect)."""
    n = len(neighbours)
    steps = np.full(n, n + 1, dtype=np.int64)
    steps[region] = 0
    frontier, d = np.asarray(region, dtype=np.int64), 0
    while len(frontier):
        d += 1
        nxt = neighbours[frontier].ravel()
        nxt = np.unique(nxt[nxt >= 0])
        nxt = nxt[steps[nxt] > d]
        steps[nxt] = d
        frontier = nxt
    return steps


def _satellites(rng: np.random.Generator, cells: np.ndarray, neighbours: np.ndarray,
                steps: np.ndarray) -> np.ndarray:
    """2-4 small clusters (2-4 cells each) seeded 3-8 grid steps from the tumour and kept at
    least 2 steps from it (sorted cell indices; empty when the tissue has no room)."""
    pool = np.flatnonzero((steps >= 3) & (steps <= 8))
    if len(pool) == 0:
        return np.zeros(0, dtype=np.int64)
    allowed = steps >= 2
    seeds = rng.choice(pool, size=min(len(pool), int(rng.integers(2, 5))), replace=False)
    chosen = [_grow(int(s), int(rng.integers(2, 5)), cells, neighbours, allowed, rng)
              for s in seeds]
    return np.unique(np.concatenate(chosen))
