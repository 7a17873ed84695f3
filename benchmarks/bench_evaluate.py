"""`fivewsi evaluate` end to end: a whole process on four bags of 16 384 patches.

The issue's target: ≤ 5 s on 2 CPU cores, process start included, for a FiVE run with the
default options (dim 512, 16 learnable prompts, local attention, all-MiniLM-L6-v2) scoring four
bags of 16 384 patches of the default encoder's feature size (he-handcrafted, 85).

The script writes the bags (synthetic features on a 128 × 128 patch grid), a cohort whose four
slides are the test split, and trains a small FiVE run on 16 small bags of the same feature size
(one epoch: only the cost of evaluating matters, not the accuracy). Then it times
``python -m fivewsi evaluate RUN --features ... --cohort ...`` as a subprocess ``--repeat``
times and reports the median. Which code is measured is the one on ``PYTHONPATH``: run it once
with ``PYTHONPATH=/path/to/old/src`` and once with the new one (each trains its own run, since
run records differ between versions).

Usage:
    python benchmarks/bench_evaluate.py [--out benchmarks/out/evaluate] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_PATCHES = 16_384
N_SLIDES = 4
DIM = 85  # he-handcrafted, the default patch encoder


def write_data(root: Path) -> None:
    """Four large test bags, sixteen small training bags, cohort and classes CSVs."""
    from fivewsi.features.bags import save_bag

    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    side = int(np.sqrt(N_PATCHES))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2) * 256
    rows = ["slide_id,label,report_label,split"]
    for i in range(N_SLIDES + 16):
        test = i < N_SLIDES
        label = ("LUAD", "LUSC")[i % 2]
        n = N_PATCHES if test else 256
        slide_id = f"{'test' if test else 'train'}-{i:02d}"
        feats = rng.normal(size=(n, DIM)).astype(np.float32) + (0.5 if label == "LUAD" else 0.0)
        save_bag(features / f"{slide_id}.h5", feats, grid[:n],
                 {"patch_size_level0": 256, "name": slide_id},
                 {"encoder": "he-handcrafted", "encoder_dim": DIM})
        rows.append(f"{slide_id},{label},,{'test' if test else 'train'}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "classes.csv").write_text(
        "name,description\nLUAD,lung adenocarcinoma\nLUSC,lung squamous cell carcinoma\n",
        encoding="utf-8",
    )


def train_run(root: Path) -> Path:
    from fivewsi.training import TrainConfig, train

    run = root / "run"
    train(TrainConfig(features=root / "features", cohort=root / "cohort.csv", out=run,
                      classes=root / "classes.csv", epochs=1, min_steps=0, batch_size=8,
                      progress=False, device="cpu"))
    return run


def time_evaluate(root: Path, run: Path, repeat: int) -> list[float]:
    command = [sys.executable, "-m", "fivewsi", "evaluate", str(run),
               "--features", str(root / "features"), "--cohort", str(root / "cohort.csv"),
               "--out", str(root / "evaluation"), "--bootstrap", "1000", "-q"]
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        subprocess.run(command, check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - tic)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "out" / "evaluate")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = args.out
    if not (root / "cohort.csv").is_file():
        write_data(root)
    run = root / "run"
    if not (run / "model.safetensors").is_file():
        train_run(root)
    times = time_evaluate(root, run, args.repeat)
    import fivewsi

    summary = {
        "code": str(Path(fivewsi.__file__).parent),
        "bags": N_SLIDES, "patches_per_bag": N_PATCHES, "dim": DIM,
        "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "seconds": [round(t, 2) for t in times],
        "median_seconds": round(statistics.median(times), 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
