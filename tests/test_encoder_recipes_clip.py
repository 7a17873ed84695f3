"""Parity of the non-plain-timm recipes with their published models (reduced size).

For each recipe, ``benchmarks/parity_references_clip.py`` builds the model as its authors
publish it, with random weights saved in the published file format and key names; fivewsi
loads that file or folder strictly through ``create_encoder`` and its features on uint8 patches
must equal the reference forward on the authors' torchvision transform applied to PIL images of
the same patches (max |Δ| ≤ 1e-5). Patches are not of the input size (and not square where the
transform crops), so a wrong resize, crop or embedding rule fails. Where the authors' code is
not on PyPI (CONCH, CTransPath), the full-size tests list every released key and shape.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fivewsi.features.encoders.common import WeightsMismatchError
from fivewsi.features.registry import create_encoder, list_encoders

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("offline", "one_thread")]
pytest.importorskip("timm")
pytest.importorskip("torchvision")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from parity_references_clip import (  # noqa: E402
    REFERENCES,
    Reference,
    _tv_transform,
    conch_text_keys,
)

TOLERANCE = 1e-5


def patches(height: int, width: int, n: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 ``[n, H, W, 3]`` with smooth structure plus noise (resizing filters matter)."""
    gen = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        base = 127 + 90 * np.sin(xx / (5 + 3 * i)) * np.cos(yy / (7 + i))
        rgb = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)
        rgb = rgb + gen.normal(0, 20, (height, width, 3))
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return torch.from_numpy(np.stack(out))


def put_in_cache(cache: Path, repo_id: str, files: list[Path]) -> None:
    """Lay ``files`` out as the HF cache does for ``repo_id`` (refs/main → snapshot)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "2" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in files:
        shutil.copy(file, snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def check_parity(name: str, ref: Reference, x: torch.Tensor, wrong_transform=None,
                 **create_kwargs) -> float:
    """fivewsi's features equal the reference's; returns max |Δ|."""
    encoder = create_encoder(name, **create_kwargs)
    images = [Image.fromarray(p.numpy()) for p in x]
    expected = ref.features(images)
    got = encoder(x)
    assert got.shape == expected.shape == (len(x), encoder.dim)
    delta = (got - expected).abs().max().item()
    assert delta <= TOLERANCE, f"{name}: max |Δ| {delta:.2e}"
    if wrong_transform is not None:  # the check is sensitive to the preprocessing
        assert (ref.features(images, wrong_transform) - expected).abs().max() > 1e-3
    print(f"{name}: max |Δ| {delta:.2e}")
    return delta


# --- transformers ------------------------------------------------------------------------


def test_phikon_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["phikon"](tmp_path / "phikon")
    x = patches(256, 256)  # TRIDENT squashes to 224×224: the same as the recipe on squares
    wrong = _tv_transform((224, 224), ((0.5,) * 3, (0.5,) * 3))
    check_parity("phikon", ref, x, wrong, weights=ref.weights)
    check_parity("phikon", ref, x, weights=ref.weights / "model.safetensors")
    put_in_cache(offline, "owkin/phikon", sorted(ref.weights.iterdir()))
    encoder = create_encoder("phikon")
    assert encoder.describe()["encoder_weights"] == "hf-cache:owkin/phikon"
    check_parity("phikon", ref, x)


def test_phikon_v2_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["phikon-v2"](tmp_path / "phikon-v2")
    x = patches(240, 272)
    wrong = _tv_transform((224, 224), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    check_parity("phikon-v2", ref, x, wrong, weights=ref.weights)
    put_in_cache(offline, "owkin/phikon-v2", sorted(ref.weights.iterdir()))
    check_parity("phikon-v2", ref, x)


def test_plip_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["plip"](tmp_path / "plip")
    x = patches(240, 272)
    wrong = _tv_transform(224, ((0.48145466, 0.4578275, 0.40821073),
                                (0.26862954, 0.26130258, 0.27577711)), crop=224)  # bilinear
    check_parity("plip", ref, x, wrong, weights=ref.weights)
    put_in_cache(offline, "vinid/plip", sorted(ref.weights.iterdir()))
    check_parity("plip", ref, x)


def test_transformers_recipe_refuses_other_models(tmp_path: Path) -> None:
    ref = REFERENCES["phikon"](tmp_path / "vit")
    with pytest.raises(WeightsMismatchError, match="model_type clip"):
        create_encoder("plip", weights=ref.weights)


# --- CONCH -------------------------------------------------------------------------------


def test_conch_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["conch"](tmp_path / "conch")
    x = patches(464, 496, n=2)  # Resize(448) bicubic then CenterCrop(448)
    clip_stats = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    wrong = _tv_transform((448, 448), clip_stats, interpolation="bicubic")  # squashed, no crop
    kwargs = {"arch_overrides": ref.arch_overrides}
    check_parity("conch", ref, x, wrong, weights=ref.weights, **kwargs)
    check_parity("conch", ref, x, weights=ref.weights.parent, **kwargs)  # the folder
    put_in_cache(offline, "MahmoodLab/CONCH", [ref.weights])
    check_parity("conch", ref, x, **kwargs)


def test_conch_projection(tmp_path: Path) -> None:
    """``project=True`` applies proj_contrast, as encode_image(proj_contrast=True) does."""
    ref = REFERENCES["conch"](tmp_path / "conch")
    plain = create_encoder("conch", weights=ref.weights, arch_overrides=ref.arch_overrides)
    projected = create_encoder("conch", weights=ref.weights, arch_overrides=ref.arch_overrides,
                               project=True)
    x = patches(448, 448, n=1)
    proj = torch.load(ref.weights, weights_only=True)["visual.proj_contrast"]
    torch.testing.assert_close(projected(x), plain(x) @ proj, atol=1e-5, rtol=1e-5)


def test_conch_v15_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["conch-v1.5"](tmp_path / "conch15")
    x = patches(464, 496, n=2)  # Resize(448) bilinear then CenterCrop(448); pos-embed 14² → 28²
    wrong = _tv_transform(448, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), crop=448,
                          interpolation="bicubic")
    kwargs = {"arch_overrides": ref.arch_overrides}
    check_parity("conch-v1.5", ref, x, wrong, weights=ref.weights, **kwargs)
    put_in_cache(offline, "MahmoodLab/conchv1_5", [ref.weights])
    check_parity("conch-v1.5", ref, x, **kwargs)


def vit_keys(prefix: str, width: int, depth: int, tokens: int, layerscale: bool
             ) -> dict[str, tuple[int, ...]]:
    """timm VisionTransformer key names and shapes (patch 16, mlp ratio 4, class token)."""
    keys = {
        f"{prefix}cls_token": (1, 1, width), f"{prefix}pos_embed": (1, tokens, width),
        f"{prefix}patch_embed.proj.weight": (width, 3, 16, 16),
        f"{prefix}patch_embed.proj.bias": (width,),
        f"{prefix}norm.weight": (width,), f"{prefix}norm.bias": (width,),
    }
    block = {
        "norm1.weight": (width,), "norm1.bias": (width,),
        "attn.qkv.weight": (3 * width, width), "attn.qkv.bias": (3 * width,),
        "attn.proj.weight": (width, width), "attn.proj.bias": (width,),
        "norm2.weight": (width,), "norm2.bias": (width,),
        "mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,),
        "mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,),
    }
    if layerscale:
        block |= {"ls1.gamma": (width,), "ls2.gamma": (width,)}
    for i in range(depth):
        keys |= {f"{prefix}blocks.{i}.{k}": v for k, v in block.items()}
    return keys


def lazy_state(keys: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes that cost one float each (expanded views)."""
    return {k: torch.zeros(1).expand(shape) if shape else torch.zeros(())
            for k, shape in keys.items()}


#: CONCH v1 pytorch_model.bin, image tower (conch_ViT-B-16.json: ViT-B/16 at 448 → 785 tokens,
#: contrastive pooler 512 over 768, caption pooler 256 queries of 768).
CONCH_V1_VISUAL = {
    **vit_keys("visual.trunk.", 768, 12, 785, layerscale=False),
    "visual.attn_pool_contrast.query": (1, 512),
    "visual.attn_pool_contrast.attn.q_proj_weight": (512, 512),
    "visual.attn_pool_contrast.attn.k_proj_weight": (512, 768),
    "visual.attn_pool_contrast.attn.v_proj_weight": (512, 768),
    "visual.attn_pool_contrast.attn.in_proj_bias": (1536,),
    "visual.attn_pool_contrast.attn.out_proj.weight": (512, 512),
    "visual.attn_pool_contrast.attn.out_proj.bias": (512,),
    "visual.attn_pool_contrast.ln_q.weight": (512,), "visual.attn_pool_contrast.ln_q.bias": (512,),
    "visual.attn_pool_contrast.ln_k.weight": (768,), "visual.attn_pool_contrast.ln_k.bias": (768,),
    "visual.ln_contrast.weight": (512,), "visual.ln_contrast.bias": (512,),
    "visual.proj_contrast": (512, 512),
    "visual.attn_pool_caption.query": (256, 768),
    "visual.attn_pool_caption.attn.in_proj_weight": (2304, 768),
    "visual.attn_pool_caption.attn.in_proj_bias": (2304,),
    "visual.attn_pool_caption.attn.out_proj.weight": (768, 768),
    "visual.attn_pool_caption.attn.out_proj.bias": (768,),
    "visual.attn_pool_caption.ln_q.weight": (768,), "visual.attn_pool_caption.ln_q.bias": (768,),
    "visual.attn_pool_caption.ln_k.weight": (768,), "visual.attn_pool_caption.ln_k.bias": (768,),
    "visual.ln_caption.weight": (768,), "visual.ln_caption.bias": (768,),
}

#: CONCH v1.5 pytorch_model_vision.bin (TRIDENT conchv1_5.py: ViT-L/16 built at 224 → 197
#: tokens, LayerScale, pooler 768 over 1024 with bias-free projections).
CONCH_V15 = {
    **vit_keys("trunk.", 1024, 24, 197, layerscale=True),
    "attn_pool_contrast.query": (1, 768),
    "attn_pool_contrast.ln_k.weight": (1024,), "attn_pool_contrast.ln_k.bias": (1024,),
    "attn_pool_contrast.ln_q.weight": (768,), "attn_pool_contrast.ln_q.bias": (768,),
    "attn_pool_contrast.to_q.weight": (768, 768),
    "attn_pool_contrast.to_kv.weight": (1536, 1024),
    "attn_pool_contrast.to_out.weight": (768, 768),
    "ln_contrast.weight": (768,), "ln_contrast.bias": (768,),
}


def test_conch_full_size_release_keys(tmp_path: Path) -> None:
    """Every key of CONCH v1's pytorch_model.bin (text tower and decoder included) at its
    released shape: the image tower loads strictly, the rest is documented as unused."""
    keys = {**CONCH_V1_VISUAL, **conch_text_keys()}
    # trunk 150, contrastive pooler + norm + projection 14, caption pooler + norm 11, text and
    # decoder outside the blocks 10, per layer 12 (text) + 12 (decoder) + 14 (cross-attention)
    assert len(keys) == 150 + 14 + 11 + 10 + 12 * 38, len(keys)
    weights = tmp_path / "pytorch_model.bin"
    torch.save(lazy_state(keys), weights)
    encoder = create_encoder("conch", weights=weights)
    assert encoder.dim == 512 and encoder.input_size == (448, 448)
    state = lazy_state(keys)
    del state["visual.attn_pool_contrast.attn.k_proj_weight"]
    torch.save(state, weights)
    with pytest.raises(WeightsMismatchError, match="k_proj_weight"):
        create_encoder("conch", weights=weights)


def test_conch_v15_full_size_release_keys(tmp_path: Path) -> None:
    weights = tmp_path / "pytorch_model_vision.bin"
    torch.save(lazy_state(CONCH_V15), weights)
    encoder = create_encoder("conch-v1.5", weights=weights)
    assert encoder.dim == 768 and encoder.input_size == (448, 448)
    state = lazy_state({**CONCH_V15, "trunk.pos_embed": (1, 785, 1024)})
    torch.save(state, weights)  # a 28² grid is resampled to the 14² build grid, as published
    create_encoder("conch-v1.5", weights=weights)
    state = lazy_state({**CONCH_V15, "attn_pool_contrast.to_kv.weight": (1536, 768)})
    torch.save(state, weights)
    with pytest.raises(WeightsMismatchError, match="to_kv"):
        create_encoder("conch-v1.5", weights=weights)


# --- CTransPath --------------------------------------------------------------------------


def test_ctranspath_parity(tmp_path: Path) -> None:
    ref = REFERENCES["ctranspath"](tmp_path / "ctranspath")
    x = patches(256, 256)
    wrong = _tv_transform(224, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                          interpolation="bicubic")
    check_parity("ctranspath", ref, x, wrong, weights=ref.weights,
                 arch_overrides=ref.arch_overrides)
    check_parity("ctranspath", ref, x, weights=ref.weights.parent,
                 arch_overrides=ref.arch_overrides)


def ctranspath_release_keys() -> dict[str, tuple[int, ...]]:
    """ctranspath.pth's ``model`` entry: timm 0.5 Swin-T (96, depths 2-2-6-2, heads 3-6-12-24,
    window 7) with TransPath's ConvStem, head removed."""
    keys: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.0.weight": (12, 3, 3, 3),
        "patch_embed.proj.3.weight": (24, 12, 3, 3),
        "patch_embed.proj.6.weight": (96, 24, 1, 1), "patch_embed.proj.6.bias": (96,),
        "patch_embed.norm.weight": (96,), "patch_embed.norm.bias": (96,),
        "norm.weight": (768,), "norm.bias": (768,),
    }
    for i, c in ((1, 12), (4, 24)):
        for stat in ("weight", "bias", "running_mean", "running_var"):
            keys[f"patch_embed.proj.{i}.{stat}"] = (c,)
        keys[f"patch_embed.proj.{i}.num_batches_tracked"] = ()
    for stage, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24), strict=True)):
        c, side = 96 * 2**stage, 56 // 2**stage
        for block in range(depth):
            p = f"layers.{stage}.blocks.{block}."
            keys |= {
                p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                p + "attn.relative_position_bias_table": (169, heads),
                p + "attn.relative_position_index": (49, 49),
                p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,),
            }
            if block % 2 and side > 7:  # shifted windows keep their mask
                keys[p + "attn_mask"] = ((side // 7) ** 2, 49, 49)
        if stage < 3:
            keys |= {f"layers.{stage}.downsample.norm.weight": (4 * c,),
                     f"layers.{stage}.downsample.norm.bias": (4 * c,),
                     f"layers.{stage}.downsample.reduction.weight": (2 * c, 4 * c)}
    return keys


def test_ctranspath_full_size_release_keys(tmp_path: Path) -> None:
    keys = ctranspath_release_keys()
    masks = sorted(k for k in keys if k.endswith("attn_mask"))
    assert masks == [  # the five TRIDENT filters out of the released file
        "layers.0.blocks.1.attn_mask", "layers.1.blocks.1.attn_mask",
        "layers.2.blocks.1.attn_mask", "layers.2.blocks.3.attn_mask",
        "layers.2.blocks.5.attn_mask",
    ]
    state = {k: v.clone() if not v.shape else v for k, v in lazy_state(keys).items()}
    state = {k: (torch.tensor(0) if k.endswith("num_batches_tracked") else v)
             for k, v in state.items()}
    weights = tmp_path / "ctranspath.pth"
    torch.save({"model": state}, weights)
    encoder = create_encoder("ctranspath", weights=weights)
    assert encoder.dim == 768 and encoder.input_size == (224, 224)
    del state["layers.2.downsample.reduction.weight"]
    torch.save({"model": state}, weights)
    with pytest.raises(WeightsMismatchError, match=r"layers\.3\.downsample\.reduction"):
        create_encoder("ctranspath", weights=weights)


# --- resnet50-trunc ----------------------------------------------------------------------


def test_resnet50_trunc_parity(tmp_path: Path, offline: Path) -> None:
    ref = REFERENCES["resnet50-trunc"](tmp_path / "r50")
    x = patches(256, 256, n=2)  # CLAM: Resize(224), no crop
    wrong = _tv_transform(224, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                          interpolation="bicubic")
    check_parity("resnet50-trunc", ref, x, wrong, weights=ref.weights)
    put_in_cache(offline, "timm/resnet50.tv_in1k", [ref.weights])
    (offline / "models--timm--resnet50.tv_in1k" / "snapshots" / ("2" * 40) /
     ref.weights.name).rename(offline / "models--timm--resnet50.tv_in1k" / "snapshots" /
                              ("2" * 40) / "pytorch_model.bin")
    check_parity("resnet50-trunc", ref, x)


def test_resnet50_trunc_missing_tensor(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet50(weights=None).state_dict()
    del state["layer3.5.bn3.running_var"]
    weights = tmp_path / "broken.pth"
    torch.save(state, weights)
    with pytest.raises(WeightsMismatchError, match=r"layer3\.5\.bn3\.running_var"):
        create_encoder("resnet50-trunc", weights=weights)


def test_recipes_of_this_area_are_registered() -> None:
    specs = list_encoders()
    dims = {"phikon": 768, "phikon-v2": 1024, "plip": 512, "conch": 512, "conch-v1.5": 768,
            "ctranspath": 768, "resnet50-trunc": 1024}
    for name, dim in dims.items():
        assert specs[name].recipe is not None and specs[name].dim == dim
        assert set(REFERENCES) >= {name}
