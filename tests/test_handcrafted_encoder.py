"""The default encoder ``he-handcrafted``: registration, contract, robustness and meaning."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.features.encoders import handcrafted
from fivewsi.features.encoders.handcrafted import BLOCKS, DIM, FEATURE_NAMES, HandcraftedHE
from fivewsi.features.registry import create_encoder, list_encoders

DOCS = Path(__file__).resolve().parents[1] / "docs" / "encoders.md"


@pytest.fixture(scope="module")
def encoder() -> HandcraftedHE:
    return create_encoder("he-handcrafted")


def stained(h: float, e: float, size: int = 128, h_map: np.ndarray | None = None) -> torch.Tensor:
    """A ``[1, size, size, 3]`` patch with H and E concentrations (Beer-Lambert, Ruifrok
    vectors), plus slight deterministic noise; ``h_map`` overrides the uniform H."""
    vectors = np.array(handcrafted.RUIFROK_HED[:2])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    conc_h = np.full((size, size), h) if h_map is None else h_map
    od = conc_h[..., None] * vectors[0] + e * vectors[1]
    od = od + rng.normal(0, 0.01, od.shape)
    rgb = np.clip(np.round(256 * np.exp(-od) - 1), 0, 255).astype(np.uint8)
    return torch.from_numpy(rgb)[None]


def column(features: torch.Tensor, name: str) -> float:
    return float(features[0, FEATURE_NAMES.index(name)])


def test_dim() -> None:
    """One column per feature name (the registry contract is in test_encoder_registry.py)."""
    assert list_encoders()["he-handcrafted"].dim == DIM == len(FEATURE_NAMES) == 85
    assert 64 <= DIM <= 128


def test_refuses_weights_and_options(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="no weights"):
        create_encoder("he-handcrafted", weights=weights)
    with pytest.raises(ValueError, match="no options"):
        create_encoder("he-handcrafted", size=3)


def test_feature_names_and_blocks_tile_the_columns() -> None:
    assert len(set(FEATURE_NAMES)) == DIM
    stops = [0]
    for block in BLOCKS.values():
        assert block.start == stops[-1]
        stops.append(block.stop)
    assert stops[-1] == DIM


@pytest.mark.parametrize("text", ["docs", "module"])
def test_block_table_matches_documentation(text: str) -> None:
    doc = DOCS.read_text() if text == "docs" else handcrafted.__doc__
    assert re.search(rf"\b{DIM}\b", doc)
    for name, block in BLOCKS.items():
        span = f"{block.start}-{block.stop - 1}"
        assert re.search(rf"{span}\s.*\b{name}\b", doc), f"{name} ({span}) not documented"


@pytest.mark.parametrize("size", [224, 256, 512])
def test_shape_dtype_and_describe(encoder: HandcraftedHE, size: int) -> None:
    patches = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8)
    features = encoder(patches)
    assert features.shape == (3, DIM)
    assert features.dtype == torch.float32
    assert features.isfinite().all()
    assert encoder.describe()["encoder"] == "he-handcrafted"
    assert encoder.describe()["encoder_dim"] == DIM


def test_empty_batch(encoder: HandcraftedHE) -> None:
    assert encoder(torch.zeros((0, 64, 64, 3), dtype=torch.uint8)).shape == (0, DIM)


def test_deterministic(encoder: HandcraftedHE) -> None:
    patches = torch.randint(0, 256, (4, 96, 96, 3), dtype=torch.uint8)
    assert torch.equal(encoder(patches), encoder(patches))
    assert torch.equal(encoder(patches), create_encoder("he-handcrafted")(patches))


@pytest.mark.parametrize("chunk_pixels", [None, 2 * 64 * 64])
def test_batch_independence(
    encoder: HandcraftedHE, monkeypatch: pytest.MonkeyPatch, chunk_pixels: int | None
) -> None:
    if chunk_pixels is not None:  # force several chunks (and outer groups) per call
        monkeypatch.setattr(handcrafted, "_CPU_CHUNK_PIXELS", chunk_pixels)
    generator = torch.Generator().manual_seed(1)
    patches = torch.randint(0, 256, (11, 64, 64, 3), dtype=torch.uint8, generator=generator)
    patches[3] = 255
    patches[5, :, :32] = 0
    together = encoder(patches)
    alone = torch.cat([encoder(patch[None]) for patch in patches])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@st.composite
def odd_patches(draw: st.DrawFn) -> torch.Tensor:
    """Patches of any size 32-96 px that stress the numerics: constants, saturated channels,
    binary and uniform noise, stripes."""
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(32, 96)), draw(st.integers(32, 96))
    kind = draw(st.sampled_from(["constant", "channels", "binary", "noise", "stripes"]))
    value = draw(st.integers(0, 255))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "constant":
        array = np.full((b, h, w, 3), value)
    elif kind == "channels":
        array = np.broadcast_to(rng.choice([0, value, 255], (b, 1, 1, 3)), (b, h, w, 3))
    elif kind == "binary":
        array = rng.choice([0, 255], (b, h, w, 3))
    elif kind == "noise":
        array = rng.integers(0, 256, (b, h, w, 3))
    else:
        array = np.where(np.arange(h)[None, :, None, None] % 2 == 0, value, 255 - value)
        array = np.broadcast_to(array, (b, h, w, 3))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8))


@settings(max_examples=60, deadline=None)
@given(patches=odd_patches())
def test_always_finite(patches: torch.Tensor) -> None:
    features = HandcraftedHE()(patches)
    assert features.shape == (patches.shape[0], DIM)
    assert features.isfinite().all()


def test_white_black_and_gray_are_finite_and_sensible(encoder: HandcraftedHE) -> None:
    white = encoder(torch.full((1, 64, 64, 3), 255, dtype=torch.uint8))
    black = encoder(torch.zeros((1, 64, 64, 3), dtype=torch.uint8))
    gray = encoder(torch.full((1, 64, 64, 3), 128, dtype=torch.uint8))
    for features in (white, black, gray):
        assert features.isfinite().all()
        assert column(features, "H2_grad_rms") == 0  # no texture at all
        assert column(features, "H_autocorr3px") == pytest.approx(1)
    assert column(white, "background_frac") == 1
    assert column(white, "nuclear_frac") == 0
    assert column(white, "H_tissue_mean") == 0  # no tissue: 0, not NaN
    assert column(black, "dark_frac") == 1
    assert column(black, "background_frac") == 0


def test_purple_pink_white_differ_as_documented(encoder: HandcraftedHE) -> None:
    purple = encoder(stained(h=0.9, e=0.2))
    pink = encoder(stained(h=0.05, e=0.8))
    white = encoder(stained(h=0.0, e=0.0))
    # stain_stats / tissue_stain: H up for purple, E up for pink.
    assert column(purple, "H_mean") > column(pink, "H_mean") + 0.5
    assert column(pink, "E_mean") > column(purple, "E_mean") + 0.3
    assert column(purple, "H_q50") == pytest.approx(0.9, abs=0.1)
    assert column(pink, "E_q50") == pytest.approx(0.8, abs=0.1)
    assert column(purple, "H_share") > 0.7 > 0.3 > column(pink, "H_share")
    # stain_hist: the purple H mass sits in the 0.7-1.0 bin, pink E in 0.7-0.9.
    assert column(purple, "H_hist5") > 0.9
    assert column(pink, "E_hist6") > 0.9
    # composition
    assert column(white, "background_frac") > 0.9
    assert column(purple, "background_frac") == column(pink, "background_frac") == 0
    assert column(purple, "nuclear_frac") > 0.9 and column(pink, "nuclear_frac") == 0
    assert column(pink, "eosin_rich_frac") > 0.9 and column(purple, "eosin_rich_frac") == 0
    assert column(white, "H_mean") == pytest.approx(0, abs=0.05)


def test_nuclei_raise_blob_and_nuclear_features(encoder: HandcraftedHE) -> None:
    size = 128
    yy, xx = np.mgrid[:size, :size]
    nuclei = np.full((size, size), 0.1)
    for cy, cx in np.random.default_rng(3).integers(8, size - 8, (25, 2)):
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 < 5**2] = 1.2
    spotted = encoder(stained(h=0.0, e=0.5, h_map=nuclei))
    smooth = encoder(stained(h=float(nuclei.mean()), e=0.5))
    for name in ("H2_dog_pos", "H4_dog_pos", "H4_dog_frac", "dense_nuclear_frac", "H2_grad_rms"):
        assert column(spotted, name) > column(smooth, name) + 0.05, name
    # LBP label 0 (a local H maximum) marks nucleus centres.
    assert column(spotted, "H4_lbp_0") > column(smooth, "H4_lbp_0")


def test_oriented_fibres_are_coherent(encoder: HandcraftedHE) -> None:
    size = 128
    xx = np.mgrid[:size, :size][1]
    fibres = encoder(stained(h=0.0, e=0.5, h_map=0.4 + 0.3 * np.sin(xx / 3.0)))
    rng = np.random.default_rng(4)
    blobs = encoder(stained(h=0.0, e=0.5, h_map=0.4 + 0.3 * rng.standard_normal((size, size))))
    for level in ("H2", "H4"):
        assert column(fibres, f"{level}_grad_coherence") > 0.8
        assert column(blobs, f"{level}_grad_coherence") < 0.3
        assert column(fibres, f"{level}_grad_local_coherence") > 0.8
    # Smooth fibres stay correlated over a few pixels; pixel noise does not.
    assert column(fibres, "H_autocorr3px") > 0.5 > 0.1 > column(blobs, "H_autocorr3px")


@pytest.mark.parametrize(
    ("shape", "dtype", "message"),
    [
        ((64, 64, 3), torch.uint8, r"\[B, H, W, 3\]"),
        ((1, 64, 64, 4), torch.uint8, r"\[B, H, W, 3\]"),
        ((1, 3, 64, 64), torch.uint8, r"\[B, H, W, 3\]"),
        ((1, 64, 64, 3), torch.float32, "uint8"),
        ((1, 16, 64, 3), torch.uint8, "at least 32 px"),
    ],
)
def test_rejects_bad_input(
    encoder: HandcraftedHE, shape: tuple[int, ...], dtype: torch.dtype, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encoder(torch.zeros(shape, dtype=dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(encoder: HandcraftedHE) -> None:
    patches = torch.randint(0, 256, (5, 128, 128, 3), dtype=torch.uint8)
    on_gpu = HandcraftedHE().cuda()(patches.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), encoder(patches), atol=1e-3, rtol=1e-3)
