"""timm-based encoders (timm:, uni) on random stand-ins (resnet50-trunc, ctranspath and conch:
tests/test_encoder_recipes_clip.py).

Needs the ``[models]`` extra (timm with a torchvision matching torch), so it is skipped where timm
does not import. Stand-ins are built by the same builders as the real encoders, with smaller
``arch_overrides``, saved to disk and loaded back through ``create_encoder``. The network is
blocked and the Hugging Face cache redirected to an empty folder.
"""

from __future__ import annotations

import json
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
    dims = {"uni": 1024}
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
