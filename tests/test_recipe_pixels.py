"""The same pixels as the authors: fivewsi's recipe preprocessing against torchvision's.

A recipe says ``Resize(int, interpolation) + CenterCrop + ToTensor + Normalize`` as the authors
apply it to a PIL image. :func:`recipe_pixels` (what :class:`TorchImageEncoder` does with
``transform=``) must give exactly those pixels, for every patch size and interpolation, and the
patches the tiler reads from a slide must be the slide's own pixels of that region.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fivewsi.features.encoders.common import TorchImageEncoder, recipe_pixels
from fivewsi.features.extract import PatchBatches
from fivewsi.features.recipe import Preprocess

pytestmark = pytest.mark.models

transforms = pytest.importorskip("torchvision.transforms")
Image = pytest.importorskip("PIL.Image")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MODES = {
    "bicubic": transforms.InterpolationMode.BICUBIC,
    "bilinear": transforms.InterpolationMode.BILINEAR,
}


def _reference(images: np.ndarray, resize: int | None, crop: int | None, mode: str) -> torch.Tensor:
    """The authors' transform: torchvision on PIL images, ``[B, 3, h, w]`` in [0, 1]."""
    steps = []
    if resize is not None:
        steps.append(transforms.Resize(resize, interpolation=MODES[mode]))
    if crop is not None:
        steps.append(transforms.CenterCrop(crop))
    steps.append(transforms.ToTensor())
    pipeline = transforms.Compose(steps)
    return torch.stack([pipeline(Image.fromarray(a)) for a in images])


def _patches(h: int, w: int, seed: int = 0, n: int = 2) -> np.ndarray:
    # Structured noise: edges and gradients where a wrong filter, size or offset shows.
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    ramp = (np.arange(w)[None, :, None] * 255 // max(w - 1, 1)).astype(np.uint8)
    base[:, : h // 3] = ramp
    return base


CASES = [
    # (patch h, patch w, resize, crop)
    (256, 256, 224, 224),  # UNI / CONCH-style 20x patch
    (512, 512, 224, 224),  # 40x patch, strong downscale
    (224, 224, 224, 224),  # no-op resize (torchvision skips it)
    (224, 224, 256, 224),  # upscale then crop (timm's crop_pct 0.875)
    (255, 255, 224, 224),  # odd source
    (257, 257, 231, 223),  # odd resize and crop: offsets rounded half to even
    (300, 200, 224, 224),  # non-square, taller
    (199, 301, 224, 224),  # non-square, wider and odd
    (256, 256, None, 224),  # crop only
    (256, 256, 224, None),  # resize only
]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize(("h", "w", "resize", "crop"), CASES)
def test_recipe_pixels_equal_torchvision(
    h: int, w: int, resize: int | None, crop: int | None, mode: str
) -> None:
    images = _patches(h, w, seed=h * 1000 + w)
    transform = Preprocess(resize=resize, interpolation=mode, crop=crop, mean=MEAN, std=STD)
    ours = recipe_pixels(torch.from_numpy(images), transform)
    theirs = _reference(images, resize, crop, mode)
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs), float((ours - theirs).abs().max())


def test_a_tensor_resize_would_not_pass() -> None:
    """The comparison is sharp: torch's antialiased tensor resize differs from PIL's."""
    images = _patches(512, 512)
    theirs = _reference(images, 224, 224, "bicubic")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    tensor = torch.nn.functional.interpolate(
        x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False
    )
    assert float((tensor - theirs).abs().max()) > 1 / 255


@pytest.mark.parametrize("mode", sorted(MODES))
def test_encoder_normalises_recipe_pixels_like_torchvision(mode: str) -> None:
    images = _patches(256, 256, n=3)
    transform = Preprocess(resize=224, interpolation=mode, crop=224, mean=MEAN, std=STD)
    encoder = TorchImageEncoder(
        torch.nn.Identity(), name="pixels", dim=3 * 224 * 224, input_size=224, transform=transform
    )
    ours = encoder.preprocess(torch.from_numpy(images))
    reference = transforms.Normalize(MEAN, STD)(_reference(images, 224, 224, mode))
    # Normalize divides once; fivewsi subtracts and divides by buffers: float32 rounding only.
    assert float((ours - reference).abs().max()) <= 1e-6


def _shared_cmu() -> Path | None:
    here = Path(__file__).resolve()
    for root in (here.parents[1].parent / "shared", here.parents[2] / "shared",
                 Path("/work/shared")):
        path = root / "data" / "slides" / "cmu-1-small-region.svs"
        if path.exists():
            return path
    return None


def _slides(tmp_path: Path) -> list[Path]:
    from fivewsi.synthetic import write_pixel_slide

    slides = [write_pixel_slide(tmp_path / "s.tif", width=1024, height=768, mpp=0.5, seed=3)]
    if (cmu := _shared_cmu()) is not None:
        slides.append(cmu)
    return slides


def test_tiler_patches_are_the_slide_region(tmp_path: Path) -> None:
    """Patches at the slide's own resolution are OpenSlide's pixels of that region, and the
    features of a recipe encoder equal torchvision's transform of those PIL regions."""
    openslide = pytest.importorskip("openslide")
    transform = Preprocess(resize=224, interpolation="bicubic", crop=224, mean=MEAN, std=STD)
    encoder = TorchImageEncoder(
        torch.nn.Flatten(), name="pixels", dim=3 * 224 * 224, input_size=224, transform=transform
    )
    from fivewsi.slides.readers import open_slide
    from fivewsi.slides.tiling import tile_slide

    for path in _slides(tmp_path):
        with open_slide(path) as reader:  # the tiler's own patches at the slide's resolution
            tiling = tile_slide(reader, target_mpp=reader.mpp, patch_size=256, min_tissue=0.25)
        assert tiling.patch_size_level0 == 256 and len(tiling.coords) > 0
        coords = tiling.coords[:12]
        with openslide.OpenSlide(str(path)) as slide:
            regions = np.stack([
                np.asarray(slide.read_region((int(x), int(y)), 0, (256, 256)).convert("RGB"))
                for x, y in coords
            ])
        batches = PatchBatches(path, coords, size0=256, patch_size=256, batch_size=len(coords))
        try:
            patches = batches[0]
            np.testing.assert_array_equal(patches.numpy(), regions, err_msg=path.name)
            features = encoder(patches)
        finally:
            batches.close()
        reference = transforms.Normalize(MEAN, STD)(_reference(regions, 224, 224, "bicubic"))
        delta = float((features - reference.flatten(1)).abs().max())
        assert delta <= 1e-6, (path.name, delta)
