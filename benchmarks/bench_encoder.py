"""Throughput of patch encoders on CPU or CUDA, in patches per second (and GPU utilisation).

Input: random 256 px crops of a real H&E slide (``--slide``, default the shared CMU-1 small
region, read with OpenSlide) cut to each patch size; white-noise patches when the slide is
absent. Each configuration (encoder x patch size x batch size [x torch threads on the CPU]) runs
for ``--seconds`` after a warm-up, cycling through a pool of distinct patches as a pipeline would
(no patch is cache-hot). Reported: the median and the best batch, as patches/s. The machine's
other load shows as a gap between the two; the pipeline's budget is the median.

``--device cuda`` runs each encoder as ``fivewsi preprocess`` does on a GPU (bf16/fp16
autocast, channels-last conv nets, pinned uint8 patches copied asynchronously), times it with
CUDA synchronisation, and reports GPU utilisation: the mean of ``torch.cuda.utilization()``
sampled every 50 ms when pynvml is installed, else the fraction of wall time the GPU spent
inside the encoder's forward passes, measured with CUDA events. ``--batches auto`` uses the batch
size preprocess would choose from free GPU memory. Encoders that need weights take them from
``--weights NAME=PATH`` or the local Hugging Face cache; one that cannot be built is reported
as skipped. ``--random-weights`` gives every recipe encoder without ``--weights`` random weights
saved in its published layout (the references of ``bench_encoder_parity.py``; needs the
[models] extra): throughput does not depend on the values.

Usage:
    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --sizes 256 --batches 64 --threads 1 --seconds 10
    python benchmarks/bench_encoder.py --encoders uni phikon --random-weights --sizes 224 \
        --batches 16 --threads 2
    python benchmarks/bench_encoder.py --device cuda --encoders uni conch --sizes 224 \
        --batches auto 256 --weights uni=/models/uni conch=/models/conch --json out/gpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
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


class GpuUtilisation:
    """GPU busy share during a measurement: NVML samples when pynvml is present, else the time
    inside CUDA-event-bracketed forward passes over the wall time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = "nvml" if _has_nvml() else "cuda-events"
        self._samples: list[float] = []
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wall = 0.0

    def __enter__(self) -> GpuUtilisation:
        self._started = time.perf_counter()
        if self.method == "nvml":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._samples.append(float(torch.cuda.utilization(self.device)))

    def forward(self, encoder: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = encoder(patches)
        end.record()
        self._events.append((start, end))
        return out

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self._wall = time.perf_counter() - self._started
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def percent(self) -> float:
        if self.method == "nvml" and self._samples:
            return statistics.fmean(self._samples)
        busy = sum(start.elapsed_time(end) for start, end in self._events) / 1000.0
        return 100.0 * min(1.0, busy / max(self._wall, 1e-9))


def _has_nvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


def measure_cuda(
    encoder: torch.nn.Module, pool: torch.Tensor, batch: int, seconds: float,
    device: torch.device,
) -> tuple[list[float], float, str]:
    """Patches/s of each batch on CUDA (synchronised), and the GPU utilisation (%, method)."""
    from fivewsi.features.extract import autocast_context

    pinned = pool.pin_memory()
    batches = [pinned[s : s + batch] for s in range(0, len(pinned) - batch + 1, batch)]
    rates: list[float] = []
    with torch.inference_mode(), autocast_context(device):
        encoder(batches[0].to(device, non_blocking=True))  # warm-up (kernels, autotuning)
        torch.cuda.synchronize(device)
        with GpuUtilisation(device) as util:
            deadline = time.perf_counter() + seconds
            while time.perf_counter() < deadline or len(rates) < 3:
                for patches in batches:
                    started = time.perf_counter()
                    out = util.forward(encoder, patches.to(device, non_blocking=True))
                    out.float().cpu()  # the features come back, as in preprocess
                    rates.append(batch / (time.perf_counter() - started))
    return rates, util.percent, util.method


def _weights(pairs: list[str]) -> dict[str, Path]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise SystemExit(f"--weights takes NAME=PATH, got {pair!r}")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", "--encoder", nargs="+", default=["he-handcrafted"])
    parser.add_argument("--weights", nargs="*", default=[], help="NAME=PATH for an encoder")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights in the published layout for the others")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--slide", type=Path, default=DEFAULT_SLIDE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256])
    parser.add_argument("--batches", nargs="+", default=["32", "64", "128"],
                        help="batch sizes; 'auto' = chosen from free GPU memory (CUDA)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU only")
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    parser.add_argument("--pool", type=int, default=512, help="distinct patches cycled through")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    fixed = [int(b) for b in args.batches if b != "auto"]
    weights = _weights(args.weights)

    crops, source = load_patches(args.slide, max([args.pool, *fixed]), max(args.sizes))
    print(f"device {device}, input: {source}")
    print(f"{'encoder':>16} {'size':>5} {'batch':>6} {'threads':>8} {'median/s':>10} "
          f"{'best/s':>10} {'GPU util':>9}")
    results: list[dict[str, object]] = []
    scratch = tempfile.TemporaryDirectory()
    for name in args.encoders:
        try:
            path = weights.get(name)
            if path is None and args.random_weights:
                path = random_weights(name, Path(scratch.name) / name)
            encoder = _build(name, path, device)
        except Exception as exc:  # missing weights, missing extra: say so and go on
            print(f"{name:>16} skipped: {type(exc).__name__}: {exc}")
            results.append({"encoder": name, "device": str(device), "skipped": str(exc)})
            continue
        for size in args.sizes:
            pool = crops[:, :size, :size].contiguous()
            for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
                torch.set_num_threads(threads)
                for batch in _batches(args.batches, encoder, size, device):
                    row = _run(encoder, pool, batch, args.seconds, device)
                    row.update(encoder=name, device=str(device), size=size, batch=batch,
                               threads=threads)
                    results.append(row)
                    util = row.get("gpu_util_percent")
                    shown = "-" if util is None else f"{util:.0f}%"
                    print(f"{name:>16} {size:>5} {batch:>6} {threads:>8} "
                          f"{row['median_patches_per_s']:>10.1f} "
                          f"{row['best_patches_per_s']:>10.1f} {shown:>9}")
        del encoder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    scratch.cleanup()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


def random_weights(name: str, folder: Path) -> Path:
    """Random weights for recipe ``name`` in its published layout under ``folder``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_encoder_parity import REFERENCES

    if name not in REFERENCES:
        raise KeyError(f"no published layout known for {name!r}; pass --weights {name}=PATH")
    return REFERENCES[name](folder, small=False).weights


def _build(name: str, weights: Path | None, device: torch.device) -> torch.nn.Module:
    from fivewsi.features.extract import prepare_encoder

    encoder = create_encoder(name, weights).to(device)
    return prepare_encoder(encoder, device)


def _batches(wanted: list[str], encoder: torch.nn.Module, size: int,
             device: torch.device) -> list[int]:
    from fivewsi.features.extract import choose_batch_size

    out = []
    for batch in wanted:
        value = choose_batch_size(encoder, size, device) if batch == "auto" else int(batch)
        if value not in out:
            out.append(value)
    return out


def _run(encoder: torch.nn.Module, pool: torch.Tensor, batch: int, seconds: float,
         device: torch.device) -> dict[str, object]:
    if len(pool) < batch:  # an auto batch larger than the pool: cycle the pool
        pool = pool.repeat(math.ceil(batch / len(pool)), 1, 1, 1)
    if device.type == "cuda":
        rates, util, method = measure_cuda(encoder, pool, batch, seconds, device)
        extra: dict[str, object] = {"gpu_util_percent": round(util, 1), "gpu_util_method": method}
    else:
        with torch.inference_mode():
            rates = measure(encoder, pool, batch, seconds)
        extra = {}
    return {
        "median_patches_per_s": round(statistics.median(rates), 1),
        "best_patches_per_s": round(max(rates), 1),
        **extra,
    }


if __name__ == "__main__":
    main()
