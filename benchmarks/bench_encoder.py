"""Throughput of a patch encoder (default ``he-handcrafted``) on CPU, in patches per second.

Input: random 256 px crops of a real H&E slide (``--slide``, default the shared CMU-1 small
region, read with OpenSlide) cut to each patch size; white-noise patches when the slide is
absent. Each configuration (patch size x batch size x torch threads) runs for ``--seconds``
after a warm-up, cycling through a pool of distinct patches as a pipeline would (no patch is
cache-hot). Reported: the median and the best batch, as patches/s. The machine's other load
shows as a gap between the two; the pipeline's budget is the median.

Usage:
    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --sizes 256 --batches 64 --threads 1 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fivewsi.features.registry import create_encoder

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "shared/data/slides/cmu-1-small-region.svs"


def load_patches(slide: Path, count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """``count`` random ``size`` px RGB crops ``[count, size, size, 3]`` and where they came from.

    Example:
        >>> patches, source = load_patches(Path("missing.svs"), 2, 32)
        >>> tuple(patches.shape), source
        ((2, 32, 32, 3), 'uniform noise (missing.svs not found)')
    """
    rng = np.random.default_rng(seed)
    if not slide.exists():
        noise = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        return torch.from_numpy(noise), f"uniform noise ({slide.name} not found)"
    import openslide  # only needed for the real-slide input

    with openslide.OpenSlide(str(slide)) as handle:
        width, height = handle.dimensions
        crops = [
            np.asarray(
                handle.read_region(
                    (int(rng.integers(0, width - size)), int(rng.integers(0, height - size))),
                    0,
                    (size, size),
                ).convert("RGB")
            )
            for _ in range(count)
        ]
    return torch.from_numpy(np.stack(crops)), f"{count} random crops of {slide.name}"


def measure(
    encoder: torch.nn.Module, pool: torch.Tensor, batch: int, seconds: float
) -> list[float]:
    """Patches/s of each batch run during ``seconds`` (after one warm-up batch)."""
    starts = range(0, len(pool) - batch + 1, batch)
    batches = [pool[start : start + batch] for start in starts]
    encoder(batches[0])
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        for patches in batches:
            started = time.perf_counter()
            encoder(patches)
            rates.append(batch / (time.perf_counter() - started))
    return rates


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="he-handcrafted")
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    parser.add_argument("--pool", type=int, default=512, help="distinct patches cycled through")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    crops, source = load_patches(args.slide, max(args.pool, max(args.batches)), max(args.sizes))
    encoder = create_encoder(args.encoder)
    print(f"encoder {args.encoder} (dim {encoder.dim}), input: {source}")
    print(f"{'size':>5} {'batch':>6} {'threads':>8} {'median/s':>10} {'best/s':>10}")
    results = []
    for size in args.sizes:
        pool = crops[:, :size, :size].contiguous()
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                rates = measure(encoder, pool, batch, args.seconds)
                row = {
                    "size": size,
                    "batch": batch,
                    "threads": threads,
                    "median_patches_per_s": round(statistics.median(rates), 1),
                    "best_patches_per_s": round(max(rates), 1),
                }
                results.append(row)
                print(
                    f"{size:>5} {batch:>6} {threads:>8} "
                    f"{row['median_patches_per_s']:>10.0f} {row['best_patches_per_s']:>10.0f}"
                )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
