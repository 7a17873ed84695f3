"""timm-based encoders (timm:, resnet50-trunc, uni, ctranspath, conch) on random stand-ins.

Needs the ``[models]`` extra (timm with a torchvision matching torch), so it is skipped where timm
does not import. Stand-ins are built by the same builders as the real encoders, with smaller
``arch_overrides``, saved to disk and loaded back through ``create_encoder``. The network is
blocked and the Hugging Face cache redirected to an empty folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fivewsi.features.encoders.common import WeightsMismatchError
from fivewsi.features.registry import create_encoder, list_encoders

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("offline")]
pytest.importorskip("timm")

from fivewsi.features.encoders import timm_models as tm  # noqa: E402  (after the skip)

SMALL_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
SMALL_SWIN = {"embed_dim": 32, "depths": (1, 1), "num_heads": (1, 2)}
SMALL_CONCH = {"embed_dim": 32, "depth": 1, "num_heads": 2, "output_dim": 16, "pool_heads": 2}


def patches(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay ``files`` out as the HF cache does for ``repo_id`` (refs/main → snapshot)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "1" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def check_features(encoder: torch.nn.Module, dim: int) -> torch.Tensor:
    x = patches()
    out = encoder(x)
    assert out.shape == (3, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, encoder(x)), "not deterministic"
    torch.testing.assert_close(encoder(x[2:]), out[2:], atol=1e-5, rtol=1e-4)
    return out


def test_published_dims() -> None:
    """The feature sizes of the released models (the registry contract is tested for every
    encoder in test_encoder_registry.py)."""
    dims = {"resnet50-trunc": 1024, "uni": 1024, "ctranspath": 768, "conch": 512}
    assert {name: list_encoders()[name].dim for name in dims} == dims


# --- timm: --------------------------------------------------------------------------------


def test_timm_any_model_with_head_in_checkpoint(tmp_path: Path) -> None:
    name = "vit_small_patch16_224.augreg_in21k_ft_in1k"
    full = tm._create_timm(name, **SMALL_VIT)  # with its classifier: ignored on load
    weights = save(full.state_dict(), tmp_path / "w.safetensors")
    encoder = create_encoder(f"timm:{name}", weights=weights, arch_overrides=SMALL_VIT)
    assert encoder.input_size == (224, 224)
    assert encoder.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # from timm's pretrained config
    out = check_features(encoder, 32)
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(encoder.preprocess(patches())), True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_timm_weights_from_hf_cache(tmp_path: Path, offline: Path) -> None:
    model = tm._create_timm("resnet18.a1_in1k", num_classes=0, layers=(1, 1, 1, 1))
    put_in_cache(
        offline,
        "timm/resnet18.a1_in1k",
        {"model.safetensors": save(model.state_dict(), tmp_path / "model.safetensors")},
    )
    encoder = create_encoder("timm:resnet18.a1_in1k", arch_overrides={"layers": (1, 1, 1, 1)})
    assert encoder.describe()["encoder_weights"] == "hf-cache:timm/resnet18.a1_in1k"
    check_features(encoder, 512)


def test_timm_hf_hub_config_from_cache(tmp_path: Path, offline: Path) -> None:
    config = {
        "architecture": "vit_small_patch16_224",
        "model_args": {**SMALL_VIT, "img_size": 64},
        "pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0.1] * 3, "std": [0.2] * 3},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = tm._create_timm("vit_small_patch16_224", num_classes=0, **config["model_args"])
    save(model.state_dict(), tmp_path / "pytorch_model.bin")
    put_in_cache(
        offline,
        "lab/tiny",
        {n: tmp_path / n for n in ("config.json", "pytorch_model.bin")},
    )
    encoder = create_encoder("timm:hf-hub:lab/tiny")
    assert encoder.input_size == (64, 64)
    assert encoder.std.flatten().tolist() == pytest.approx([0.2] * 3)
    check_features(encoder, 32)


def test_timm_missing_weights_is_clear() -> None:
    with pytest.raises(FileNotFoundError, match=r"--weights PATH.*timm/resnet18\.a1_in1k"):
        create_encoder("timm:resnet18.a1_in1k")


def test_timm_unknown_model() -> None:
    with pytest.raises(ValueError, match="timm has no model"):
        create_encoder("timm:no_such_model_xyz")


def test_timm_wrong_weights_list_keys(tmp_path: Path) -> None:
    other = tm._create_timm("resnet18", num_classes=0, layers=(1, 1, 1, 1))
    weights = save(other.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(layer1\.1\."):
        create_encoder("timm:resnet18", weights=weights)


# --- resnet50-trunc -----------------------------------------------------------------------


def test_resnet50_trunc_full_size_matches_layer3_pooling(tmp_path: Path) -> None:
    """Torchvision-layout ResNet-50 weights (with layer4 and fc) → pooled layer3, 1024-d."""
    torch.manual_seed(0)
    full = tm._create_timm("resnet50", num_classes=1000).eval()
    weights = save(full.state_dict(), tmp_path / "resnet50.pth")
    encoder = create_encoder("resnet50-trunc", weights=weights)
    assert encoder.dim == 1024 and encoder.input_size == (224, 224)
    out = check_features(encoder, 1024)
    with torch.no_grad():
        x = full.maxpool(full.act1(full.bn1(full.conv1(encoder.preprocess(patches())))))
        expected = full.layer3(full.layer2(full.layer1(x))).mean(dim=(2, 3))
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_resnet50_trunc_missing_tensor(tmp_path: Path) -> None:
    state = tm.build_resnet50_trunc().state_dict()
    del state["layer3.5.bn3.running_var"]
    weights = save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsMismatchError, match=r"layer3\.5\.bn3\.running_var"):
        create_encoder("resnet50-trunc", weights=weights)


# --- UNI ----------------------------------------------------------------------------------


def test_uni_small_from_folder(tmp_path: Path) -> None:
    model = tm.build_uni(SMALL_VIT).eval()
    assert any(k.endswith("ls1.gamma") for k in model.state_dict())  # LayerScale like UNI
    save(model.state_dict(), tmp_path / "uni" / "pytorch_model.bin")
    encoder = create_encoder("uni", weights=tmp_path / "uni", arch_overrides=SMALL_VIT)
    assert encoder.input_size == (224, 224)
    out = check_features(encoder, 32)
    with torch.no_grad():
        torch.testing.assert_close(out, model(encoder.preprocess(patches())), atol=1e-5, rtol=1e-4)


def test_uni_from_hf_cache(tmp_path: Path, offline: Path) -> None:
    bin_file = save(tm.build_uni(SMALL_VIT).state_dict(), tmp_path / "pytorch_model.bin")
    put_in_cache(offline, "MahmoodLab/UNI", {"pytorch_model.bin": bin_file})
    encoder = create_encoder("uni", arch_overrides=SMALL_VIT)
    assert encoder.describe()["encoder_weights"] == "hf-cache:MahmoodLab/UNI"


def test_uni_architecture_mismatch(tmp_path: Path) -> None:
    weights = save(tm.build_uni(SMALL_VIT).state_dict(), tmp_path / "uni.bin")
    with pytest.raises(WeightsMismatchError, match="missing keys"):
        create_encoder("uni", weights=weights, arch_overrides={**SMALL_VIT, "depth": 3})
    with pytest.raises(FileNotFoundError, match="MahmoodLab/UNI"):
        create_encoder("uni", arch_overrides=SMALL_VIT)


# --- CTransPath ---------------------------------------------------------------------------


def to_transpath_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Current-timm Swin keys → TransPath's timm 0.5 layout, as in the released ctranspath.pth."""
    old = {}
    for key, value in state.items():
        old[re.sub(r"^layers\.(\d+)\.downsample", _previous_stage, key)] = value
    old["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return {"model": old}


def _previous_stage(match: re.Match[str]) -> str:
    return f"layers.{int(match[1]) - 1}.downsample"


def test_ctranspath_small_from_released_layout(tmp_path: Path) -> None:
    model = tm.build_ctranspath(SMALL_SWIN).eval()
    assert "patch_embed.proj.6.bias" in model.state_dict()  # ConvStem, key names as released
    weights = save(to_transpath_layout(model.state_dict()), tmp_path / "ctranspath.pth")
    assert "layers.0.downsample.reduction.weight" in torch.load(weights)["model"]
    encoder = create_encoder("ctranspath", weights=weights, arch_overrides=SMALL_SWIN)
    out = check_features(encoder, 64)
    with torch.no_grad():
        torch.testing.assert_close(out, model(encoder.preprocess(patches())), atol=1e-5, rtol=1e-4)


def test_ctranspath_full_size_architecture() -> None:
    model = tm.build_ctranspath()
    assert model.num_features == 768
    assert 27_000_000 < sum(p.numel() for p in model.parameters()) < 28_500_000
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 768)


def test_ctranspath_wrong_weights(tmp_path: Path) -> None:
    state = tm.build_ctranspath(SMALL_SWIN).state_dict()
    state["patch_embed.proj.0.weight"] = torch.zeros(1, 3, 3, 3)
    weights = save(state, tmp_path / "ctranspath.pth")
    with pytest.raises(WeightsMismatchError, match=r"patch_embed\.proj\.0\.weight"):
        create_encoder("ctranspath", weights=weights, arch_overrides=SMALL_SWIN)


# --- CONCH --------------------------------------------------------------------------------


def conch_checkpoint(model: tm.ConchVision) -> dict[str, torch.Tensor]:
    """A CoCa-like full checkpoint: visual.* (+ caption pooler), text tower, logit scale."""
    state = {f"visual.{k}": v for k, v in model.state_dict().items()}
    state["visual.attn_pool_caption.query"] = torch.zeros(4, 32)
    state["visual.ln_caption.weight"] = torch.ones(32)
    state["text.token_embedding.weight"] = torch.zeros(8, 32)
    state["logit_scale"] = torch.tensor(1.0)
    return state


def test_conch_small_from_full_checkpoint(tmp_path: Path) -> None:
    model = tm.build_conch(SMALL_CONCH, project=True).eval()
    weights = save(conch_checkpoint(model), tmp_path / "pytorch_model.bin")
    encoder = create_encoder("conch", weights=weights, arch_overrides=SMALL_CONCH)
    assert encoder.input_size == (448, 448)
    out = check_features(encoder, 16)
    projected = create_encoder("conch", weights=weights, arch_overrides=SMALL_CONCH, project=True)
    with torch.no_grad():
        x = encoder.preprocess(patches())
        torch.testing.assert_close(projected(patches()), model(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out @ model.proj_contrast, model(x), atol=1e-5, rtol=1e-4)


def test_conch_full_size_keys_match_release() -> None:
    """Key names and shapes of the published CONCH v1 vision tower (``visual.`` stripped)."""
    state = tm.build_conch().state_dict()
    assert state["trunk.pos_embed"].shape == (1, 785, 768)  # 448 px / 16 = 28², + CLS
    assert state["attn_pool_contrast.query"].shape == (1, 512)
    assert state["attn_pool_contrast.attn.k_proj_weight"].shape == (512, 768)
    assert state["attn_pool_contrast.ln_k.weight"].shape == (768,)
    assert state["ln_contrast.weight"].shape == (512,)


def test_conch_missing_key(tmp_path: Path) -> None:
    state = conch_checkpoint(tm.build_conch(SMALL_CONCH))
    del state["visual.ln_contrast.bias"]
    weights = save(state, tmp_path / "conch.bin")
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(ln_contrast\.bias\)"):
        create_encoder("conch", weights=weights, arch_overrides=SMALL_CONCH)
