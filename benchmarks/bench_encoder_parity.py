"""Full-size parity of each recipe with its published architecture, on a real slide.

For every encoder named (``--all``: every recipe in :data:`REFERENCES`): build the published
model at full size with random weights (timm / transformers / open_clip / torchvision with the
published arguments), save them in the published layout (the file names and keys the hub ships),
run fivewsi's preprocessing of the slide with ``--encoder NAME --weights PATH`` (through the
Python API, as the CLI does), then run the published model with the published transform
(torchvision on PIL images) on the very patches of the bag, and compare: cosine per patch (its
minimum) and max |Δ|. The issue's bar is cosine ≥ 0.999 on every patch.

``--max-patches N`` (for the giant models on a slow CPU) encodes only the first N patches of
fivewsi's tiling of the slide, through the same calls preprocess makes (``tile_slide``,
``create_encoder``, ``prepare_encoder``, ``embed_patches``) but without writing a bag.

A reference is ``builder(folder, small=False) -> Reference`` (model, transform, weights path;
:class:`parity_references_clip.Reference`). The timm ViTs are defined here; the others
(transformers, CONCH, CTransPath, ResNet50) come from ``parity_references_clip.py``, which the
reduced-size tests also use. Adding a family is one entry in :data:`REFERENCES`.

Usage:
    python benchmarks/bench_encoder_parity.py uni virchow2
    python benchmarks/bench_encoder_parity.py --all --slide SLIDE --json parity.json --md parity.md
    python benchmarks/bench_encoder_parity.py h-optimus-0 --max-patches 8
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from parity_references_clip import IMAGENET, Reference, _tv_transform
from parity_references_clip import REFERENCES as OTHER_REFERENCES

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/cmu-1-small-region.svs"
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


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


def _timm_reference(model: torch.nn.Module, transform: Any, folder: Path,
                    embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Reference:
    """Save ``model`` as the hub's ``pytorch_model.bin`` (timm key names, ``torch.save``)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()},
               folder / "pytorch_model.bin")
    forward = model if embed is None else (lambda x: embed(model(x)))
    return Reference(forward, transform, folder)


def _full_size_only(small: bool) -> None:
    if small:
        raise ValueError("the timm ViT references here are full size; the reduced-size ones "
                         "are in tests/test_encoder_recipes_vit.py")


def uni(folder: Path, small: bool = False) -> Reference:
    _full_size_only(small)
    model = _timm("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
                  num_classes=0, dynamic_img_size=True)
    return _timm_reference(model, _tv_transform(224, IMAGENET, crop=224), folder)


def uni2_h(folder: Path, small: bool = False) -> Reference:
    _full_size_only(small)
    model = _timm("vit_giant_patch14_224", img_size=224, patch_size=14, depth=24, num_heads=24,
                  init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0,
                  no_embed_class=True, reg_tokens=8, dynamic_img_size=True, **_swiglu())
    return _timm_reference(model, _tv_transform(224, IMAGENET, crop=224), folder)


def virchow(folder: Path, small: bool = False, registers: int = 0) -> Reference:
    _full_size_only(small)
    extra = {"reg_tokens": registers, "dynamic_img_size": True} if registers else {}
    model = _timm("vit_huge_patch14_224", img_size=224, init_values=1e-5, num_classes=0,
                  mlp_ratio=5.3375, global_pool="", **extra, **_swiglu())
    return _timm_reference(model, _tv_transform(224, IMAGENET, interpolation="bicubic"),
                           folder, _cls_mean(1 + registers))


def virchow2(folder: Path, small: bool = False) -> Reference:
    return virchow(folder, small, registers=4)


def h_optimus(folder: Path, small: bool = False) -> Reference:
    _full_size_only(small)
    model = _timm("vit_giant_patch14_reg4_dinov2", num_classes=0, img_size=224,
                  global_pool="token", init_values=1e-5, dynamic_img_size=False)
    return _timm_reference(model, _tv_transform(224, HOPTIMUS), folder)


def gigapath(folder: Path, small: bool = False) -> Reference:
    _full_size_only(small)
    model = _timm("vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16,
                  embed_dim=1536, depth=40, num_heads=24, init_values=1e-5, mlp_ratio=5.33334,
                  num_classes=0)
    return _timm_reference(model, _tv_transform(256, IMAGENET, crop=224,
                                                interpolation="bicubic"), folder)


#: encoder name → ``builder(folder, small=False)`` of its published reference.
REFERENCES: dict[str, Callable[..., Reference]] = {
    "uni": uni,
    "uni2-h": uni2_h,
    "virchow": virchow,
    "virchow2": virchow2,
    "h-optimus-0": h_optimus,
    "h-optimus-1": h_optimus,
    "gigapath": gigapath,
    **OTHER_REFERENCES,
}


def read_patches(slide: Path, coords: np.ndarray, size0: int, patch_size: int) -> torch.Tensor:
    """The uint8 patches ``[N, H, W, 3]`` at ``coords``, read as fivewsi reads them."""
    from fivewsi.features.extract import PatchBatches

    reader = PatchBatches(slide, coords, size0=size0, patch_size=patch_size,
                          batch_size=len(coords))
    try:
        return reader[0]
    finally:
        reader.close()


def fivewsi_features(name: str, slide: Path, weights: Path, work: Path, batch: int,
                     max_patches: int | None) -> tuple[np.ndarray, torch.Tensor]:
    """fivewsi's features of ``slide`` with encoder ``name`` and the patches they came from.

    Whole slide: ``preprocess`` (the CLI's path), then the bag is read back. ``max_patches``:
    the first patches of the same tiling through the calls preprocess makes.
    """
    from fivewsi.features.config import PreprocessConfig

    config = PreprocessConfig(encoder=name, weights=weights, workers=0, batch_size=batch,
                              qc=False, device="cpu")
    if max_patches is None:
        from fivewsi.features.bags import load_bag
        from fivewsi.features.preprocess import preprocess

        result = preprocess([slide], work / "out", config, progress=False)
        if result.failed:
            raise RuntimeError(f"{name}: {result.failed[0].error}")
        bag = load_bag(work / "out" / "features" / f"{slide.stem}.h5")
        coords, size0 = bag.coords, int(bag.attrs["patch_size_level0"])
        features = bag.features
    else:
        from fivewsi.features.extract import embed_patches, prepare_encoder
        from fivewsi.features.registry import create_encoder
        from fivewsi.slides import open_slide, tile_slide

        with open_slide(slide) as reader:
            tiling = tile_slide(reader, target_mpp=config.target_mpp,
                                patch_size=config.patch_size, min_tissue=config.min_tissue)
        coords, size0 = tiling.coords[:max_patches], tiling.patch_size_level0
        cpu = torch.device("cpu")
        encoder = prepare_encoder(create_encoder(name, weights).to(cpu), cpu)
        features = embed_patches(slide, coords, size0=size0, patch_size=config.patch_size,
                                 encoder=encoder, batch_size=batch, workers=0, device=cpu)
        del encoder
    return features, read_patches(slide, coords, size0, config.patch_size)


def check(name: str, slide: Path, work: Path, batch: int = 8,
          max_patches: int | None = None) -> dict[str, Any]:
    """Encode ``slide`` with recipe ``name`` on random published weights; compare."""
    from PIL import Image

    torch.manual_seed(0)
    started = time.perf_counter()
    reference = REFERENCES[name](work / "weights", small=False)
    got, patches = fivewsi_features(name, slide, reference.weights, work, batch, max_patches)
    fivewsi_seconds = time.perf_counter() - started
    images = [Image.fromarray(p.numpy()) for p in patches]
    with torch.inference_mode():
        expected = torch.cat([reference.features(images[i : i + batch])
                              for i in range(0, len(images), batch)])
    got_t = torch.from_numpy(np.asarray(got))
    cosine = torch.nn.functional.cosine_similarity(got_t, expected, dim=1)
    return {
        "encoder": name,
        "patches": len(got_t),
        "subset": "whole slide" if max_patches is None else f"first {len(got_t)} patches",
        "dim": got_t.shape[1],
        "cosine_min": round(cosine.min().item(), 6),
        "max_abs_diff": float(f"{(got_t - expected).abs().max().item():.2e}"),
        "seconds": round(time.perf_counter() - started, 1),
        "fivewsi_seconds": round(fivewsi_seconds, 1),
    }


HEADER = ("encoder", "patches", "subset", "dim", "cosine min", "max |Δ|", "seconds")


def markdown(rows: list[dict[str, Any]], slide: Path) -> str:
    """The results as a markdown table."""
    lines = [f"Full-size parity on {slide.name} (random published weights, CPU float32)", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['patches']} | {r['subset']} | {r['dim']} | "
                     f"{r['cosine_min']:.6f} | {r['max_abs_diff']:.1e} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", nargs="*")
    parser.add_argument("--all", action="store_true", help="every recipe with a reference")
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-patches", type=int, help="only the first N patches (giants)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--md", type=Path, help="also write a markdown table here")
    args = parser.parse_args(argv)
    names = list(REFERENCES) if args.all else args.encoders
    if not names:
        parser.error("name encoders or pass --all")
    unknown = set(names) - set(REFERENCES)
    if unknown:
        parser.error(f"no reference for {sorted(unknown)}; known: {sorted(REFERENCES)}")
    if not args.slide.exists():
        parser.error(f"slide not found: {args.slide}")
    rows = []
    print(f"{'encoder':<15} {'patches':>7} {'dim':>5} {'cosine min':>11} {'max |Δ|':>9} {'s':>6}")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:  # giants: free each model's disk at once
            row = check(name, args.slide, Path(tmp), args.batch, args.max_patches)
        rows.append(row)
        print(f"{name:<15} {row['patches']:>7} {row['dim']:>5} {row['cosine_min']:>11.6f} "
              f"{row['max_abs_diff']:>9.1e} {row['seconds']:>6.0f}", flush=True)
        for path, text in ((args.json, json.dumps(rows, indent=2)),
                           (args.md, markdown(rows, args.slide))):
            if path:  # after every encoder: a long run keeps what it measured
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return rows


if __name__ == "__main__":
    main()
