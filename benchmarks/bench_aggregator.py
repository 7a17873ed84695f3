"""Cost of the TFS aggregator by bag size: local (default) vs full self-attention, on CPU.

Each configuration (attention mode × N patches × pass) runs in a fresh subprocess so its peak
memory is its own: the peak resident set (``ru_maxrss``) is reported as measured, and minus the
baseline of the same interpreter right after ``import torch`` (the aggregator's own share).
Input: batch 1, D = 512 random patch features on a square patch grid, dim 512, 8 heads,
22 random prompts (6 questions + 16 learnable; no text encoder involved). ``forward`` runs under
``torch.no_grad()`` in eval mode; ``forward+backward`` in train mode (dropout 0.1) with the
prompts requiring grad. Times are medians over ``--repeats`` runs after one warm-up (the warm-up
is skipped for single runs over ~10 s). Full attention at N where it would take longer than
``--max-seconds`` per run is not run but estimated from the largest measured N (attention
dominates, so ×(N/N₀)²), and marked as an estimate.

Usage:
    python benchmarks/bench_aggregator.py                 # the table in docs/model.md
    python benchmarks/bench_aggregator.py --sizes 2048 8192 --repeats 2 --tune
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fivewsi.utils.atomic import write_json_atomic

logger = logging.getLogger("bench_aggregator")

OUT = Path(__file__).resolve().parent / "out" / "aggregator.json"
D, DIM, HEADS, PROMPTS = 512, 512, 8, 22
PASSES = ("forward", "forward+backward")
#: Issue 4's measurement of a full-attention aggregator at N = 16 384 (seconds).
ISSUE_FULL_16K = {"forward": 5.0, "forward+backward": 17.9}


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(mode: str, n: int, pass_: str, repeats: int, block_size: int, shift: bool) -> dict:
    """One configuration, in this (fresh) process; returns its timings and memory."""
    import torch

    torch.set_num_threads(2)
    baseline = peak_rss_mb()
    from fivewsi.model.outputs import BagBatch
    from fivewsi.model.tfs import TFSAggregator

    torch.manual_seed(0)
    model = TFSAggregator(
        D, DIM, heads=HEADS, attention=mode, block_size=block_size, shift=shift, dropout=0.1
    )
    side = int(n**0.5 + 0.999)
    index = torch.arange(n)
    coords = torch.stack([index % side, index // side], dim=1).float()
    batch = BagBatch.from_bags([torch.randn(n, D)], [coords])
    prompts = torch.randn(PROMPTS, DIM, requires_grad=pass_ != "forward")

    def run() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        if pass_ == "forward":
            model.eval()
            with torch.no_grad():
                model(batch, prompts)
        else:
            model.train()
            model.zero_grad(set_to_none=True)
            out = model(batch, prompts)
            (out.embedding.square().sum() + out.patch_attention.square().sum()).backward()
        return time.perf_counter() - start, time.process_time() - cpu

    first = run()
    runs = [first] if first[0] > 10 or repeats == 1 else []
    while len(runs) < repeats:
        runs.append(run())
    times = [wall for wall, _ in runs]
    peak = peak_rss_mb()
    return {
        "mode": mode,
        "n": n,
        "pass": pass_,
        "block_size": block_size if mode == "local" else None,
        "shift": shift if mode == "local" else None,
        "seconds": statistics.median(times),
        "cpu_seconds": statistics.median(cpu for _, cpu in runs),
        "times": times,
        "peak_rss_mb": round(peak, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_minus_baseline_mb": round(peak - baseline, 1),
        "estimated": False,
    }


def measure(mode: str, n: int, pass_: str, args: argparse.Namespace, **local: Any) -> dict:
    """Run one configuration in a subprocess and parse its JSON line."""
    block = local.get("block_size", args.block_size)
    shift = local.get("shift", True)
    command = [
        sys.executable, __file__, "--worker", mode, str(n), pass_,
        "--repeats", str(args.repeats), "--block-size", str(block),
    ]  # fmt: skip
    if not shift:
        command.append("--no-shift")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} N={n} {pass_} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    logger.info(
        "%-5s N=%6d %-16s %8.3f s (CPU %7.2f s)  peak %7.0f MB (+%.0f)",
        mode, n, pass_, result["seconds"], result["cpu_seconds"], result["peak_rss_mb"],
        result["peak_minus_baseline_mb"],
    )  # fmt: skip
    return result


def estimate(measured: dict, n: int) -> dict:
    """Full attention at ``n`` from a measurement at smaller N: time ∝ N², memory ∝ N."""
    ratio = n / measured["n"]
    return {
        **measured,
        "n": n,
        "seconds": measured["seconds"] * ratio**2,
        "cpu_seconds": measured["cpu_seconds"] * ratio**2,
        "times": [],
        "peak_rss_mb": None,
        "baseline_rss_mb": measured["baseline_rss_mb"],
        "peak_minus_baseline_mb": round(measured["peak_minus_baseline_mb"] * ratio, 1),
        "estimated": True,
        "estimated_from_n": measured["n"],
    }


def markdown(results: list[dict]) -> str:
    """The main table: one row per N and pass, local vs full side by side."""
    rows = [
        "| N | pass | local s | full s | full / local | local CPU s | full CPU s "
        "| local peak MB (Δ) | full peak MB (Δ) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    main = [r for r in results if not r.get("tuning")]
    for n in sorted({r["n"] for r in main}):
        for pass_ in PASSES:
            cell = {r["mode"]: r for r in main if r["n"] == n and r["pass"] == pass_}
            local, full = cell.get("local"), cell.get("full")
            if not local or not full:
                continue
            est = "≈" if full["estimated"] else ""
            full_mem = (
                f"≈(+{full['peak_minus_baseline_mb']:.0f})"
                if full["estimated"]
                else f"{full['peak_rss_mb']:.0f} (+{full['peak_minus_baseline_mb']:.0f})"
            )
            rows.append(
                f"| {n} | {pass_} | {local['seconds']:.3f} | {est}{full['seconds']:.2f} | "
                f"{est}{full['seconds'] / local['seconds']:.1f}× | "
                f"{local['cpu_seconds']:.2f} | {est}{full['cpu_seconds']:.2f} | "
                f"{local['peak_rss_mb']:.0f} (+{local['peak_minus_baseline_mb']:.0f}) | "
                f"{full_mem} |"
            )
    tuning = [r for r in results if r.get("tuning")]
    if tuning:
        rows += ["", "| local variant (N, pass) | block | shift | s | CPU s | peak MB (Δ) |"]
        rows += ["|---|---:|---|---:|---:|---:|"]
        for r in tuning:
            rows.append(
                f"| {r['n']} {r['pass']} | {r['block_size']} | {r['shift']} | "
                f"{r['seconds']:.3f} | {r['cpu_seconds']:.2f} | "
                f"{r['peak_rss_mb']:.0f} (+{r['peak_minus_baseline_mb']:.0f}) |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384, 65536])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--no-shift", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="skip full runs above")
    parser.add_argument("--tune", action="store_true", help="also compare local variants")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", nargs=3, metavar=("MODE", "N", "PASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.block_size is None:
        from fivewsi.model.tfs import DEFAULT_BLOCK_SIZE

        args.block_size = DEFAULT_BLOCK_SIZE
    if args.worker:
        mode, n, pass_ = args.worker
        result = worker(mode, int(n), pass_, args.repeats, args.block_size, not args.no_shift)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: list[dict] = []
    for pass_ in PASSES:
        for n in sorted(args.sizes):
            results.append(measure("local", n, pass_, args))
            done = [r for r in results if r["mode"] == "full" and r["pass"] == pass_]
            guess = estimate(done[-1], n) if done else None
            if guess is not None and guess["seconds"] > args.max_seconds:
                results.append(guess)
                logger.info("full  N=%6d %-16s ≈%.1f s (estimated)", n, pass_, guess["seconds"])
            else:
                results.append(measure("full", n, pass_, args))
    if args.tune:
        n = 16384 if 16384 in args.sizes else max(args.sizes)
        for block, shift in ((128, True), (256, True), (512, True), (1024, True), (256, False)):
            for pass_ in PASSES:
                r = measure("local", n, pass_, args, block_size=block, shift=shift)
                results.append({**r, "tuning": True})

    import torch

    report = {
        "benchmark": "TFS aggregator, batch 1, D=512, dim=512, 8 heads, 22 prompts",
        "command": " ".join(["python", "benchmarks/bench_aggregator.py", *sys.argv[1:]]),
        "torch": torch.__version__,
        "threads": 2,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "issue_full_attention_16k_seconds": ISSUE_FULL_16K,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    sys.stdout.write(markdown(results) + "\n")


if __name__ == "__main__":
    main()
