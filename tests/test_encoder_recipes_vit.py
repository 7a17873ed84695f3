"""Parity of the timm ViT recipes (UNI, UNI2-h, Virchow, Virchow2, H-optimus-0/1, Prov-GigaPath)
with their published architecture and transform.

For each recipe the reference is built the way its authors publish it: ``timm.create_model``
with the published arguments (written out here, independently of the recipe file), at reduced
width and depth but of the same family (register tokens, SwiGLU, LayerScale kept), random
weights saved as the hub ships them. fivewsi loads that file strictly through
``create_encoder(name, weights=DIR or FILE, arch_overrides=...)`` and from a fake offline
Hugging Face cache; its features on uint8 patches must equal the reference forward on
torchvision's published transform applied to PIL images of the same patches. Patches are 250 px,
so the resize (and, for Prov-GigaPath, the crop) changes the pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fivewsi.features.registry import create_encoder

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("offline", "one_thread")]
timm = pytest.importorskip("timm")
transforms = pytest.importorskip("torchvision.transforms")
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from fivewsi.features.encoders.common import WeightsMismatchError  # noqa: E402
from fivewsi.features.encoders.timm_models import _arch_value  # noqa: E402
from fivewsi.features.recipe import list_recipes  # noqa: E402

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
SWIGLU = {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}
#: Reduced width and depth, kept the same for reference and fivewsi.
SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2}
PATCH = 250
TOL = 1e-5


def cls_mean(first_patch_token: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Virchow model cards' embedding: ``cat(out[:, 0], out[:, k:].mean(1))``."""
    return lambda out: torch.cat([out[:, 0], out[:, first_patch_token:].mean(1)], dim=-1)


@dataclass
class Published:
    """A model as its authors publish it: timm name and arguments, transform, embedding."""

    architecture: str
    kwargs: dict[str, Any]
    transform: list[Any]
    norm: tuple[tuple[float, ...], tuple[float, ...]] = IMAGENET
    embed: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda out: out)
    file: str = "pytorch_model.bin"

    def model(self) -> torch.nn.Module:
        torch.manual_seed(0)
        model = timm.create_model(self.architecture, pretrained=False, **{**self.kwargs, **SMALL})
        with torch.no_grad():  # LayerScale starts at 1e-5: make every block count
            for name, param in model.named_parameters():
                if name.endswith("gamma"):
                    param.uniform_(0.5, 1.5)
        return model.eval()

    def forward(self, model: torch.nn.Module, images: list[Image.Image]) -> torch.Tensor:
        compose = transforms.Compose(
            [*self.transform, transforms.ToTensor(), transforms.Normalize(*self.norm)]
        )
        with torch.no_grad():
            return self.embed(model(torch.stack([compose(im) for im in images])))


BICUBIC = transforms.InterpolationMode.BICUBIC
PUBLISHED = {
    "uni": Published(
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
         "dynamic_img_size": True},
        [transforms.Resize(224), transforms.CenterCrop(224)],
    ),
    "uni2-h": Published(
        "vit_giant_patch14_224",
        {"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
         "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
         "num_classes": 0, "no_embed_class": True, "reg_tokens": 8, "dynamic_img_size": True,
         **SWIGLU},
        [transforms.Resize(224), transforms.CenterCrop(224)],
    ),
    "virchow": Published(
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "mlp_ratio": 5.3375,
         "global_pool": "", **SWIGLU},
        [transforms.Resize(224, interpolation=BICUBIC)],
        embed=cls_mean(1),
    ),
    "virchow2": Published(
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4,
         "mlp_ratio": 5.3375, "global_pool": "", "dynamic_img_size": True, **SWIGLU},
        [transforms.Resize(224, interpolation=BICUBIC)],
        embed=cls_mean(5),
    ),
    **{
        f"h-optimus-{v}": Published(
            "vit_giant_patch14_reg4_dinov2",
            {"num_classes": 0, "img_size": 224, "global_pool": "token", "init_values": 1e-5,
             "dynamic_img_size": False},
            [transforms.Resize(224)],
            norm=HOPTIMUS,
            # one of the two is loaded from safetensors, to cover that path of the loader
            file="pytorch_model.bin" if v == 0 else "model.safetensors",
        )
        for v in (0, 1)
    },
    "gigapath": Published(
        "vit_giant_patch14_dinov2",
        {"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
         "num_heads": 24, "mlp_ratio": 5.33334, "num_classes": 0, "init_values": 1e-5},
        [transforms.Resize(256, interpolation=BICUBIC), transforms.CenterCrop(224)],
    ),
}


def patches(n: int = 3, size: int = PATCH) -> torch.Tensor:
    """Smooth random colour fields plus noise: resizing filters differ visibly on them."""
    gen = torch.Generator().manual_seed(1)
    coarse = torch.rand(n, 3, 9, 9, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    noisy = smooth + 0.15 * torch.randn(n, 3, size, size, generator=gen)
    return (noisy.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def pil_images(batch: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(np.ascontiguousarray(p.numpy())) for p in batch]


def save_published(model: torch.nn.Module, folder: Path, file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = folder / file
    if file.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def put_in_cache(cache: Path, repo_id: str, file: Path) -> None:
    """Lay ``file`` out as the Hugging Face cache does for ``repo_id`` (refs/main → snapshot)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "2" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_every_recipe_of_the_family_has_a_reference() -> None:
    ours = {n for n, r in list_recipes().items() if r.builder == "timm"}
    assert ours == set(PUBLISHED)


def test_recipe_matches_the_published_facts() -> None:
    """The recipe file says what the reference says: architecture, kwargs, transform."""
    for name, published in PUBLISHED.items():
        recipe = list_recipes()[name]
        assert recipe.architecture == published.architecture, name
        assert recipe.preprocess.mean == pytest.approx(published.norm[0]), name
        assert recipe.preprocess.std == pytest.approx(published.norm[1]), name
        assert published.file in recipe.weights.files, name
        for key, value in recipe.arch_kwargs.items():
            expected = published.kwargs[key]
            if key.endswith("_layer"):  # a class named in YAML: the same object
                assert _arch_value(value) is expected, (name, key)
            else:
                assert value == pytest.approx(expected), (name, key)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parity(name: str, tmp_path: Path, offline: Path) -> None:
    published = PUBLISHED[name]
    recipe = list_recipes()[name]
    reference = published.model()
    x = patches()
    expected = published.forward(reference, pil_images(x))
    folder = tmp_path / name
    file = save_published(reference, folder, published.file)

    for weights in (folder, file):
        encoder = create_encoder(name, weights=weights, arch_overrides=SMALL)
        got = encoder(x)
        assert got.shape == expected.shape == (3, encoder.dim)
        assert encoder.dim == (64 if recipe.embedding == "cls+mean-patches" else 32)
        delta = (got - expected).abs().max().item()
        assert delta <= TOL, f"{name} from {weights.name}: max |Δ| {delta:.2e}"

    put_in_cache(offline, recipe.weights.hub[0], file)
    encoder = create_encoder(name, arch_overrides=SMALL)
    assert encoder.describe()["encoder_weights"] == f"hf-cache:{recipe.weights.hub[0]}"
    assert (encoder(x) - expected).abs().max().item() <= TOL


def test_virchow2_registers_are_left_out(tmp_path: Path) -> None:
    """Taking the mean over the register tokens too (or the bilinear resize) would be caught."""
    published = PUBLISHED["virchow2"]
    reference = published.model()
    x = patches()
    weights = save_published(reference, tmp_path, published.file)
    got = create_encoder("virchow2", weights=weights, arch_overrides=SMALL)(x)
    wrong_rule = Published(**{**published.__dict__, "embed": cls_mean(1)})
    wrong_resize = Published(**{**published.__dict__, "transform": [transforms.Resize(224)]})
    for wrong in (wrong_rule, wrong_resize):
        assert (got - wrong.forward(reference, pil_images(x))).abs().max().item() > 100 * TOL


def test_gigapath_crop_matters(tmp_path: Path) -> None:
    """Resizing straight to 224 instead of 256 then cropping would be caught."""
    published = PUBLISHED["gigapath"]
    reference = published.model()
    x = patches()
    weights = save_published(reference, tmp_path, published.file)
    got = create_encoder("gigapath", weights=weights, arch_overrides=SMALL)(x)
    wrong = Published(**{**published.__dict__, "transform": [
        transforms.Resize(224, interpolation=BICUBIC), transforms.CenterCrop(224)]})
    assert (got - wrong.forward(reference, pil_images(x))).abs().max().item() > 100 * TOL


def test_wrong_family_is_refused(tmp_path: Path) -> None:
    """UNI2-h weights are not Virchow2's: the strict load names the mismatch."""
    weights = save_published(PUBLISHED["uni2-h"].model(), tmp_path, "pytorch_model.bin")
    with pytest.raises(WeightsMismatchError, match=r"missing keys|shape mismatches"):
        create_encoder("virchow2", weights=weights, arch_overrides=SMALL)
