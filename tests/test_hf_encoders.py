"""PLIP and ``hf:`` encoders on tiny random transformers models, plus the shared plumbing.

Runs in the main (CPU torch, no torchvision) environment. The network is blocked and the
Hugging Face cache redirected to an empty folder, so a model is found only where a test put it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fivewsi.features.encoders.common import (
    TorchImageEncoder,
    WeightsMismatchError,
    load_state_dict_file,
    load_strict,
)
from fivewsi.features.encoders.hf_models import MissingHFModelError
from fivewsi.features.registry import create_encoder

transformers = pytest.importorskip("transformers")

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


#: CLIP stand-ins at PLIP's input size (the recipe resizes to 224; patch 32 keeps them tiny).
CLIP_VISION = {**VISION, "image_size": 224, "patch_size": 32}

pytestmark = pytest.mark.usefixtures("offline")




@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny saved models: CLIP vision tower, full CLIP, ViT with and without a trained pooler."""
    root = tmp_path_factory.mktemp("hf-models")
    torch.manual_seed(0)
    vision_cfg = transformers.CLIPVisionConfig(**CLIP_VISION, projection_dim=16)
    transformers.CLIPVisionModelWithProjection(vision_cfg).save_pretrained(root / "clip-vision")
    text = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    clip_cfg = transformers.CLIPConfig(
        text_config=text, vision_config=CLIP_VISION, projection_dim=24
    )
    transformers.CLIPModel(clip_cfg).save_pretrained(root / "clip-full")
    vit_cfg = transformers.ViTConfig(**VISION)
    transformers.ViTModel(vit_cfg, add_pooling_layer=False).save_pretrained(root / "vit")
    transformers.ViTModel(vit_cfg).save_pretrained(root / "vit-pooler")
    processor = {
        "do_resize": True,
        "size": {"height": 40, "width": 40},
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
    }
    (root / "vit" / "preprocessor_config.json").write_text(json.dumps(processor))
    return {p.name: p for p in root.iterdir()}


def patches(n: int = 3, size: int = 48, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)


def put_in_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as the HF cache does for ``repo_id`` (refs/main → snapshot)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def check_features(encoder: TorchImageEncoder, dim: int) -> torch.Tensor:
    x = patches()
    out = encoder(x)
    assert out.shape == (3, dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.equal(out, encoder(x)), "not deterministic"
    # Each patch is encoded independently of the rest of the batch.
    torch.testing.assert_close(encoder(x[1:2]), out[1:2], atol=1e-5, rtol=1e-4)
    return out


# --- PLIP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["clip-vision", "clip-full"])
def test_plip_from_folder(models: dict[str, Path], folder: str) -> None:
    encoder = create_encoder("plip", weights=models[folder])
    dim = 16 if folder == "clip-vision" else 24
    assert encoder.dim == dim
    assert encoder.input_size == (224, 224)  # the recipe's crop (plip.yaml)
    check_features(encoder, dim)
    assert encoder.describe()["encoder"] == "plip"


def test_plip_matches_clip_image_features(models: dict[str, Path]) -> None:
    """The encoder gives CLIPModel.get_image_features (projected, not normalised)."""
    encoder = create_encoder("plip", weights=models["clip-full"])
    clip = transformers.CLIPModel.from_pretrained(models["clip-full"]).eval()
    x = patches()
    with torch.no_grad():
        expected = clip.get_image_features(pixel_values=encoder.preprocess(x))
    expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
    torch.testing.assert_close(encoder(x), expected, atol=1e-5, rtol=1e-4)


def test_plip_from_hf_cache(models: dict[str, Path], offline: Path) -> None:
    put_in_cache(offline, "vinid/plip", models["clip-full"])
    encoder = create_encoder("plip")
    check_features(encoder, 24)
    assert encoder.describe()["encoder_weights"] == "hf-cache:vinid/plip"


def test_plip_missing_weights_is_clear() -> None:
    with pytest.raises(MissingHFModelError, match=r"--weights DIR.*never downloads"):
        create_encoder("plip")


def test_plip_rejects_other_architectures(models: dict[str, Path]) -> None:
    with pytest.raises(WeightsMismatchError, match="'vit' model"):
        create_encoder("plip", weights=models["vit"])


def test_plip_renamed_keys_is_clear(models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(models["clip-vision"], broken)
    state = load_file(broken / "model.safetensors")
    save_file({f"other.{k}": v for k, v in state.items()}, broken / "model.safetensors")
    with pytest.raises(WeightsMismatchError, match="missing keys"):
        create_encoder("plip", weights=broken)


# --- hf: ----------------------------------------------------------------------------------


def test_hf_vit_uses_processor_config_and_cls(models: dict[str, Path]) -> None:
    encoder = create_encoder(f"hf:{models['vit']}")
    assert encoder.input_size == (40, 40)
    assert encoder.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    assert encoder.model.pooling == "cls"  # no trained pooler in the checkpoint
    out = check_features(encoder, 32)
    vit = transformers.ViTModel.from_pretrained(models["vit"], add_pooling_layer=False).eval()
    with torch.no_grad():
        hidden = vit(pixel_values=encoder.preprocess(patches()), interpolate_pos_encoding=True)
    torch.testing.assert_close(out, hidden.last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)


def test_hf_vit_trained_pooler_is_used(models: dict[str, Path]) -> None:
    encoder = create_encoder(f"hf:{models['vit-pooler']}")
    assert encoder.model.pooling == "pooler"
    check_features(encoder, 32)
    cls = create_encoder(f"hf:{models['vit-pooler']}", pooling="cls")
    assert not torch.allclose(cls(patches()), encoder(patches()))


def test_hf_dual_encoder_gives_image_features(models: dict[str, Path]) -> None:
    encoder = create_encoder(f"hf:{models['clip-full']}")
    assert encoder.model.pooling == "image_features"
    check_features(encoder, 24)


def test_hf_from_cache_by_repo_id(models: dict[str, Path], offline: Path) -> None:
    put_in_cache(offline, "someone/tiny-vit", models["vit"])
    encoder = create_encoder("hf:someone/tiny-vit")
    assert encoder.name == "hf:someone/tiny-vit"
    check_features(encoder, 32)


def test_hf_weights_folder_overrides_name(models: dict[str, Path]) -> None:
    encoder = create_encoder("hf:owkin/phikon", weights=models["vit"])
    assert encoder.describe()["encoder_weights"] == str(models["vit"])


@pytest.mark.parametrize("name", ["hf:nobody/nothing", "hf:/no/such/folder"])
def test_hf_missing_model_is_clear(name: str) -> None:
    with pytest.raises(MissingHFModelError, match="fivewsi never downloads"):
        create_encoder(name)


def test_hf_resized_weights_are_clear(models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "resized"
    shutil.copytree(models["vit"], broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "hidden_size": 48}))
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        create_encoder(f"hf:{broken}")


# --- shared plumbing ----------------------------------------------------------------------


def test_torch_image_encoder_resizes_and_normalises() -> None:
    encoder = TorchImageEncoder(
        torch.nn.Flatten(), name="flat", dim=12, input_size=2, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    white = torch.full((2, 8, 8, 3), 255, dtype=torch.uint8)
    torch.testing.assert_close(encoder(white), torch.ones(2, 12))
    assert encoder(white[:0]).shape == (0, 12)
    with pytest.raises(ValueError, match="uint8"):
        encoder(white.float())


def test_load_state_dict_file_formats(tmp_path: Path) -> None:
    state = {"w": torch.arange(3.0)}
    save_file(state, tmp_path / "a.safetensors")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "b.pth")
    for name in ("a.safetensors", "b.pth"):
        assert torch.equal(load_state_dict_file(tmp_path / name)["w"], state["w"])


def test_load_state_dict_file_refuses_pickled_code(tmp_path: Path) -> None:
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "module.pth")  # a whole module
    with pytest.raises(WeightsMismatchError, match="weights_only"):
        load_state_dict_file(tmp_path / "module.pth")


def test_load_strict_reports_keys() -> None:
    model = torch.nn.Linear(2, 3)
    good = model.state_dict()
    load_strict(model, {**good, "head.w": torch.ones(1)}, ignore_unexpected=[r"head\."])
    with pytest.raises(WeightsMismatchError, match=r"missing keys \(bias\)"):
        load_strict(model, {"weight": good["weight"]})
    with pytest.raises(WeightsMismatchError, match=r"unexpected keys \(extra\)"):
        load_strict(model, {**good, "extra": torch.ones(1)})
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        load_strict(model, {**good, "bias": torch.ones(4)})


def test_timm_encoders_explain_the_models_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an importable timm, the named timm encoders say how to install it."""
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r'pip install "fivewsi\[models\]".*torchvision'):
        create_encoder("uni")
