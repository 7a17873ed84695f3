"""Full-size parity of each recipe with its published architecture, on a real slide.

For every encoder named (default: all in :data:`REFERENCES`): build the published model at full
size with random weights (timm / transformers / open_clip with the published arguments), save
them in the published layout (the file names and keys the hub ships), run fivewsi's
preprocessing of the slide with ``--encoder NAME --weights DIR`` (through the Python API, as the
CLI does), then run the published model with the published transform (torchvision on PIL
images) on the very patches of the bag, and compare: cosine per patch (its minimum) and
max |Δ|. The issue's bar is cosine ≥ 0.999 on every patch.

Adding a family is one entry in :data:`REFERENCES`: a function returning a :class:`Reference`
(model, transform, embedding rule, and how to save the weights as published).

Usage:
    python benchmarks/bench_encoder_parity.py uni virchow2
    python benchmarks/bench_encoder_parity.py --json parity.json   # every recipe (giants: slow)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/cmu-1-small-region.svs"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


@dataclass
class Reference:
    """A published model: the module, its eval transform on a PIL image, its embedding rule
    (model output → ``[B, D]``) and how its weights are written as the hub ships them."""

    model: torch.nn.Module
    transform: Callable[[Any], torch.Tensor]
    embed: Callable[[Any], torch.Tensor]
    save: Callable[[torch.nn.Module, Path], None]


def save_state_dict(file: str) -> Callable[[torch.nn.Module, Path], None]:
    """Writer of a flat state dict as ``folder/file`` (``torch.save`` or safetensors)."""

    def save(model: torch.nn.Module, folder: Path) -> None:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if file.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state, folder / file)
        else:
            torch.save(state, folder / file)

    return save


def _transform(resize: int, crop: int | None, norm: tuple[Any, Any], bicubic: bool) -> Any:
    from torchvision import transforms as T

    mode = T.InterpolationMode.BICUBIC if bicubic else T.InterpolationMode.BILINEAR
    steps = [T.Resize(resize, interpolation=mode)] + ([T.CenterCrop(crop)] if crop else [])
    return T.Compose([*steps, T.ToTensor(), T.Normalize(*norm)])


def _timm(name: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():  # LayerScale starts at 1e-5: give every block a say
        for key, param in model.named_parameters():
            if key.endswith("gamma"):
                param.uniform_(0.05, 0.2)
    return model.eval()


def _swiglu() -> dict[str, Any]:
    import timm

    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _cls_mean(first_patch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda out: torch.cat([out[:, 0], out[:, first_patch:].mean(1)], dim=-1)


def _pooled(out: torch.Tensor) -> torch.Tensor:
    return out


def uni() -> Reference:
    model = _timm("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                  num_classes=0, dynamic_img_size=True)
    return Reference(model, _transform(224, 224, IMAGENET, False), _pooled,
                     save_state_dict("pytorch_model.bin"))


def uni2_h() -> Reference:
    model = _timm("vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24,
                  init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0,
                  no_embed_class=True, reg_tokens=8, dynamic_img_size=True, **_swiglu())
    return Reference(model, _transform(224, 224, IMAGENET, False), _pooled,
                     save_state_dict("pytorch_model.bin"))


def virchow(registers: int = 0) -> Reference:
    extra = {"reg_tokens": registers, "dynamic_img_size": True} if registers else {}
    model = _timm("vit_huge_patch14_224", img_size=224, init_values=1e-5, num_classes=0,
                  mlp_ratio=5.3375, global_pool="", **extra, **_swiglu())
    return Reference(model, _transform(224, None, IMAGENET, True), _cls_mean(1 + registers),
                     save_state_dict("pytorch_model.bin"))


def h_optimus() -> Reference:
    model = _timm("vit_giant_patch14_reg4_dinov2", num_classes=0, img_size=224,
                  global_pool="token", init_values=1e-5, dynamic_img_size=False)
    return Reference(model, _transform(224, None, HOPTIMUS, False), _pooled,
                     save_state_dict("pytorch_model.bin"))


def gigapath() -> Reference:
    model = _timm("vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16,
                  embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334,
                  num_classes=0)
    return Reference(model, _transform(256, 224, IMAGENET, True), _pooled,
                     save_state_dict("pytorch_model.bin"))


#: encoder name → builder of its full-size published reference. Other families add theirs here.
REFERENCES: dict[str, Callable[[], Reference]] = {
    "uni": uni,
    "uni2-h": uni2_h,
    "virchow": virchow,
    "virchow2": lambda: virchow(registers=4),
    "h-optimus-0": h_optimus,
    "h-optimus-1": h_optimus,
    "gigapath": gigapath,
}


def bag_patches(slide: Path, bag: Any) -> torch.Tensor:
    """The uint8 patches fivewsi encoded for ``bag``, read again the same way."""
    from fivewsi.features.extract import PatchBatches

    reader = PatchBatches(slide, bag.coords, size0=int(bag.attrs["patch_size_level0"]),
                          patch_size=int(bag.attrs["patch_size"]), batch_size=len(bag.coords))
    try:
        return reader[0]
    finally:
        reader.close()


def check(name: str, slide: Path, work: Path, batch: int = 8) -> dict[str, Any]:
    """Preprocess ``slide`` with encoder ``name`` on random published weights; compare."""
    from PIL import Image

    from fivewsi.features.bags import load_bag
    from fivewsi.features.config import PreprocessConfig
    from fivewsi.features.preprocess import preprocess

    torch.manual_seed(0)
    started = time.perf_counter()
    reference = REFERENCES[name]()
    weights = work / name / "weights"
    weights.mkdir(parents=True)
    reference.save(reference.model, weights)
    config = PreprocessConfig(encoder=name, weights=weights, workers=0, batch_size=batch,
                              qc=False, device="cpu")
    result = preprocess([slide], work / name / "out", config, progress=False)
    if result.failed:
        raise RuntimeError(f"{name}: {result.failed[0].error}")
    fivewsi_seconds = time.perf_counter() - started
    bag = load_bag(work / name / "out" / "features" / f"{slide.stem}.h5")
    patches = bag_patches(slide, bag)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(patches), batch):
            images = [Image.fromarray(p.numpy()) for p in patches[start : start + batch]]
            x = torch.stack([reference.transform(im) for im in images])
            outputs.append(reference.embed(reference.model(x)).float())
    expected = torch.cat(outputs)
    got = torch.from_numpy(bag.features)
    cosine = torch.nn.functional.cosine_similarity(got, expected, dim=1)
    return {
        "encoder": name,
        "patches": len(got),
        "dim": got.shape[1],
        "cosine_min": round(cosine.min().item(), 6),
        "max_abs_diff": float(f"{(got - expected).abs().max().item():.2e}"),
        "seconds": round(time.perf_counter() - started, 1),
        "fivewsi_seconds": round(fivewsi_seconds, 1),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="*", default=list(REFERENCES))
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    unknown = set(args.encoders) - set(REFERENCES)
    if unknown:
        parser.error(f"no reference for {sorted(unknown)}; known: {sorted(REFERENCES)}")
    if not args.slide.exists():
        parser.error(f"slide not found: {args.slide}")
    rows = []
    print(f"{'encoder':<13} {'patches':>7} {'dim':>5} {'cosine min':>11} {'max |Δ|':>9} {'s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders:
            row = check(name, args.slide, Path(tmp), args.batch)
            rows.append(row)
            print(f"{name:<13} {row['patches']:>7} {row['dim']:>5} {row['cosine_min']:>11.6f} "
                  f"{row['max_abs_diff']:>9.1e} {row['seconds']:>6.0f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
