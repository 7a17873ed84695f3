"""Benchmark of `fivewsi preprocess` against raw OpenSlide tile reading on the same slide.

Measures, on one slide (default: the large pyramidal TIFF built by make_large_slide.py):

1. tissue detection + patch coordinates (seconds, best of 3);
2. raw OpenSlide throughput: ``read_region`` of every tissue patch (256 px at level 0),
   JPEG decode included, nothing else — per process and with ``--workers`` processes;
3. end to end ``preprocess`` with the default encoder (read + embed + write): patches/s and the
   peak memory of the whole process tree (main process + reader workers), sampled every 50 ms.

Usage:
    python benchmarks/make_large_slide.py --out benchmarks/data/large.tif
    python benchmarks/bench_preprocess.py benchmarks/data/large.tif --workers 2 \\
        --json benchmarks/out/preprocess.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from fivewsi.features.preprocess import PreprocessConfig, preprocess
from fivewsi.slides.readers import open_slide
from fivewsi.slides.tiling import tile_slide

log = logging.getLogger("bench_preprocess")


def time_tiling(path: Path, mpp: float, patch_size: int, repeats: int = 3) -> tuple[float, object]:
    best, tiling = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        with open_slide(path) as slide:
            tiling = tile_slide(slide, target_mpp=mpp, patch_size=patch_size)
        best = min(best, time.perf_counter() - started)
    return best, tiling


def _read_share(args: tuple[str, np.ndarray, int, int]) -> int:
    import openslide

    path, coords, level, size = args
    slide = openslide.OpenSlide(path)
    for x, y in coords:
        slide.read_region((int(x), int(y)), level, (size, size))
    slide.close()
    return len(coords)


def raw_read_rate(path: Path, coords: np.ndarray, size: int, processes: int) -> float:
    """Tiles per second reading ``coords`` with plain OpenSlide in ``processes`` processes."""
    shares = [(str(path), part, 0, size) for part in np.array_split(coords, processes)]
    started = time.perf_counter()
    if processes == 1:
        n = _read_share(shares[0])
    else:
        with mp.get_context("fork").Pool(processes) as pool:
            n = sum(pool.map(_read_share, shares))
    return n / (time.perf_counter() - started)


class PeakMemory:
    """Samples the summed RSS of this process and its children until stopped."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
                    total += child.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def end_to_end(path: Path, config: PreprocessConfig) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="fivewsi-bench-"))
    try:
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = preprocess([path], out, config, progress=False)
            seconds = time.perf_counter() - started
        record = result.records[0]
        if record.status != "done":
            raise RuntimeError(record.error)
        return {
            "patches": record.n_patches,
            "seconds": round(seconds, 2),
            "patches_per_s": round(record.n_patches / seconds, 1),
            "peak_rss_gb": round(memory.peak / 1e9, 3),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-raw", type=int, default=6000, help="patches for the raw read rate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tiling_s, tiling = time_tiling(args.slide, args.mpp, args.patch_size)
    coords = tiling.coords
    log.info("tissue + coords: %.3f s, %d patches", tiling_s, len(coords))
    rng = np.random.default_rng(0)
    sample = coords[rng.permutation(len(coords))[: args.max_raw]]
    size0 = tiling.patch_size_level0
    raw_1 = raw_read_rate(args.slide, sample, size0, 1)
    raw_w = raw_read_rate(args.slide, sample, size0, args.workers)
    log.info("raw OpenSlide: %.0f tiles/s (1 process), %.0f tiles/s (%d processes)",
             raw_1, raw_w, args.workers)
    config = PreprocessConfig(target_mpp=args.mpp, patch_size=args.patch_size,
                              workers=args.workers, batch_size=args.batch_size, qc=True)
    e2e = end_to_end(args.slide, config)
    log.info("end to end: %s", e2e)
    results = {
        "slide": str(args.slide),
        "slide_size": list(open_slide(args.slide).dimensions),
        "cpu_count": psutil.cpu_count(),
        "tissue_and_coords_s": round(tiling_s, 3),
        "n_patches": len(coords),
        "raw_tiles_per_s_1proc": round(raw_1, 1),
        f"raw_tiles_per_s_{args.workers}proc": round(raw_w, 1),
        "workers": args.workers,
        "batch_size": args.batch_size,
        "end_to_end": e2e,
        "end_to_end_vs_raw": round(e2e["patches_per_s"] / raw_w, 3),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
