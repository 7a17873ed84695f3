"""The headline experiment on a synthetic cohort: does pretraining on reports help few-shot?

Steps (each resumes when rerun with the same options):

1. a synthetic LUAD / LUSC cohort (``fivewsi.synthetic.feature_cohort``; 400 train + 200
   test slides), whose train slides carry fine-grained report labels and whose truth (tumour
   region per slide) is known;
2. FiVE pretrained on the train slides' report labels (timed);
3. the few-shot grid: FiVE from scratch, FiVE fine-tuned from the pretrained run
   (``five+reports``, plus its zero-shot row) and every label-only baseline, at k labelled
   slides per class × seeds, each tested on the 200 test slides (timed);
4. checks and diagnostics: for each k ≤ 8, whether five+reports beats every label-only
   baseline (mean balanced accuracy over seeds); the pretraining loss; how much of each
   model's attention falls on the tumour region of the test slides (vs. its share of patches).

Everything is written under ``--out`` (default ``benchmarks/out/fewshot``): ``cohort/``,
``pretrain/``, ``grid/`` (``fewshot.md``, ``fewshot.csv``, ``cells.csv``, ``runs/``) and
``summary.json``.

Usage:
    python benchmarks/bench_fewshot.py                                  # the whole grid
    python benchmarks/bench_fewshot.py --models abmil --shots 1,8 --seeds 2   # a quick check
    python benchmarks/bench_fewshot.py --n-train 40 --n-test 40 --pretrain-epochs 3 --epochs 3 \\
        --shots 2 --seeds 2 --out /tmp/fewshot-smoke
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from fivewsi.evaluation.fewshot import (
    HEADLINE,
    PRETRAINED_ROW,
    FewshotConfig,
    FewshotResult,
    run_fewshot,
)
from fivewsi.synthetic import load_truth, make_feature_cohort
from fivewsi.utils.atomic import write_json_atomic
from fivewsi.utils.logs import configure_logging

log = logging.getLogger("fivewsi.bench")

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "fewshot"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64, help="synthetic feature size")
    parser.add_argument("--cohort-seed", type=int, default=0)
    parser.add_argument("--models", default=None,
                        help="comma-separated (default: five and every label baseline)")
    parser.add_argument("--no-pretrain", action="store_true",
                        help="skip pretraining (no five+reports row)")
    parser.add_argument("--pretrain-only", action="store_true",
                        help="stop after pretraining (and its zero-shot evaluation)")
    parser.add_argument("--shots", default="1,2,4,8,16")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--epochs", default=None,
                        help="few-shot epochs: N for all or MODEL=N,... (default: the grid's)")
    parser.add_argument("--attention", default="local", choices=["local", "full"])
    parser.add_argument("--train-option", "-t", action="append", default=[],
                        help="KEY=VALUE (JSON value) for every training run, repeatable")
    parser.add_argument("--model-option", "-m", action="append", default=[],
                        help="ROW:KEY=VALUE training setting for one row only, e.g. "
                        "five+reports:lr=1e-4")
    parser.add_argument("--pretrained", type=Path, default=None,
                        help="use this finished reports run instead of pretraining")
    parser.add_argument("--grid", default="grid", help="grid folder name under --out")
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--table-only", action="store_true",
                        help="only tabulate the finished cells under --out/--grid (no training)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", "-v", action="count", default=0)
    return parser.parse_args(argv)


def _options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def _row_options(items: list[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for item in items:
        row, _, option = item.partition(":")
        rows.setdefault(row, {}).update(_options([option]))
    return rows


def _epochs(text: str | None) -> int | dict[str, int] | None:
    if text is None:
        return None
    if "=" not in text:
        return int(text)
    return {k.strip(): int(v) for k, v in (p.split("=", 1) for p in text.split(","))}


def cohort_folder(args: argparse.Namespace) -> Path:
    """The synthetic cohort, made once per set of options (reused when they match)."""
    root = args.out / "cohort"
    params = {"n_train": args.n_train, "n_test": args.n_test, "dim": args.dim,
              "seed": args.cohort_seed}
    stamp = root / "bench-params.json"
    if stamp.is_file():
        if json.loads(stamp.read_text()) != params:
            raise SystemExit(f"{root} holds a cohort made with other options; use another --out")
        log.info("reusing the synthetic cohort in %s", root)
        return root
    tic = time.perf_counter()
    make_feature_cohort(root, n_train=args.n_train, n_test=args.n_test, dim=args.dim,
                          seed=args.cohort_seed, overwrite=True)
    write_json_atomic(stamp, params)
    log.info("synthetic cohort written in %.1f s", time.perf_counter() - tic)
    return root


def pretrain(args: argparse.Namespace, cohort: Path, options: dict[str, Any]) -> dict[str, Any]:
    """Pretrain FiVE on the train slides' report labels; its timing and loss curve."""
    from fivewsi.training import TrainConfig, train

    config = TrainConfig(
        features=cohort / "features", cohort=cohort / "cohort.csv", out=args.out / "pretrain",
        objective="reports", model="five", epochs=args.pretrain_epochs,
        model_options={"attention": args.attention}, progress=not args.no_progress, **options,
    )
    tic = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - tic
    info = json.loads((config.out / "run.json").read_text())
    recorded = (info.get("result") or {}).get("seconds")
    return {
        "run": str(config.out),
        "n_train": result.n_train,
        "n_val": result.n_val,
        "epochs": result.epochs,
        "seconds": recorded if result.skipped and recorded is not None else seconds,
        "reused": result.skipped,
        "loss": loss_curve(config.out),
    }


def loss_curve(run: Path) -> dict[str, list[float]]:
    """Per-epoch losses logged by training (``logs/metrics.csv``), by metric name."""
    path = next(iter(sorted(run.glob("logs/**/metrics.csv"))), None)
    if path is None:
        return {}
    curves: dict[str, dict[int, float]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch")
            if epoch in ("", None):
                continue
            for key, value in row.items():
                # Lightning logs step and epoch values; keep the last value per epoch.
                if "loss" in key and value not in ("", None):
                    curves.setdefault(key, {})[int(float(epoch))] = float(value)
    return {k: [v[e] for e in sorted(v)] for k, v in curves.items()}


def tumour_attention(
    run: Path, cohort: Path, classes: Path | None, limit: int = 100
) -> dict[str, float]:
    """Mean share of patch / class attention on the tumour region of test slides, and the
    region's share of patches (what uniform attention would give)."""
    from fivewsi import load_model
    from fivewsi.cohort.table import read_cohort
    from fivewsi.features.bags import load_bag

    truth = load_truth(cohort)
    classifier = load_model(run, classes=classes)
    test = [r.slide_id for r in read_cohort(cohort / "cohort.csv") if r.split == "test"][:limit]
    patch, klass, share, top = [], [], [], []
    for slide_id in test:
        bag = load_bag(cohort / "features" / f"{slide_id}.h5")
        prediction = classifier.predict(bag)
        tumour = truth[slide_id]["tumour"]
        mask = np.zeros(bag.n_patches, dtype=bool)
        mask[tumour] = True
        patch.append(float(prediction.patch_attention[mask].sum()))
        klass.append(float(prediction.class_attention[mask].sum()))
        share.append(float(mask.mean()))
        best = np.argsort(prediction.class_attention)[::-1][: max(1, int(mask.sum()))]
        top.append(float(mask[best].mean()))
    return {
        "patch_attention_on_tumour": statistics.fmean(patch),
        "class_attention_on_tumour": statistics.fmean(klass),
        "tumour_share_of_patches": statistics.fmean(share),
        "top_class_attention_precision": statistics.fmean(top),
        "n_slides": len(test),
    }


def probe_diagnostics(
    cohort: Path, pretrained: Path | None, shots: list[int], seeds: list[int]
) -> dict[str, dict[int, float]]:
    """Balanced accuracy of logistic regression on k slides per class of fixed slide vectors:
    the pretrained run's slide embedding, mean-pooled features, and the mean of the true
    tumour region (an oracle no model has). Says whether pretraining put the class into the
    embedding, apart from how fine-tuning uses it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    from fivewsi.cohort.table import read_cohort
    from fivewsi.features.bags import load_bag

    truth = load_truth(cohort)
    rows = [r for r in read_cohort(cohort / "cohort.csv") if r.label is not None]
    vectors: dict[str, list[np.ndarray]] = {"mean-pooled features": [], "tumour-mean (oracle)": []}
    bags = [load_bag(cohort / "features" / f"{r.slide_id}.h5") for r in rows]
    for row, bag in zip(rows, bags, strict=True):
        vectors["mean-pooled features"].append(bag.features.mean(0))
        vectors["tumour-mean (oracle)"].append(bag.features[truth[row.slide_id]["tumour"]].mean(0))
    if pretrained is not None:
        from fivewsi import load_model

        classifier = load_model(pretrained, classes=cohort / "classes.csv")
        vectors["pretrained FiVE embedding"] = [
            p.embedding for i in range(0, len(bags), 16)
            for p in classifier.predict_batch(bags[i : i + 16])
        ]
    labels = np.array([r.label for r in rows])
    train = np.array([r.split == "train" for r in rows])
    out: dict[str, dict[int, float]] = {}
    for name, vecs in vectors.items():
        x = np.stack(vecs)
        x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
        out[name] = {}
        for k in shots:
            scores = []
            for seed in seeds:
                rng = np.random.default_rng(seed)
                picks = np.concatenate([
                    rng.choice(np.flatnonzero(train & (labels == c)), k, replace=False)
                    for c in np.unique(labels)
                ])
                model = LogisticRegression(max_iter=2000).fit(x[picks], labels[picks])
                scores.append(balanced_accuracy_score(labels[~train], model.predict(x[~train])))
            out[name][k] = float(np.mean(scores))
    return out


def target_checks(result: FewshotResult) -> list[dict[str, Any]]:
    """For each k ≤ 8: does five+reports beat every label-only baseline on mean balanced
    accuracy?"""
    from fivewsi.model.registry import list_models

    labels = [m for m in result.models if m in list_models() and
              not list_models()[m].text_aligned]
    checks = []
    for k in [k for k in result.shots if 0 < k <= 8]:
        ours = result.mean(PRETRAINED_ROW, k)
        rivals = {m: result.mean(m, k) for m in labels}
        rivals = {m: v for m, v in rivals.items() if v is not None}
        if ours is None or not rivals:
            continue
        best = max(rivals, key=rivals.get)
        checks.append({
            "k": k,
            PRETRAINED_ROW: ours,
            "best_baseline": best,
            "best_baseline_value": rivals[best],
            "five": result.mean("five", k),
            "holds": ours > rivals[best],
        })
    return checks


def timings(result: FewshotResult) -> dict[str, Any]:
    trained = [c for c in result.cells if c.status == "trained" and c.k > 0]
    per_model: dict[str, list[float]] = {}
    for c in trained:
        per_model.setdefault(c.model, []).append(c.train_seconds + c.eval_seconds)
    return {
        "grid_seconds": result.seconds,
        "cells": len(result.cells),
        "cells_trained_now": len(trained),
        "median_cell_seconds": {m: statistics.median(v) for m, v in per_model.items()},
        "max_cell_seconds": {m: max(v) for m, v in per_model.items()},
    }


def table_only(args: argparse.Namespace) -> int:
    """Tabulate every finished cell of the grid folder: several processes may have filled it."""
    from fivewsi.evaluation.fewshot import FewshotCell, _read_metrics, summarize, write_tables

    grid = args.out / args.grid
    cells = []
    for path in sorted((grid / "runs").glob("*/k*/**/metrics.json")):
        seeded = path.parent.name.startswith("seed")
        model = (path.parents[2] if seeded else path.parents[1]).name
        k = int((path.parents[1] if seeded else path.parent).name[1:])
        seed = int(path.parent.name[4:]) if seeded else None
        cell = FewshotCell(model, k, seed, path.parent, "reused")
        _read_metrics(cell, path)
        cells.append(cell)
    table = summarize(cells)
    write_json_atomic(grid / "cells.json", [
        {"model": c.model, "k": c.k, "seed": c.seed, **c.metrics} for c in cells
    ])
    _, markdown, _ = write_tables(grid, table, n_seeds=args.seeds)
    print(markdown.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    if args.table_only:
        args.out = args.out.resolve()
        return table_only(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out = args.out.resolve()
    options = _options(args.train_option)
    started = time.perf_counter()
    cohort = cohort_folder(args)

    summary: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch_threads": _threads()},
        "cohort": {"n_train": args.n_train, "n_test": args.n_test, "dim": args.dim},
    }
    pretrained = None
    if args.pretrained is not None:
        info = json.loads((args.pretrained / "run.json").read_text())
        result = info.get("result", {})
        summary["pretrain"] = {"run": str(args.pretrained.resolve()), "reused": True,
                               "n_train": info["split"]["n_train"],
                               "epochs": result.get("epochs"), "seconds": result.get("seconds"),
                               "loss": loss_curve(args.pretrained)}
        pretrained = args.pretrained.resolve()
    elif not args.no_pretrain:
        summary["pretrain"] = pretrain(args, cohort, options)
        pretrained = Path(summary["pretrain"]["run"])
        print(f"pretraining: {summary['pretrain']['n_train']} slides, "
              f"{summary['pretrain']['epochs']} epochs, {summary['pretrain']['seconds']:.0f} s"
              + (" (reused)" if summary["pretrain"]["reused"] else ""))

    if args.pretrain_only:
        if pretrained is None:
            raise SystemExit("--pretrain-only and --no-pretrain exclude each other")
        from fivewsi.evaluation.evaluate import evaluate_run

        zero = evaluate_run(pretrained, cohort / "features", cohort / "cohort.csv",
                            classes=cohort / "classes.csv", out=pretrained / "zero-shot")
        summary["zero_shot"] = {m: zero.metrics[m]["value"] for m in ("balanced_accuracy", "auc")}
        write_json_atomic(args.out / "summary-pretrain.json", summary)
        print(json.dumps(summary, indent=2, default=str))
        return 0

    config = FewshotConfig(
        features=cohort / "features",
        cohort=cohort / "cohort.csv",
        classes=cohort / "classes.csv",
        out=args.out / args.grid,
        models=[m.strip() for m in args.models.split(",")] if args.models else None,
        pretrained=pretrained,
        shots=[int(k) for k in args.shots.split(",")],
        seeds=list(range(args.seeds)),
        epochs=_epochs(args.epochs),
        model_options={"five": {"attention": args.attention}}
        if args.attention != "local" else {},
        train_options=options,
        overrides=_row_options(args.model_option),
        n_bootstrap=args.n_bootstrap,
        progress=not args.no_progress,
    )
    result = run_fewshot(config)
    summary["fewshot"] = timings(result)
    summary["failed_cells"] = [
        {"model": c.model, "k": c.k, "seed": c.seed, "error": c.error} for c in result.failed
    ]
    summary["checks"] = target_checks(result)
    summary["attention"] = attention_diagnostics(result, cohort, pretrained)
    summary["probes"] = probe_diagnostics(cohort, pretrained, config.shots, config.seeds)
    summary["total_seconds"] = time.perf_counter() - started
    write_json_atomic(args.out / "summary.json", summary)

    print(result.markdown.read_text())
    report(summary)
    return 1 if result.failed else 0


def attention_diagnostics(
    result: FewshotResult, cohort: Path, pretrained: Path | None
) -> dict[str, Any]:
    """Attention on the tumour region: the pretrained run (zero-shot) and seed 0 of each model
    at the largest k ≤ 8."""
    classes = cohort / "classes.csv"
    out: dict[str, Any] = {}
    if pretrained is not None:
        out["pretrained (zero-shot)"] = tumour_attention(pretrained, cohort, classes)
    ks = [k for k in result.shots if 0 < k <= 8]
    if not ks:
        return out
    k = max(ks)
    for cell in result.cells:
        if cell.k == k and cell.seed == min(c.seed for c in result.cells if c.seed is not None) \
                and cell.status != "failed":
            try:
                out[f"{cell.model} k={k}"] = tumour_attention(cell.run, cohort, None)
            except Exception as exc:  # a diagnostic must not sink the benchmark
                out[f"{cell.model} k={k}"] = {"error": str(exc)}
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def report(summary: dict[str, Any]) -> None:
    if "pretrain" in summary:
        p = summary["pretrain"]
        print(f"pretraining on {p['n_train']} slides: {p['seconds']:.0f} s "
              f"({p['epochs']} epochs)")
        for name, curve in p["loss"].items():
            if curve:
                print(f"  {name}: first {curve[0]:.3f}, last {curve[-1]:.3f} "
                      f"({len(curve)} epochs)")
    f = summary["fewshot"]
    print(f"few-shot grid: {f['cells']} cells ({f['cells_trained_now']} trained now), "
          f"{f['grid_seconds']:.0f} s")
    for model, seconds in f["median_cell_seconds"].items():
        print(f"  {model}: median {seconds:.1f} s per cell (max "
              f"{f['max_cell_seconds'][model]:.1f} s)")
    print(f"target: {PRETRAINED_ROW} beats every label-only baseline at k <= 8 "
          f"({HEADLINE}, mean over seeds)")
    for c in summary["checks"]:
        verdict = "holds" if c["holds"] else "does NOT hold"
        five = "" if c["five"] is None else f", five {100 * c['five']:.1f}"
        print(f"  k={c['k']}: {PRETRAINED_ROW} {100 * c[PRETRAINED_ROW]:.1f} vs best baseline "
              f"{c['best_baseline']} {100 * c['best_baseline_value']:.1f}{five}: {verdict}")
    if summary["attention"]:
        print("attention on the tumour region of test slides (share of attention mass; "
              "uniform = tumour share of patches):")
        for name, a in summary["attention"].items():
            if "error" in a:
                print(f"  {name}: {a['error']}")
                continue
            print(f"  {name}: patch {a['patch_attention_on_tumour']:.3f}, class "
                  f"{a['class_attention_on_tumour']:.3f}, uniform "
                  f"{a['tumour_share_of_patches']:.3f}, top-k precision "
                  f"{a['top_class_attention_precision']:.3f}")
    print("linear probe (logistic regression on k slides per class), balanced accuracy %:")
    for name, by_k in summary["probes"].items():
        cells = ", ".join(f"k={k}: {100 * v:.1f}" for k, v in by_k.items())
        print(f"  {name}: {cells}")
    for cell in summary["failed_cells"]:
        print(f"failed: {cell}")
    print(f"total {summary['total_seconds']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
