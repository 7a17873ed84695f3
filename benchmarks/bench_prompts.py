"""Do FiVE's question prompts look where their question is answered?

On a synthetic feature cohort whose generator records, per slide and question, the patches
that carry the question's evidence (``placement="distinct"``: grade in the tumour core, pleural
invasion on the tissue edge at the tumour, STAS in satellites away from it), pretrain FiVE on
the train slides' reports and, on the test slides, measure per question prompt:

- AUROC of its attention map against its evidence patches (slides that show the finding);
- its entropy relative to the maximum (``log N``);
- the Pearson correlation of its map with the other questions' maps (mean over slides).

``--query-norm off,on`` trains one run per setting of the TFS query LayerNorm with the same
seeds and cohort, so before / after compare like with like. Runs are kept under ``--out`` and
reused when rerun.

Usage:
    python benchmarks/bench_prompts.py                       # development cohort (seed 7)
    python benchmarks/bench_prompts.py --cohort-seed 0 --query-norm on
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "prompts"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--cohort-seed", type=int, default=7,
                        help="7: a development cohort (the few-shot benchmark uses 0)")
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=60)
    parser.add_argument("--placement", default="distinct", choices=["tumour", "distinct"])
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--model-dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1024, help="training seed")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="0: keep the last weights (the report validation loss of short "
                        "runs is lowest at epoch 0, which would measure an untrained model)")
    parser.add_argument("--query-norm", default="off,on",
                        help="comma-separated settings to train and compare (off, on)")
    return parser.parse_args(argv)


def cohort(args: argparse.Namespace) -> Path:
    from fivewsi.synthetic import make_feature_cohort

    root = args.out / f"cohort-{args.placement}-s{args.cohort_seed}-{args.n_train}-{args.n_test}"
    if not (root / "truth.json").exists():
        make_feature_cohort(root, n_train=args.n_train, n_test=args.n_test,
                            seed=args.cohort_seed, placement=args.placement, overwrite=True)
    return root


def pretrain(args: argparse.Namespace, root: Path, query_norm: bool) -> tuple[Path, float]:
    from fivewsi.training import TrainConfig, train

    name = (f"pretrain-qn{'on' if query_norm else 'off'}-s{args.cohort_seed}"
            f"-e{args.pretrain_epochs}-v{args.val_fraction:g}")
    out = args.out / name / f"d{args.model_dim}-seed{args.seed}"
    if (out / "run.json").exists() and (out / "model.safetensors").exists():
        return out, float("nan")
    start = time.perf_counter()
    train(TrainConfig(features=root / "features", cohort=root / "cohort.csv", out=out,
                      objective="reports", model="five", epochs=args.pretrain_epochs,
                      seed=args.seed,
                      model_options={"dim": args.model_dim, "query_norm": query_norm},
                      val_fraction=args.val_fraction,
                      progress=False, overwrite=True))
    return out, time.perf_counter() - start


def measure(root: Path, run: Path, query_norm: bool) -> dict[str, Any]:
    from fivewsi.features.bags import load_bag
    from fivewsi.predict.attention import attention_range, prompt_selection
    from fivewsi.reports.questions import load_question_set
    from fivewsi.runs import load_model
    from fivewsi.synthetic import load_truth
    from fivewsi.synthetic.lung import FIELDS

    clf = load_model(run, classes=root / "classes.csv")  # the run records its query_norm
    qs = load_question_set("lung")
    text_to_key = {qs.question(k).question: k for k in FIELDS}
    names = clf.prompt_names
    rows = [i for i, n in enumerate(names) if n in text_to_key]
    keys = [text_to_key[names[i]] for i in rows]
    truth = load_truth(root)
    aur: dict[str, list[float]] = {k: [] for k in keys}
    ent: dict[str, list[float]] = {k: [] for k in keys}
    near: list[bool] = []
    corr: list[np.ndarray] = []
    for slide_id, info in truth.items():
        if info["split"] != "test":
            continue
        pred = clf.predict(load_bag(root / "features" / f"{slide_id}.h5"))
        maps = pred.prompt_attention[rows]
        sel = prompt_selection(maps, keys, info["evidence"])
        for k in keys:
            ent[k].append(sel.entropy_ratio[k])
            if sel.auroc[k] is not None and len(info["evidence"][k]):
                aur[k].append(float(sel.auroc[k]))
        near += [attention_range(m).near_uniform for m in maps]
        corr.append(sel.correlation)
    mean_corr = np.nanmean(np.stack(corr), axis=0)
    per_q = {
        k: {"auroc": statistics.fmean(aur[k]) if aur[k] else None, "slides": len(aur[k]),
            "entropy_ratio": statistics.fmean(ent[k]),
            "mean_corr_with_others": float(np.mean([mean_corr[i, j] for j in range(len(keys))
                                                   if j != i]))}
        for i, k in enumerate(keys)
    }
    valid = [v["auroc"] for v in per_q.values() if v["auroc"] is not None]
    off_diag = mean_corr[~np.eye(len(keys), dtype=bool)]
    return {
        "questions": per_q,
        "mean_auroc": statistics.fmean(valid),
        "mean_entropy_ratio": statistics.fmean(v["entropy_ratio"] for v in per_q.values()),
        "near_uniform_share": float(np.mean(near)),
        "corr_min": float(off_diag.min()), "corr_mean": float(off_diag.mean()),
        "corr": {f"{a}~{b}": float(mean_corr[i, j]) for i, a in enumerate(keys)
                 for j, b in enumerate(keys) if i < j},
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| query norm | question | AUROC vs evidence (slides) | entropy / log N | "
             "mean corr. with other questions |", "|---|---|---:|---:|---:|"]
    for setting, r in results.items():
        for k, v in r["questions"].items():
            a = "—" if v["auroc"] is None else f"{v['auroc']:.3f} ({v['slides']})"
            lines.append(f"| {setting} | {k} | {a} | {v['entropy_ratio']:.3f} | "
                         f"{v['mean_corr_with_others']:.3f} |")
        lines.append(f"| {setting} | **mean** | **{r['mean_auroc']:.3f}** | "
                     f"**{r['mean_entropy_ratio']:.3f}** | **{r['corr_mean']:.3f}** "
                     f"(min {r['corr_min']:.3f}; near-uniform maps "
                     f"{100 * r['near_uniform_share']:.0f} %) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    root = cohort(args)
    results, seconds = {}, {}
    for setting in args.query_norm.split(","):
        on = setting.strip() == "on"
        run, secs = pretrain(args, root, on)
        seconds[setting] = secs
        results[setting] = measure(root, run, on)
        print(f"query norm {setting}: pretrained in {secs:.0f} s ({run})", flush=True)
    text = table(results)
    print(text)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
               "results": results}
    (args.out / f"prompts-s{args.cohort_seed}.json").write_text(json.dumps(summary, indent=1))
    (args.out / f"prompts-s{args.cohort_seed}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
