"""End to end: pretrain FiVE on reports, few-shot fine-tune, baselines, resume, DDP, CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import write_tiny_text_model
from fivewsi import load_model
from fivewsi.cohort import read_cohort, write_cohort
from fivewsi.synthetic import FeatureCohort, make_feature_cohort
from fivewsi.training import TrainConfig, TrainError, train

TINY_FIVE = {"dim": 32, "heads": 4, "n_learnable_prompts": 2}
SMALL = {"dim": 16}  # a baseline's options


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> FeatureCohort:
    root = tmp_path_factory.mktemp("cohort")
    made = make_feature_cohort(root, n_train=16, n_test=6, dim=16, n_patches=(30, 45), seed=0)
    rows = read_cohort(made.cohort_csv)
    # Two training slides per class become validation rows; test rows stay test rows.
    seen: dict[str, int] = {}
    for row in rows:
        if row.split == "train" and seen.get(row.label or "", 0) < 2:
            seen[row.label or ""] = seen.get(row.label or "", 0) + 1
            row.split = "val"
    write_cohort(rows, made.cohort_csv)
    write_tiny_text_model(root / "tiny-bert")
    return made


def _config(
    cohort: FeatureCohort, out: Path, model_options: dict[str, object] | None = None,
    **options: object,
) -> TrainConfig:
    settings: dict[str, object] = {
        "epochs": 2, "min_steps": 0, "batch_size": 4, "progress": False
    }
    chosen = dict(model_options or {})
    if options.get("model", "five") == "five":
        settings["negatives"] = "batch"
        chosen = {**TINY_FIVE, "text_encoder": str(cohort.root / "tiny-bert"), **chosen}
    settings.update(options)
    return TrainConfig(
        features=cohort.features_dir, cohort=cohort.cohort_csv, out=out,
        model_options=chosen, **settings,
    )


def _split(run: Path) -> list[dict[str, str]]:
    with open(run / "split.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _test_ids(cohort: FeatureCohort) -> set[str]:
    return {r.slide_id for r in read_cohort(cohort.cohort_csv) if r.split == "test"}


@pytest.fixture(scope="module")
def pretrained(cohort: FeatureCohort, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    result = train(_config(cohort, out))
    assert result.stage == "reports" and not result.skipped
    return out


def test_pretraining_writes_a_complete_run(pretrained: Path, cohort: FeatureCohort) -> None:
    info = json.loads((pretrained / "run.json").read_text())
    assert info["status"] == "finished" and info["stage"] == "reports"
    assert info["model"]["architecture"] == "five" and info["model"]["in_dim"] == 16
    assert info["model"]["args"]["dim"] == 32 and info["model"]["args"]["attention"] == "local"
    assert info["texts_file"] == "texts.safetensors"
    assert (pretrained / "texts.safetensors").is_file()
    assert info["question_set"]["name"] == "lung" and info["classes"] is None
    assert info["split"]["validation"] == "split" and info["split"]["n_val"] == 4
    assert info["result"]["monitor"] == "val/loss" and info["result"]["best_metric"] > 0
    weights = load_file(pretrained / "model.safetensors")
    assert weights and not any(k.startswith("text_encoder.") for k in weights)
    assert "text_projection.weight" in weights
    roles = _split(pretrained)
    assert {r["role"] for r in roles} == {"train", "val"}
    assert not {r["slide_id"] for r in roles} & _test_ids(cohort)
    checkpoint = torch.load(pretrained / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["seed"] == 1024
    assert not any(k.startswith("model.text_encoder.") for k in checkpoint["state_dict"])
    with open(pretrained / "logs" / "metrics.csv", newline="") as handle:
        logged = list(csv.DictReader(handle))
    assert {"train/loss_epoch", "val/loss", "val/bacc"} <= set(logged[0])


def test_few_shot_fine_tuning_from_the_pretrained_run(
    pretrained: Path, cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "fewshot"
    result = train(_config(cohort, out, classes=cohort.classes_csv, init=pretrained, shots=2))
    assert result.stage == "classes" and result.n_train == 4
    roles = _split(out)
    train_rows = [r for r in roles if r["role"] == "train"]
    assert sorted(r["label"] for r in train_rows) == ["LUAD", "LUAD", "LUSC", "LUSC"]
    assert not {r["slide_id"] for r in roles} & _test_ids(cohort)
    info = json.loads((out / "run.json").read_text())
    assert info["shots"] == 2 and info["init"] == str(pretrained)
    # The same seed draws the same shots.
    again = train(_config(cohort, tmp_path / "again", classes=cohort.classes_csv,
                          init=pretrained, shots=2))
    assert again.n_train == 4 and _split(tmp_path / "again") == roles
    classifier = load_model(out)
    assert classifier.classes == ["LUAD", "LUSC"] and classifier.kind == "text"


def test_init_must_match_the_model(
    pretrained: Path, cohort: FeatureCohort, tmp_path: Path
) -> None:
    with pytest.raises(TrainError, match="model options"):
        train(_config(cohort, tmp_path / "wide", classes=cohort.classes_csv, init=pretrained,
                      model_options={"dim": 64}))
    with pytest.raises(TrainError, match=r"no model\.safetensors"):
        train(_config(cohort, tmp_path / "x", classes=cohort.classes_csv, init=tmp_path))


def test_baseline_trains_on_cohort_labels_and_predicts(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "abmil"
    result = train(_config(cohort, out, model="abmil", model_options=SMALL, val_fraction=0.0))
    assert result.stage == "classes" and result.n_val == 4  # the cohort's own val rows
    classifier = load_model(out)
    assert classifier.classes == ["LUAD", "LUSC"] and classifier.kind == "label"
    from fivewsi.features.bags import load_bag

    bag = load_bag(cohort.features_dir / f"{_split(out)[0]['slide_id']}.h5")
    prediction = classifier.predict(bag)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert prediction.patch_attention.shape == (bag.n_patches,)
    assert (prediction.class_attention == prediction.patch_attention).all()
    assert prediction.prompt_attention is None


def test_same_seed_gives_identical_weights(cohort: FeatureCohort, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        train(_config(cohort, tmp_path / name, model="abmil", model_options=SMALL, epochs=3))
        runs.append(load_file(tmp_path / name / "model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    train(_config(cohort, tmp_path / "c", model="abmil", model_options=SMALL, epochs=3, seed=7))
    other = load_file(tmp_path / "c" / "model.safetensors")
    assert not all(torch.equal(runs[0][k], other[k]) for k in other)


class Interrupted(Exception):
    """Stands for a killed process."""


class InterruptAfter(L.Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            raise Interrupted


def test_resumed_run_matches_an_uninterrupted_one(cohort: FeatureCohort, tmp_path: Path) -> None:
    options = {"epochs": 3, "patience": None}
    whole = tmp_path / "whole"
    train(_config(cohort, whole, **options))
    broken = tmp_path / "broken"
    # The last-checkpoint callback runs first, so the interrupted epoch's checkpoint exists.
    with pytest.raises(Interrupted):
        train(_config(cohort, broken, **options), callbacks=[InterruptAfter(1)])
    assert json.loads((broken / "run.json").read_text())["status"] == "running"
    assert not (broken / "model.safetensors").exists()
    resumed = train(_config(cohort, broken, **options))
    assert resumed.epochs == 3
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((broken / "run.json").read_text())
    assert info["status"] == "finished" and info["result"]["resumed"] is True
    with open(broken / "logs" / "metrics.csv", newline="") as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle)}
    assert epochs == {"0", "1", "2"}


def test_finished_run_is_skipped_mismatch_refused_overwrite_retrains(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = train(_config(cohort, out, model="mean", model_options=SMALL))
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train(_config(cohort, out, model="mean", model_options=SMALL, progress=True))
    assert again.skipped and again.n_train == first.n_train
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(TrainError, match=r"lr: run has 0\.0003, asked 0\.01"):
        train(_config(cohort, out, model="mean", model_options=SMALL, lr=0.01))
    redone = train(
        _config(cohort, out, model="mean", model_options=SMALL, lr=0.01, overwrite=True)
    )
    assert not redone.skipped
    assert json.loads((out / "run.json").read_text())["config"]["lr"] == 0.01


def test_missing_feature_files_are_skipped_and_reported(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    rows = read_cohort(cohort.cohort_csv)
    extra = [*rows, type(rows[0])("ghost-1", "LUAD", None, "train")]
    table = tmp_path / "cohort.csv"
    write_cohort(extra, table)
    out = tmp_path / "run"
    result = train(TrainConfig(features=cohort.features_dir, cohort=table, out=out,
                               model="mean", model_options=SMALL, epochs=1, min_steps=0,
                               progress=False))
    assert result.n_skipped_slides == 1
    assert json.loads((out / "run.json").read_text())["skipped_slides"]["missing"] == ["ghost-1"]
    with pytest.raises(TrainError, match="no training slides"):
        train(TrainConfig(features=tmp_path / "run", cohort=table, out=tmp_path / "none",
                          model="mean", epochs=1, progress=False))


def test_val_fraction_is_stratified_and_few_shot_uses_no_fraction(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    rows = read_cohort(cohort.cohort_csv)
    for row in rows:
        row.split = "test" if row.split == "test" else None  # no val rows at all
    table = tmp_path / "cohort.csv"
    write_cohort(rows, table)
    base = {"features": cohort.features_dir, "cohort": table, "model": "mean",
            "model_options": SMALL,
            "epochs": 1, "min_steps": 0, "progress": False}
    train(TrainConfig(out=tmp_path / "frac", val_fraction=0.25, **base))
    val = [r for r in _split(tmp_path / "frac") if r["role"] == "val"]
    assert sorted(r["label"] for r in val) == ["LUAD", "LUAD", "LUSC", "LUSC"]
    few = train(TrainConfig(out=tmp_path / "few", shots=3, **base))
    assert few.n_val == 0 and few.n_train == 6 and few.monitor is None


def test_cli_trains_and_reports_bad_settings(cohort: FeatureCohort, tmp_path: Path) -> None:
    from fivewsi.cli import app

    runner = CliRunner()
    common = ["train", "--features", str(cohort.features_dir), "--cohort", str(cohort.cohort_csv),
              "--no-progress", "-q"]
    ok = runner.invoke(app, [*common, "--out", str(tmp_path / "cli"), "--model", "max",
                             "--epochs", "1", "--batch-size", "4"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    bad = runner.invoke(app, [*common, "--out", str(tmp_path / "bad"), "--sample-ratio", "2"])
    assert bad.exit_code == 2 and "sample_ratio" in bad.output
    reports = runner.invoke(app, [*common, "--out", str(tmp_path / "r"), "--model", "abmil",
                                  "--objective", "reports"])
    assert reports.exit_code == 2 and "cannot learn from reports" in reports.output


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_run(
    cohort: FeatureCohort, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    script = tmp_path / "ddp_train.py"
    script.write_text(
        "from fivewsi.training import TrainConfig, train\n"
        f"train(TrainConfig(features={str(cohort.features_dir)!r}, "
        f"cohort={str(cohort.cohort_csv)!r}, out={str(out)!r}, model='abmil', "
        "model_options={'dim': 16}, "
        "epochs=2, min_steps=0, batch_size=2, progress=False, device='cpu'))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["result"]["epochs"] == 2
    assert (out / "model.safetensors").is_file()
    assert not list(out.rglob(".*.tmp-*"))
    load_model(out).predict_batch([])


def test_resume_checkpoints_are_bounded_and_denormals_restored(
    cohort: FeatureCohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fivewsi.training import fit

    saved: list[int] = []
    real = fit.RunCheckpoint._save_last
    monkeypatch.setattr(fit, "MAX_RESUME_CHECKPOINTS", 4)
    monkeypatch.setattr(fit.RunCheckpoint, "_save_last",
                        lambda self, trainer: (saved.append(trainer.current_epoch),
                                               real(self, trainer)))
    monkeypatch.setattr(fit.checkpoint_every, "__defaults__", (4,))
    out = tmp_path / "run"
    train(_config(cohort, out, model="mean", model_options=SMALL, epochs=10, patience=None))
    assert saved == [2, 5, 8, 9]  # every 3rd epoch (10 / 4 rounded up) and the last
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # flushing denormals is for the training only: the process setting is back to IEEE
    assert float(torch.tensor([1e-39]) * 1.0) > 0.0
