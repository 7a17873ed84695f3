"""Choose the few-shot recipe of report-pretrained FiVE on development cohorts, never the test
benchmark.

The test benchmark (``benchmarks/bench_fewshot.py``) draws its cohort with seed 0. This
benchmark draws development cohorts with other seeds (default 101), pretrains FiVE once on each
dev cohort's report labels, then, for k shots per class (drawn from the dev cohort's own train
rows by ``fivewsi train --shots k --seed s``) and each seed, scores the dev cohort's test rows
with every candidate:

- ``zero-shot``: the pretrained run as it is;
- ``tip-adapter α β reduce``: the training-free cache (``fivewsi.runs.adapter``) over a small
  grid of its settings; the cache is built by a real ``tip-adapter`` run, the grid is applied to
  its stored embeddings in-process (same arithmetic as ``SlideClassifier``);
- ``partial``: the aggregator trained at a low rate with L2-SP (a real ``partial`` run), and
  ``partial+wise α``: its weights interpolated with the start (WiSE-FT), in-process;
- ``full`` (``--with-full``): today's recipe (every parameter, ≥ 200 steps).

Prints one table (balanced accuracy %, mean ± sd over seeds, per k) and writes
``OUT/recipe.json`` and ``OUT/recipe.md``.

Usage:
    python benchmarks/bench_recipe.py --out /tmp/recipe    # the comparison (~15 min, 2 cores)
    python benchmarks/bench_recipe.py --cohort /tmp/recipe-dev/cohort \\
        --pretrained /tmp/recipe-dev/pretrain --out /tmp/recipe      # reuse a dev pretraining
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("fivewsi.bench")

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "recipe"
#: The test benchmark's cohort seed (bench_fewshot.py --cohort-seed): never used here.
BENCHMARK_SEED = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cohort-seed", type=int, default=101)
    parser.add_argument("--cohort", type=Path, default=None, help="reuse this dev cohort folder")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="reuse this reports run (pretrained on the dev cohort)")
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--pretrain-epochs", type=int, default=12)
    parser.add_argument("--shots", default="1,2,4,8")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--alphas", default="0.5,1,2,4")
    parser.add_argument("--betas", default="1,5.5")
    parser.add_argument("--wise", default="0.5")
    parser.add_argument("--no-partial", action="store_true")
    parser.add_argument("--with-full", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def dev_cohort(args: argparse.Namespace) -> Path:
    from fivewsi.synthetic import make_feature_cohort

    if args.cohort is not None:
        return args.cohort.resolve()
    if args.cohort_seed == BENCHMARK_SEED:
        raise SystemExit(f"seed {BENCHMARK_SEED} is the test benchmark's cohort: pick another")
    root = args.out / "cohort"
    if not (root / "cohort.csv").is_file():
        make_feature_cohort(root, n_train=args.n_train, n_test=args.n_test,
                            seed=args.cohort_seed, overwrite=True)
    return root


def pretrain(args: argparse.Namespace, cohort: Path) -> Path:
    from fivewsi.training import TrainConfig, train

    if args.pretrained is not None:
        return args.pretrained.resolve()
    config = TrainConfig(features=cohort / "features", cohort=cohort / "cohort.csv",
                         out=args.out / "pretrain", objective="reports", model="five",
                         epochs=args.pretrain_epochs, progress=False)
    train(config)
    return config.out


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    classes = np.unique(truth)
    return float(np.mean([(predicted[truth == c] == c).mean() for c in classes]))


def scores(run: Path, bags: list[Any], classes: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Class logits (with the run's adapter, if any) and embeddings of ``bags``."""
    from fivewsi import load_model

    classifier = load_model(run, classes=classes)
    logits, embeddings = [], []
    for i in range(0, len(bags), 16):
        for p in classifier.predict_batch(bags[i : i + 16]):
            logits.append(p.logits)
            embeddings.append(p.embedding)
    return np.stack(logits), np.stack(embeddings)


def wise_scores(start: Path, tuned: Path, weight: float, bags: list[Any]) -> np.ndarray:
    """Class logits of ``start + weight · (tuned − start)`` (WiSE-FT), in-process."""
    import torch
    from safetensors.torch import load_file

    from fivewsi import load_model

    classifier = load_model(tuned)
    a = load_file(str(start / "model.safetensors"))
    b = load_file(str(tuned / "model.safetensors"))
    mixed = {k: a[k] + weight * (b[k] - a[k]) if k in a else b[k] for k in b}
    classifier.model.load_saved_state_dict(mixed)
    classifier.temperature = 1.0
    with torch.no_grad():
        return np.stack([p.logits for i in range(0, len(bags), 16)
                         for p in classifier.predict_batch(bags[i : i + 16])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import torch

    from fivewsi.cohort.table import read_classes, read_cohort
    from fivewsi.features.bags import load_bag
    from fivewsi.runs.adapter import TipAdapter
    from fivewsi.training import TrainConfig, train
    from fivewsi.utils.atomic import write_json_atomic

    logging.basicConfig(level=logging.WARNING)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cohort = dev_cohort(args)
    pretrained = pretrain(args, cohort)
    pretrain_seconds = time.perf_counter() - started
    classes_csv = cohort / "classes.csv"
    names = [c.name for c in read_classes(classes_csv)]
    rows = [r for r in read_cohort(cohort / "cohort.csv") if r.label is not None]
    test = [r for r in rows if r.split == "test"]
    truth = np.array([names.index(r.label) for r in test])
    bags = [load_bag(cohort / "features" / f"{r.slide_id}.h5") for r in test]
    zero_logits, test_emb = scores(pretrained, bags, classes_csv)
    zero_ba = balanced_accuracy(truth, zero_logits.argmax(1))
    scale = float(load_model_scale(pretrained, classes_csv))
    print(f"dev cohort {cohort} (seed {args.cohort_seed}); zero-shot balanced accuracy "
          f"{100 * zero_ba:.1f} % on its {len(test)} test rows; logit scale {scale:.1f}")

    results: dict[str, dict[int, list[float]]] = {}

    def add(name: str, k: int, value: float) -> None:
        results.setdefault(name, {}).setdefault(k, []).append(value)

    shots = [int(k) for k in args.shots.split(",")]
    emb = torch.from_numpy(test_emb).float()
    zero = torch.from_numpy(zero_logits).float()
    for k in shots:
        for seed in range(args.seeds):
            add("zero-shot", k, zero_ba)
            base = dict(features=cohort / "features", cohort=cohort / "cohort.csv",
                        classes=classes_csv, init=pretrained, shots=k, seed=seed,
                        progress=False)
            tip_run = args.out / "runs" / f"tip-k{k}-s{seed}"
            train(TrainConfig(out=tip_run, recipe={"name": "tip-adapter"}, **base))
            logits, _ = scores(tip_run, bags, None)
            add("tip-adapter (run, defaults)", k, balanced_accuracy(truth, logits.argmax(1)))
            from fivewsi.runs.adapter import load_adapter

            cache = load_adapter(tip_run / "adapter.safetensors")
            for reduce in ("sum", "mean"):
                for alpha in _floats(args.alphas):
                    for beta in _floats(args.betas):
                        adapter = TipAdapter(cache.keys, cache.values, alpha=alpha, beta=beta,
                                             reduce=reduce)
                        out = adapter.logits(emb, zero, scale=scale).numpy()
                        add(f"tip-adapter α={alpha:g} β={beta:g} {reduce}", k,
                            balanced_accuracy(truth, out.argmax(1)))
            if not args.no_partial:
                part_run = args.out / "runs" / f"partial-k{k}-s{seed}"
                train(TrainConfig(out=part_run, recipe={"name": "partial"}, **base))
                logits, _ = scores(part_run, bags, None)
                add("partial (l2sp 1e-2, lr 3e-5, 10 steps/shot)", k,
                    balanced_accuracy(truth, logits.argmax(1)))
                for weight in _floats(args.wise):
                    logits = wise_scores(pretrained, part_run, weight, bags)
                    add(f"partial + WiSE-FT {weight:g}", k,
                        balanced_accuracy(truth, logits.argmax(1)))
            if args.with_full:
                full_run = args.out / "runs" / f"full-k{k}-s{seed}"
                train(TrainConfig(out=full_run, recipe={"name": "full"}, **base))
                logits, _ = scores(full_run, bags, None)
                add("full (today)", k, balanced_accuracy(truth, logits.argmax(1)))
            print(f"k={k} seed={seed} done ({time.perf_counter() - started:.0f} s)", flush=True)

    table = markdown(results, shots)
    print(table)
    (args.out / "recipe.md").write_text(table)
    write_json_atomic(args.out / "recipe.json", {
        "cohort": str(cohort), "cohort_seed": args.cohort_seed, "pretrained": str(pretrained),
        "zero_shot": zero_ba, "logit_scale": scale, "pretrain_seconds": pretrain_seconds,
        "seconds": time.perf_counter() - started,
        "results": {n: {str(k): v for k, v in by_k.items()} for n, by_k in results.items()},
    })
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def load_model_scale(run: Path, classes: Path) -> float:
    from fivewsi import load_model

    return load_model(run, classes=classes).logit_scale()


def markdown(results: dict[str, dict[int, list[float]]], shots: list[int]) -> str:
    head = "| candidate | " + " | ".join(f"k={k}" for k in shots) + " | mean |\n"
    head += "|---|" + "---:|" * (len(shots) + 1) + "\n"
    lines = []
    for name, by_k in results.items():
        cells = []
        means = []
        for k in shots:
            values = by_k.get(k, [])
            if not values:
                cells.append("–")
                continue
            mean = statistics.fmean(values)
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            means.append(mean)
            cells.append(f"{100 * mean:.1f} ± {100 * sd:.1f}")
        overall = f"{100 * statistics.fmean(means):.1f}" if means else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {overall} |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
