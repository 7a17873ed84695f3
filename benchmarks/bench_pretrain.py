"""Report pretraining speed on CPU: where an epoch's time goes, and two code versions side by side.

A synthetic feature cohort (``fivewsi.synthetic.make_feature_cohort``; by default 300 train
slides of 1 600-2 000 patches, feature size 256, plus 100 test slides) is pretrained on its
report labels with the default FiVE settings (frozen all-minilm-l6-v2 text encoder, negatives
``all``, batch 8, 25 % of the patches per slide and step) for ``--epochs`` epochs by each code
version, each in its own process (``PYTHONPATH`` = that version's ``src``), one after the other
and ``--repeats`` times in alternating order (the machine may be shared: compare the versions
within one run of this script only). Per version it reports the wall time of every epoch (its
validation included), the validation share, how many strings the text encoder really encoded,
and the zero-shot balanced accuracy of the pretrained run on the test slides (the cohort's class
descriptions), which must agree between versions (so must the final weights: their SHA-256
is compared).

``--profile`` adds a cProfile breakdown of one epoch of the first version: text encoding
(cache misses), the TFS forward passes (training and validation), the backward pass, the
optimiser, bag loading and sampling, collation, the step's label rendering.

Usage:
    git worktree add /tmp/base <commit>          # the code to compare against
    python benchmarks/bench_pretrain.py --base /tmp/base/src --epochs 2 --profile
    python benchmarks/bench_pretrain.py --n-train 40 --n-test 20 --epochs 1 --out /tmp/pt-smoke

Everything goes under ``--out`` (default ``benchmarks/out/pretrain``): ``cohort/``, one run
folder per version and repeat, ``summary.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "pretrain"
HERE_SRC = Path(__file__).resolve().parents[1] / "src"

#: Profile categories: (label, file suffix, function name) of cumulative times; "backward" and
#: "optimiser" are computed below.
CATEGORIES = (
    ("text encoding (cache misses)", "model/text.py", "_encode"),
    ("training step (forward, text, loss)", "training/module.py", "training_step"),
    ("validation step (forward)", "training/module.py", "validation_step"),
    ("bag loading + patch sampling", "training/data.py", "__getitem__"),
    ("h5 reads (planning's checks included)", "features/bags.py", "load_bag"),
    ("collate (padding)", "training/data.py", "collate_bags"),
    ("label rendering (report_step)", "training/losses.py", "report_step"),
    ("step texts → embeddings", "training/losses.py", "encode_step_texts"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--base", type=Path, default=None,
                        help="src folder of the code to compare against (e.g. /tmp/base/src)")
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--dim", type=int, default=256, help="synthetic feature size")
    parser.add_argument("--patches", default="1600,2000", help="patches per slide: LOW,HIGH")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own, the cores)")
    parser.add_argument("--profile", action="store_true",
                        help="also a cProfile breakdown of one epoch of the first version")
    # Internal: one training run in this process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- worker: one pretraining run with the fivewsi found on PYTHONPATH ---------------------------


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import lightning as L
    import torch

    import fivewsi
    from fivewsi.evaluation.evaluate import evaluate_run
    from fivewsi.training.config import TrainConfig
    from fivewsi.training.train import train

    if args.threads:
        torch.set_num_threads(args.threads)

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.epoch: list[float] = []
            self.val: list[float] = []
            self.encoder: Any = None

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.epoch.append(time.perf_counter())
            self.encoder = getattr(module.model, "text_encoder", None)

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            self.epoch.append(time.perf_counter())

        def on_validation_epoch_start(self, trainer: Any, module: Any) -> None:
            self.val.append(time.perf_counter())

        def on_validation_epoch_end(self, trainer: Any, module: Any) -> None:
            self.val.append(time.perf_counter())

    cohort = args.cohort
    timer = Timer()
    config = TrainConfig(
        features=cohort / "features", cohort=cohort / "cohort.csv", out=args.run,
        epochs=args.epochs, min_steps=0, progress=False, overwrite=True, device="cpu",
    )
    started = time.perf_counter()
    if args.profile_out:
        profile = cProfile.Profile()
        profile.runcall(train, config, callbacks=[timer])
        profile.dump_stats(str(args.profile_out))
    else:
        train(config, callbacks=[timer])
    seconds = time.perf_counter() - started
    epochs = [b - a for a, b in zip(timer.epoch[::2], timer.epoch[1::2], strict=True)]
    # Lightning's sanity check validates before the first epoch: keep the in-epoch passes.
    val = [b - a for a, b in zip(timer.val[::2], timer.val[1::2], strict=True)][-len(epochs):]
    result = evaluate_run(
        args.run, cohort / "features", cohort / "cohort.csv", split="test",
        classes=cohort / "classes.csv", n_bootstrap=0,
    )
    return {
        "fivewsi": str(Path(fivewsi.__file__).parent),
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "epoch_seconds": epochs,
        "val_seconds": val,
        "texts_encoded": getattr(timer.encoder, "n_encoded", None),
        "weights_sha256": hashlib.sha256((args.run / "model.safetensors").read_bytes()).hexdigest(),
        "zero_shot_bacc": float(result.metrics["balanced_accuracy"]["value"]),
    }


# -- driver -----------------------------------------------------------------------------------


def run_version(args: argparse.Namespace, name: str, src: Path, cohort: Path, repeat: int,
                profile_out: Path | None = None) -> dict[str, Any]:
    run = args.out / f"run-{name}-{repeat}"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--cohort", str(cohort),
               "--run", str(run), "--epochs", str(args.epochs)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if profile_out is not None:
        command += ["--profile-out", str(profile_out)]
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_table(path: Path) -> list[tuple[str, float]]:
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    def cumulative(suffix: str, function: str) -> float:
        return sum(v[3] for (file, _, fn), v in stats.items()
                   if fn == function and file.endswith(suffix))
    total = max(v[3] for v in stats.values())
    rows = [("whole train() call", total)]
    rows += [(label, cumulative(suffix, fn)) for label, suffix, fn in CATEGORIES]
    backward = sum(v[3] for (_, _, fn), v in stats.items()
                   if fn.startswith("<method 'run_backward'"))
    step = sum(v[3] for (file, _, fn), v in stats.items()
               if fn == "step" and file.endswith(("adamw.py", "adam.py")))
    closure = sum(v[3] for (file, _, fn), v in stats.items()
                  if fn == "closure" and file.endswith("automatic.py"))
    rows.insert(3, ("backward", backward))
    rows.insert(4, ("optimiser update (AdamW)", max(0.0, step - closure)))
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    sys.path.insert(0, str(HERE_SRC))
    from fivewsi.synthetic import make_feature_cohort

    args.out.mkdir(parents=True, exist_ok=True)
    cohort = args.out / "cohort"
    low, high = (int(x) for x in args.patches.split(","))
    if not (cohort / "cohort.csv").exists():
        make_feature_cohort(cohort, n_train=args.n_train, n_test=args.n_test, dim=args.dim,
                            n_patches=(low, high), seed=0)
    versions = {"current": HERE_SRC}
    if args.base is not None:
        versions = {"base": args.base.resolve(), **versions}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in versions}
    profile = None
    for repeat in range(args.repeats):
        order = list(versions) if repeat % 2 == 0 else list(versions)[::-1]
        for name in order:
            profile_out = None
            if args.profile and repeat == 0 and name == "current":
                profile = args.out / f"profile-{name}.prof"
                profile_out = profile
            res = run_version(args, name, versions[name], cohort, repeat, profile_out)
            results[name].append(res)
            print(f"[{name} #{repeat}] epochs {[round(s, 1) for s in res['epoch_seconds']]} s, "
                  f"val {[round(s, 1) for s in res['val_seconds']]} s, "
                  f"encoded {res['texts_encoded']}, zero-shot bacc {res['zero_shot_bacc']:.3f}",
                  flush=True)
    summary: dict[str, Any] = {
        "settings": {k: str(v) for k, v in vars(args).items() if not k.startswith(("worker",))},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg()},
        "results": results,
    }
    print("\n| version | s / epoch (median) | of which validation | texts encoded | "
          "zero-shot bacc |\n| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        epochs = [s for r in runs for s in r["epoch_seconds"]]
        val = [s for r in runs for s in r["val_seconds"]]
        bacc = [r["zero_shot_bacc"] for r in runs]
        print(f"| {name} | {statistics.median(epochs):.1f} | {statistics.median(val):.1f} | "
              f"{runs[0]['texts_encoded']} | {statistics.mean(bacc):.3f} |")
    if len(results) == 2:
        base = statistics.median(s for r in results["base"] for s in r["epoch_seconds"])
        cur = statistics.median(s for r in results["current"] for s in r["epoch_seconds"])
        summary["speedup"] = base / cur
        same = {r["weights_sha256"] for rs in results.values() for r in rs}
        summary["same_weights"] = len(same) == 1
        print(f"\nspeed-up per epoch (median): {base / cur:.2f}x; "
              f"identical final weights in every run: {len(same) == 1}")
    if profile is not None:
        rows = profile_table(profile)
        summary["profile_seconds"] = dict(rows)
        print(f"\nprofile of the current version ({args.epochs} epoch(s), cProfile; cumulative s)")
        for label, seconds in rows:
            print(f"  {label:<40} {seconds:8.2f}")
    print(f"\nload average at the end: {os.getloadavg()}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
