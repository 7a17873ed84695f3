"""The default patch encoder ``he-handcrafted``: fast, deterministic H&E features, no weights.

Each 2x2 block of a patch is averaged (what a camera with twice the pixel size records), turned
into optical density (OD, natural log) and unmixed with the Ruifrok & Johnston H-E-DAB stain
matrix into hematoxylin (H), eosin (E) and residual (R) concentration maps. Colour and
composition statistics come from those maps; texture comes from the H (and E) maps at 1/2, 1/4
and 1/8 of the input resolution ("H2, H4, H8" in the names). Every feature has a fixed scale,
never a statistic of the data, so bags from different runs and cohorts are comparable.
``FEATURE_NAMES`` names the columns and ``BLOCKS`` maps each block name to its column slice.

Blocks (``DIM`` = 85 columns; px = input pixels):

=======  ============  ==================================================================
columns  block         measures
=======  ============  ==================================================================
0-11     stain_stats   H and E mean, std, 10/50/90 % quantiles; R mean and std (OD)
12-14    tissue_stain  H and E means over tissue pixels; H share of the two
15-30    stain_hist    8-bin histograms of H and E (square-rooted fractions)
31-36    composition   background, dark, nuclear, dense-nuclear, eosin-rich and
                       residual-rich pixel fractions (square-rooted)
37-51    gradients     H at 1/2 and 1/4, E at 1/4 resolution: RMS gradient, its
                       heterogeneity, edge fraction, global and local orientation coherence
52-60    blobs         H difference-of-Gaussians at 1/2, 1/4, 1/8 resolution: mean positive
                       response, band energy, blob fraction
61-80    lbp           rotation-invariant uniform LBP histograms of H at 1/2 and 1/4
                       resolution (square-rooted fractions)
81-84    autocorr      H autocorrelation at diagonal lags of 3, 6, 11 and 23 px
=======  ============  ==================================================================

``docs/encoders.md`` explains each block, its scaling and why it is informative for H&E. One
instance keeps work buffers between calls: use one instance per thread.

Example:
    >>> import torch
    >>> encoder = HandcraftedHE()
    >>> encoder(torch.full((2, 256, 256, 3), 255, dtype=torch.uint8)).shape
    torch.Size([2, 85])
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from fivewsi.features.registry import PatchEncoder, register_encoder

#: Ruifrok & Johnston (2001) optical-density vectors (R, G, B) of hematoxylin, eosin and DAB.
RUIFROK_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

#: Bumped whenever a feature's definition changes; stored with the bags (``describe``).
FEATURE_VERSION = 1

#: Smallest accepted patch side: the coarsest texture level (1/8) keeps 4 x 4 pixels.
MIN_SIZE = 32

# Thresholds, in natural-log OD units of the half-resolution maps.
BACKGROUND_OD = 0.15  # every channel brighter than ~219/255: glass, not tissue
DARK_OD = 1.5  # mean channel darker than ~56/255: folds, ink, debris
NUCLEAR_H = (0.5, 1.0)  # H of nuclei, and of dense (hyperchromatic, lymphocyte) nuclei
EOSIN_RICH_E = 0.5  # E of cytoplasm-, collagen- or red-cell-rich pixels
RESIDUAL_RICH_R = 1.0  # colour neither H nor E explains: pigment, ink, odd staining
EDGE_OD = 0.1  # gradient magnitude (OD per pixel of the level) counted as an edge
BLOB_OD = 0.1  # difference-of-Gaussians response counted as a blob
LBP_TOLERANCE = 0.03  # smaller rises count as flat, so sensor noise is not texture
AUTOCORR_VAR_FLOOR = 1e-4  # (0.01 OD)^2: flat, noise-only maps read as smooth (rho ~ 1)
HETEROGENEITY_FLOOR = 0.01  # OD per pixel added to the mean local gradient before dividing

#: Fine histograms (quantiles, composition): 32 bins of 0.1 OD from -0.3, ends open.
HIST_LOW, HIST_WIDTH, HIST_BINS = -0.3, 0.1, 32
QUANTILES = (0.1, 0.5, 0.9)
#: Inner edges (OD) of the 8-bin H and E histograms; the first and last bins are open-ended.
H_COARSE_EDGES = (0.0, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5)
E_COARSE_EDGES = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.9)

#: Fixed multipliers bringing gradient and blob strengths (OD per pixel) to O(1).
GRADIENT_SCALE = 3.0
BLOB_SCALE = 5.0

#: Local coherence window, in pixels of each level (32 px at 1/2, 64 px at 1/4 resolution).
COHERENCE_WINDOW = 16

#: Input pixels per CPU chunk (16 patches of 256 px): small chunks keep their maps in cache.
_CPU_CHUNK_PIXELS = 16 * 256 * 256

#: Circular order of the 8 LBP neighbours as (row, column) offsets in a 3x3 window.
_LBP_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))
_LBP_LABELS = 10  # 0-8 set bits of a uniform pattern, 9 = non-uniform


def _block_names() -> dict[str, list[str]]:
    """Column names per block, in output order."""
    quantiles = [f"q{round(q * 100)}" for q in QUANTILES]
    grad_stats = ("rms", "heterogeneity", "edge_frac", "coherence", "local_coherence")
    lbp_labels = [*map(str, range(_LBP_LABELS - 1)), "nonuniform"]
    return {
        "stain_stats": [
            *(f"{stain}_{stat}" for stain in "HE" for stat in ("mean", "std", *quantiles)),
            "R_mean",
            "R_std",
        ],
        "tissue_stain": ["H_tissue_mean", "E_tissue_mean", "H_share"],
        "stain_hist": [f"{stain}_hist{i}" for stain in "HE" for i in range(8)],
        "composition": [
            "background_frac",
            "dark_frac",
            "nuclear_frac",
            "dense_nuclear_frac",
            "eosin_rich_frac",
            "residual_rich_frac",
        ],
        "gradients": [
            f"{level}_grad_{stat}" for level in ("H2", "H4", "E4") for stat in grad_stats
        ],
        "blobs": [f"H{px}_dog_{stat}" for px in (2, 4, 8) for stat in ("pos", "energy", "frac")],
        "lbp": [f"H{px}_lbp_{label}" for px in (2, 4) for label in lbp_labels],
        "autocorr": [f"H_autocorr{lag}px" for lag in (3, 6, 11, 23)],
    }


def _layout() -> tuple[tuple[str, ...], dict[str, slice]]:
    """All column names in order, and each block's column slice."""
    names: list[str] = []
    blocks: dict[str, slice] = {}
    for block, block_names in _block_names().items():
        blocks[block] = slice(len(names), len(names) + len(block_names))
        names.extend(block_names)
    return tuple(names), blocks


#: Column names in output order, and the column slice of each block.
FEATURE_NAMES, BLOCKS = _layout()
DIM = len(FEATURE_NAMES)


def _check_patches(patches: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``patches`` is uint8 ``[B, H, W, 3]`` with H, W >= 32."""
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise ValueError(f"expected RGB patches [B, H, W, 3], got shape {tuple(patches.shape)}")
    if patches.dtype != torch.uint8:
        raise ValueError(f"expected uint8 patches, got {patches.dtype}")
    if min(patches.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"patches must be at least {MIN_SIZE} px, got {tuple(patches.shape)}")


#: Memory slot of each work tensor. Tensors sharing a slot are never alive together; sharing
#: keeps the per-chunk working set small enough to stay in the CPU caches.
_SLOTS = {
    "vertical": "a", "index": "a", "levels": "a", "d1": "a", "across": "a", "lbp_centre": "a",
    "sums": "b", "tissue": "b", "d2": "b", "band": "b", "lbp_codes": "b",
    "od": "c", "weighted": "c", "terms": "c", "lbp_rise": "c",
    "conc": "d",
    "he4": "e",
}  # fmt: skip


class _Scratch:
    """Work tensors kept between calls (contents are garbage until written), by name.

    Multi-megabyte CPU tensors allocated afresh for every chunk are page-faulted in each time
    (glibc hands freed heap tops back to the system), which cost about a quarter of the run
    time. Names map to memory slots through ``_SLOTS``.

    Example:
        >>> scratch = _Scratch()
        >>> a = scratch("od", (2, 4), torch.float32, torch.device("cpu"))
        >>> b = scratch("terms", (4,), torch.int32, torch.device("cpu"))
        >>> a.data_ptr() == b.data_ptr()  # same slot, reinterpreted
        True
    """

    def __init__(self) -> None:
        self._slots: dict[str, torch.Tensor] = {}

    def __call__(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        slot = _SLOTS[name]
        nbytes = math.prod(shape) * dtype.itemsize
        store = self._slots.get(slot)
        if store is None or store.numel() < nbytes or store.device != device:
            # float32-aligned raw bytes, viewed as whatever dtype the caller needs
            store = torch.empty((nbytes + 3) // 4, dtype=torch.float32, device=device)
            store = store.view(torch.uint8)
            self._slots[slot] = store
        return store[:nbytes].view(dtype).view(shape)

    def like(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A float32 work tensor of ``shape`` on ``like``'s device."""
        return self(name, shape, torch.float32, like.device)


# --- maps ---------------------------------------------------------------------------------


def _od_lut() -> torch.Tensor:
    """OD of every 2x2 channel sum 0..1020: -ln((mean + 1) / 256) = ln 1024 - ln(sum + 4).

    Example:
        >>> round(float(_od_lut()[1020]), 6), round(float(_od_lut()[0]), 3)
        (0.0, 5.545)
    """
    return math.log(1024.0) - torch.log(torch.arange(1021, dtype=torch.float64) + 4).float()


def _half_res_od(patches: torch.Tensor, od_lut: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Optical density of each 2x2 block, planar float32 ``[B, 3, H/2, W/2]``.

    Summing light before taking the log models a camera with 2x larger pixels, and quarters
    all later work. The sums (at most 1020) fit in int16.
    """
    b, h, w, _ = patches.shape
    h, w, device = h // 2, w // 2, patches.device
    rows = patches[:, : 2 * h, : 2 * w].reshape(b * h, 2, w * 6)
    vertical = scratch("vertical", (b * h, w * 6), torch.int16, device)
    pairs = vertical.copy_(rows[:, 0]).add_(rows[:, 1]).view(b, h, w, 2, 3)
    sums = scratch("sums", (b, 3, h, w), torch.int16, device)
    # Writing through a permuted view makes the layout planar within the same pass.
    torch.add(pairs[:, :, :, 0], pairs[:, :, :, 1], out=sums.permute(0, 2, 3, 1))
    index = scratch("index", (sums.numel(),), torch.int32, device).copy_(sums.view(-1))
    od = scratch("od", (b, 3, h, w), torch.float32, device)
    # A table lookup is several times faster than a float log on CPU.
    torch.index_select(od_lut, 0, index, out=od.view(-1))
    return od


def _unmix(od: torch.Tensor, unmix: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """H, E, R concentration maps ``[B, 3, h, w]`` from OD maps: ``unmix @ OD`` per pixel."""
    b, _, h, w = od.shape
    conc = scratch.like("conc", (b, 3, h, w), od)
    torch.matmul(unmix, od.view(b, 3, h * w), out=conc.view(b, 3, h * w))
    return conc


def _pool2(maps: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """2x2 average pooling over the last two dims (an odd last row or column is dropped).

    Example:
        >>> _pool2(torch.arange(16.0).view(1, 4, 4)).tolist()
        [[[2.5, 4.5], [10.5, 12.5]]]
    """
    h, w = maps.shape[-2] // 2 * 2, maps.shape[-1] // 2 * 2
    total = torch.add(maps[..., 0:h:2, 0:w:2], maps[..., 1:h:2, 0:w:2], out=out)
    return total.add_(maps[..., 0:h:2, 1:w:2]).add_(maps[..., 1:h:2, 1:w:2]).mul_(0.25)


def _window_sum(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Sums of ``[N, h, w]`` over non-overlapping ``size`` x ``size`` windows (edges dropped)."""
    n, h, w = maps.shape
    h, w = h // size * size, w // size * size
    # Two contiguous reductions are much faster on CPU than one over strided dims.
    rows = maps[:, :h, :w].reshape(n, h // size, size, w).sum(2)
    return rows.view(n, h // size, w // size, size).sum(-1)


# --- statistics ---------------------------------------------------------------------------


def _mean(maps: torch.Tensor) -> torch.Tensor:
    """Per-map mean over the last two dims."""
    return maps.mean((-2, -1))


def _mean_std(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map mean and standard deviation over the last two dims.

    ``vector_norm`` sums squares without a temporary map; ``torch.var_mean`` is far slower.

    Example:
        >>> [t.tolist() for t in _mean_std(torch.tensor([[[1.0, 3.0]]]))]
        [[2.0], [1.0]]
    """
    mean = _mean(maps)
    mean_square = torch.linalg.vector_norm(maps, dim=(-2, -1)).square_()
    mean_square /= maps.shape[-2] * maps.shape[-1]
    return mean, (mean_square - mean * mean).clamp_min_(0).sqrt_()


def _negative_frac_(values: torch.Tensor) -> torch.Tensor:
    """Per-map fraction of negative values; overwrites ``values`` with their sign masks.

    Shifting the float sign bit down (-1 where negative) is several times faster on CPU than
    a bool comparison.

    Example:
        >>> _negative_frac_(torch.tensor([[[-1.0, 2.0], [-0.5, 0.0]]])).tolist()
        [0.5]
    """
    signs = values.view(torch.int32).bitwise_right_shift_(31)
    # An int32 accumulator: the default int64 sum first copies the whole map.
    count = signs.sum((-2, -1), dtype=torch.int32).neg_().to(torch.float32)
    return count.div_(values.shape[-2] * values.shape[-1])


def _batched_histogram_(labels: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised histograms ``[..., bins]`` of int32 label maps ``[..., h, w]`` (which are
    overwritten).

    Example:
        >>> _batched_histogram_(torch.tensor([[[0, 1], [1, 1]]], dtype=torch.int32), 3).tolist()
        [[0.25, 0.75, 0.0]]
    """
    lead = labels.shape[:-2]
    maps = math.prod(lead)
    # Offsetting each map by ``bins`` lets one bincount do every histogram of the batch.
    offsets = torch.arange(maps, device=labels.device, dtype=torch.int32).mul_(bins)
    index = labels.view(maps, -1).add_(offsets.unsqueeze(1))
    counts = torch.bincount(index.view(-1), minlength=maps * bins)
    return counts.view(*lead, bins).to(torch.float32).div_(labels.shape[-2] * labels.shape[-1])


def _fine_histograms(conc: torch.Tensor) -> torch.Tensor:
    """Fine histograms ``[..., HIST_BINS]`` of concentration maps ``[..., h, w]``."""
    bins = conc.mul(1.0 / HIST_WIDTH).sub_(HIST_LOW / HIST_WIDTH).clamp_(0, HIST_BINS - 1)
    return _batched_histogram_(bins.to(torch.int32), HIST_BINS)


def _quantiles(hist: torch.Tensor) -> torch.Tensor:
    """``QUANTILES`` ``[..., 3]`` of fine histograms, interpolating linearly within a bin.

    Example:
        >>> hist = torch.zeros(1, HIST_BINS); hist[0, 5] = 1.0  # all mass in [0.2, 0.3)
        >>> [round(q, 2) for q in _quantiles(hist)[0].tolist()]
        [0.21, 0.25, 0.29]
    """
    cdf = hist.cumsum(-1)
    q = torch.tensor(QUANTILES, device=hist.device).expand(*hist.shape[:-1], len(QUANTILES))
    k = (cdf.unsqueeze(-2) < q.unsqueeze(-1)).sum(-1).clamp_(max=HIST_BINS - 1)
    below = F.pad(cdf, (1, 0)).gather(-1, k)
    inside = ((q - below) / hist.gather(-1, k).clamp_min(1e-12)).clamp_(0, 1)
    return HIST_LOW + (k + inside) * HIST_WIDTH


def _coarse_matrix(edges: tuple[float, ...]) -> torch.Tensor:
    """0/1 matrix ``[HIST_BINS, 8]`` adding fine bins into the coarse bins cut at ``edges``."""
    centres = HIST_LOW + (torch.arange(HIST_BINS, dtype=torch.float64) + 0.5) * HIST_WIDTH
    coarse = torch.bucketize(centres, torch.tensor(edges, dtype=torch.float64))
    return F.one_hot(coarse, len(edges) + 1).to(torch.float32)


def _above(hist: torch.Tensor, level: float) -> torch.Tensor:
    """Square-rooted fraction ``[B, 1]`` of fine histograms ``[B, HIST_BINS]`` above ``level``
    (a bin edge)."""
    return hist[:, round((level - HIST_LOW) / HIST_WIDTH) :].sum(-1, keepdim=True).sqrt_()


# --- colour blocks ------------------------------------------------------------------------


def _colour_blocks(
    conc: torch.Tensor, od: torch.Tensor, coarse: torch.Tensor, scratch: _Scratch
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """stain_stats, tissue_stain, stain_hist and composition; also the H std per patch."""
    mean, std = _mean_std(conc)
    # Every other pixel (4096 of a 256 px patch) pins quantiles far below the 0.1 OD bins.
    hist = _fine_histograms(conc[:, :2, ::2, ::2])
    he_stats = torch.cat([mean[:, :2, None], std[:, :2, None], _quantiles(hist)], -1)
    stain_stats = torch.cat([he_stats.flatten(1), mean[:, 2:], std[:, 2:]], 1)
    coarse_hist = torch.einsum("bsf,sfc->bsc", hist, coarse).sqrt_().flatten(1)
    levels = _pixel_levels(conc, od, scratch)
    fractions = _negative_frac_(levels).sqrt_()
    composition = [
        fractions[:, :2],
        # Stain levels are bin edges of the fine histograms: no extra pass over the maps.
        _above(hist[:, 0], NUCLEAR_H[0]),
        _above(hist[:, 0], NUCLEAR_H[1]),
        _above(hist[:, 1], EOSIN_RICH_E),
        fractions[:, 2:],
    ]
    glass = levels.view(torch.int32)[:, 0]  # the sign masks left by _negative_frac_
    blocks = [
        stain_stats,
        _tissue_stain(conc, glass, scratch),
        coarse_hist,
        torch.cat(composition, 1),
    ]
    return blocks, std[:, 0]


def _pixel_levels(conc: torch.Tensor, od: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Maps ``[B, 3, h, w]`` that are negative exactly on glass, dark and residual-rich pixels.

    Glass: every channel's OD below ``BACKGROUND_OD``; dark: mean OD above ``DARK_OD``;
    residual-rich: R above ``RESIDUAL_RICH_R``.
    """
    levels = scratch.like("levels", tuple(od.shape), od)
    glass, dark, residual = levels.unbind(1)
    torch.maximum(od[:, 0], od[:, 1], out=glass)
    torch.maximum(glass, od[:, 2], out=glass).sub_(BACKGROUND_OD)
    torch.add(od[:, 0], od[:, 1], out=dark).add_(od[:, 2])
    dark.sub_(3 * DARK_OD).neg_()
    torch.mul(conc[:, 2], -1, out=residual).add_(RESIDUAL_RICH_R)
    return levels


def _tissue_stain(conc: torch.Tensor, glass: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Mean H and E over tissue pixels (0 without tissue) and the H share of the two means.

    ``glass`` is the int32 mask -1 on glass, 0 on tissue.
    """
    b, _, h, w = conc.shape
    tissue = torch.add(glass, 1, out=scratch.like("tissue", (b, 1, h, w), conc)[:, 0])
    count = tissue.sum((-2, -1)).clamp_min_(1).unsqueeze(1)
    weighted = scratch.like("weighted", (b, 2, h, w), conc)
    torch.mul(conc[:, :2], tissue.unsqueeze(1), out=weighted)
    means = weighted.sum((-2, -1)).div_(count)
    positive = means.clamp_min(0)
    share = positive[:, :1] / positive.sum(1, keepdim=True).clamp_min_(1e-6)
    return torch.cat([means, share], 1)


# --- texture blocks -----------------------------------------------------------------------


def _coherence(aa: torch.Tensor, bb: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """Orientation coherence in [0, 1] from summed Roberts-cross terms ``d1^2, d2^2, d1 d2``.

    With gx = (d1 - d2) / 2 and gy = (d1 + d2) / 2 the structure tensor has
    Jxx + Jyy = (d1^2 + d2^2) / 2, Jxx - Jyy = -d1 d2 and 2 Jxy = (d1^2 - d2^2) / 2.

    Example:
        >>> _coherence(*torch.tensor([[1.0], [0.0], [0.0]])).tolist()  # one orientation
        [1.0]
    """
    anisotropy = torch.sqrt((aa - bb).square_().add_(ab.square().mul_(4)))
    return anisotropy / (aa + bb).clamp_min_(1e-6)


def _gradient_stats(maps: torch.Tensor, scratch: _Scratch) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS gradient, heterogeneity, edge fraction, global and local coherence ``[N, 5]`` of
    ``[N, h, w]``, and the mean of d1^2 + d2^2 (for the autocorrelation)."""
    n, h, w = maps.shape
    d1 = torch.sub(
        maps[:, 1:, 1:], maps[:, :-1, :-1], out=scratch.like("d1", (n, h - 1, w - 1), maps)
    )
    d2 = torch.sub(
        maps[:, 1:, :-1], maps[:, :-1, 1:], out=scratch.like("d2", (n, h - 1, w - 1), maps)
    )
    terms = scratch.like("terms", (3, n, h - 1, w - 1), maps)
    torch.mul(d1, d1, out=terms[0])
    torch.mul(d2, d2, out=terms[1])
    torch.mul(d1, d2, out=terms[2])
    totals = terms.sum((-2, -1))
    mean_energy = (totals[0] + totals[1]).div_((h - 1) * (w - 1))  # 2 |grad|^2
    # |grad| > EDGE_OD where 2 |grad|^2 - 2 EDGE_OD^2 is not negative.
    not_edges = torch.add(terms[0], terms[1], out=d1).sub_(2 * EDGE_OD**2)
    edges = (1 - _negative_frac_(not_edges)).sqrt_()
    size = min(COHERENCE_WINDOW, h - 1, w - 1)
    windows = _window_sum(terms.view(3 * n, h - 1, w - 1), size).unflatten(0, (3, n))
    # Energy-weighted mean of window coherences: flat windows have no orientation to count.
    weights = windows[0] + windows[1]
    local = (_coherence(*windows) * weights).sum((-2, -1))
    local = local / weights.sum((-2, -1)).clamp_min_(1e-6)
    rms_mean, rms_std = _mean_std(weights.div_(2 * size * size).sqrt_())
    heterogeneity = rms_std / (rms_mean + HETEROGENEITY_FLOOR)
    rms = mean_energy.mul(0.5).sqrt_().mul_(GRADIENT_SCALE)
    stats = torch.stack([rms, heterogeneity, edges, _coherence(*totals), local], 1)
    return stats, mean_energy


def _dog_stats(maps: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """Mean positive response, energy and blob fraction of ``maps`` minus its 3x3 binomial
    blur, a difference-of-Gaussians band that peaks on dark (H-rich) blobs of ~2 pixels."""
    n, h, w = maps.shape
    across = scratch.like("across", (n, h, w - 2), maps)
    torch.add(maps[:, :, :-2], maps[:, :, 2:], out=across).add_(maps[:, :, 1:-1], alpha=2)
    band = scratch.like("band", (n, h - 2, w - 2), maps)
    torch.add(across[:, :-2], across[:, 2:], out=band).add_(across[:, 1:-1], alpha=2)
    torch.sub(maps[:, 1:-1, 1:-1], band, alpha=1 / 16, out=band)
    positive = torch.clamp(band, min=0, out=across[:, : h - 2, : w - 2])
    stats = [
        _mean(positive) * BLOB_SCALE,
        _mean_std(band)[1] * BLOB_SCALE,  # the band's mean is ~0: its std is its energy
        (1 - _negative_frac_(band.sub_(BLOB_OD))).sqrt_(),
    ]
    return torch.stack(stats, 1)


def _lbp_label_matrix() -> torch.Tensor:
    """0/1 matrix ``[256, 10]`` from 8-bit LBP codes to rotation-invariant uniform labels.

    A code with at most 2 circular 0/1 transitions is labelled by its number of set bits;
    every other code gets label 9.

    Example:
        >>> _lbp_label_matrix()[[0b00000000, 0b00111000, 0b01010101]].argmax(1).tolist()
        [0, 3, 9]
    """
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    turns = (bits != bits.roll(1, 1)).sum(1)
    labels = torch.where(turns <= 2, bits.sum(1), _LBP_LABELS - 1)
    return F.one_hot(labels, _LBP_LABELS).to(torch.float32)


def _lbp_histogram(
    maps: torch.Tensor, labels: torch.Tensor, step: int, scratch: _Scratch
) -> torch.Tensor:
    """Square-rooted histogram of rotation-invariant uniform LBP labels (8 neighbours) of
    ``[N, h, w]``, with centre pixels taken every ``step`` pixels."""
    h, w = maps.shape[-2] - 2, maps.shape[-1] - 2
    centre = maps[:, 1 : h + 1 : step, 1 : w + 1 : step]
    shape = tuple(centre.shape)
    centre = torch.sub(centre, LBP_TOLERANCE, out=scratch.like("lbp_centre", shape, maps))
    codes = scratch("lbp_codes", shape, torch.int32, maps.device).zero_()
    rise = scratch.like("lbp_rise", shape, maps)
    for bit, (dy, dx) in enumerate(_LBP_RING):
        # rise < 0 where the neighbour is higher than the centre (less the tolerance); its
        # sign bit as -1 / 0 sets the code's bit faster than a bool comparison on CPU.
        torch.sub(centre, maps[:, dy : dy + h : step, dx : dx + w : step], out=rise)
        codes.sub_(rise.view(torch.int32).bitwise_right_shift_(31), alpha=1 << bit)
    # A 256-bin code histogram folded by a matrix is cheaper than labelling every pixel.
    return (_batched_histogram_(codes, 256) @ labels).sqrt_()


def _autocorr(mean_energy: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Autocorrelation at one diagonal step from the mean of d1^2 + d2^2 and the map's std.

    For a stationary map E[d^2] = 2 var (1 - rho), so rho = 1 - E[d1^2 + d2^2] / (4 var).
    """
    return (1 - mean_energy / (std * std + AUTOCORR_VAR_FLOOR).mul_(4)).clamp_(-1, 1)


def _diagonal_energy(maps: torch.Tensor, lag: int) -> torch.Tensor:
    """Mean of d1^2 + d2^2 for diagonal differences ``lag`` pixels apart."""
    d1 = maps[:, lag:, lag:] - maps[:, :-lag, :-lag]
    d2 = maps[:, lag:, :-lag] - maps[:, :-lag, lag:]
    return _mean(d1.square_()) + _mean(d2.square_())


# --- stages -------------------------------------------------------------------------------


def _half_res_stage(
    patches: torch.Tensor,
    buffers: dict[str, torch.Tensor],
    scratch: _Scratch,
    he4: torch.Tensor,
) -> list[torch.Tensor]:
    """Everything computed on half-resolution maps; writes the 1/4 resolution H and E maps
    into ``he4`` ``[B, 2, H/4, W/4]``.

    Returns the colour blocks, then the H2 gradients, blobs, LBP and autocorrelation.
    """
    od = _half_res_od(patches, buffers["od_lut"], scratch)
    conc = _unmix(od, buffers["unmix"], scratch)
    blocks, h2_std = _colour_blocks(conc, od, buffers["coarse"], scratch)
    _pool2(conc[:, :2], out=he4)
    h2 = conc[:, 0]
    gradients, energy = _gradient_stats(h2, scratch)
    return [
        *blocks,
        gradients,
        _dog_stats(h2, scratch),
        # Every other centre: as many samples as at 1/4 resolution for a quarter of the work.
        _lbp_histogram(h2, buffers["lbp_labels"], 2, scratch),
        _autocorr(energy, h2_std).unsqueeze(1),
    ]


def _quarter_res_stage(
    he4: torch.Tensor, lbp_labels: torch.Tensor, scratch: _Scratch
) -> list[torch.Tensor]:
    """H4 and E4 gradients, H4 and H8 blobs, H4 LBP and the three coarser autocorrelations."""
    b = he4.shape[0]
    h4 = he4[:, 0]
    h8 = _pool2(h4)
    # H and E share one pass as a batch of 2B maps.
    gradients, energy = _gradient_stats(he4.reshape(2 * b, *he4.shape[2:]), scratch)
    h8_std = _mean_std(h8)[1]
    autocorr = [
        _autocorr(energy.view(b, 2)[:, 0], _mean_std(h4)[1]),
        _autocorr(_diagonal_energy(h8, 1), h8_std),
        _autocorr(_diagonal_energy(h8, 2), h8_std),
    ]
    return [
        gradients.view(b, -1),
        torch.cat([_dog_stats(h4, scratch), _dog_stats(h8, scratch)], 1),
        _lbp_histogram(h4, lbp_labels, 1, scratch),
        torch.stack(autocorr, 1),
    ]


class HandcraftedHE(PatchEncoder):
    """Deterministic hand-crafted H&E features; the module docstring lists the columns.

    Example:
        >>> import torch
        >>> HandcraftedHE()(torch.zeros(1, 64, 64, 3, dtype=torch.uint8)).isfinite().all()
        tensor(True)
    """

    name = "he-handcrafted"
    dim = DIM

    def __init__(self) -> None:
        super().__init__()
        stains = torch.tensor(RUIFROK_HED, dtype=torch.float64)
        stains = stains / stains.norm(dim=1, keepdim=True)
        # Buffers move with ``.to(device)``; rows of ``unmix`` map OD (R, G, B) to H, E, R.
        self.register_buffer("unmix", torch.linalg.inv(stains).T.to(torch.float32).contiguous())
        self.register_buffer("od_lut", _od_lut())
        coarse = torch.stack([_coarse_matrix(H_COARSE_EDGES), _coarse_matrix(E_COARSE_EDGES)])
        self.register_buffer("coarse", coarse)
        self.register_buffer("lbp_labels", _lbp_label_matrix())
        self._scratch = _Scratch()

    def describe(self) -> dict[str, Any]:
        """Name, dim and the feature-definition version, stored with the features."""
        return {**super().describe(), "encoder_feature_version": FEATURE_VERSION}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Features ``[B, DIM]`` float32 of uint8 RGB patches ``[B, H, W, 3]``."""
        _check_patches(patches)
        if patches.shape[0] == 0:
            return torch.zeros((0, DIM), device=patches.device)
        chunk = patches.shape[0]
        if patches.device.type == "cpu":
            chunk = max(1, _CPU_CHUNK_PIXELS // (patches.shape[1] * patches.shape[2]))
        # ``.to`` is free when the module already sits on the patches' device.
        buffers = {name: buffer.to(patches.device) for name, buffer in self.named_buffers()}
        with torch.inference_mode():
            # Half-resolution work in cache-sized chunks; the small 1/4 resolution maps of
            # several chunks together, so that stage's many cheap ops run fewer times.
            groups = patches.split(4 * chunk)
            return torch.cat([self._encode(group, chunk, buffers) for group in groups])

    def _encode(
        self, patches: torch.Tensor, chunk: int, buffers: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        b, h, w, _ = patches.shape
        he4 = self._scratch("he4", (b, 2, h // 4, w // 4), torch.float32, patches.device)
        halves = [
            _half_res_stage(part, buffers, self._scratch, he4[start : start + chunk])
            for start, part in zip(range(0, b, chunk), patches.split(chunk), strict=True)
        ]
        half = [torch.cat(parts) for parts in zip(*halves, strict=True)]
        grad4, dog4, lbp4, autocorr4 = _quarter_res_stage(he4, buffers["lbp_labels"], self._scratch)
        colour, (grad2, dog2, lbp2, autocorr2) = half[:4], half[4:]
        texture = [grad2, grad4, dog2, dog4, lbp2, lbp4, autocorr2, autocorr4]
        return torch.cat([*colour, *texture], 1)


@register_encoder(
    "he-handcrafted",
    dim=DIM,
    description="Hand-crafted H&E colour, composition and texture features (no weights, fast)",
    needs_weights=False,
)
def build(weights: object = None, **kwargs: object) -> PatchEncoder:
    """Build :class:`HandcraftedHE`; it has no weights, so ``weights`` must be None.

    Example:
        >>> build().dim
        85
    """
    if weights is not None:
        raise ValueError("he-handcrafted has no weights; create it with weights=None")
    if kwargs:
        raise ValueError(f"he-handcrafted takes no options, got {sorted(kwargs)}")
    return HandcraftedHE()
