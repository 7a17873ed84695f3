"""`fivewsi predict` end to end: slides and feature files in, CSV, heatmaps, GeoJSON, page out."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_slides_and_run
from fivewsi.cli import app
from fivewsi.cohort.table import ClassDescription, write_classes

PATCH = 256


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    slides, work, run = make_slides_and_run(root, epochs=2)
    broken = root / "inputs" / "broken.tif"
    broken.parent.mkdir()
    broken.write_bytes(b"II*\x00 this is not a slide")
    return {"root": root, "slides": slides, "work": work, "run": run, "broken": broken}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_slides_and_feature_files_with_a_broken_slide(setup: dict[str, Path]) -> None:
    out = setup["root"] / "out"
    inputs = [setup["slides"] / "s0.tif", setup["broken"], setup["work"] / "features" / "s1.h5"]
    done = CliRunner().invoke(
        app, ["predict", str(setup["run"]), *map(str, inputs), "--out", str(out),
              "--workers", "0", "--no-progress"],
    )
    assert done.exit_code == 1, done.output  # one input failed, the others finished
    rows = {r["slide_id"]: r for r in _rows(out / "predictions.csv")}
    assert set(rows) == {"s0", "s1", "broken"}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    for slide_id in ("s0", "s1"):
        row = rows[slide_id]
        assert row["status"] == "ok" and row["predicted"] in ("LUAD", "LUSC")
        assert abs(float(row["p_LUAD"]) + float(row["p_LUSC"]) - 1) < 1e-4
        # every question gets its best category, and the draft description renders them
        assert row["vascular_invasion"] in ("present", "absent")
        assert row["description"]
        maps = {p.name for p in (out / "heatmaps" / slide_id).glob("*.png")}
        assert {"thumbnail.png", "vascular_invasion.png", "margins.png"} <= maps
        assert any(name.startswith("class-") for name in maps)
        geo = json.loads((out / "geojson" / f"{slide_id}.geojson").read_text())
        assert len(geo["features"]) == int(row["n_patches"])
        assert "vascular_invasion" in geo["features"][0]["properties"]["measurements"]
    page = (out / "report.html").read_text()
    assert "broken" in page and "s0" in page and "<table" in page
    # each heatmap's caption gives its weights in absolute terms (issue 11, item 10)
    assert re.search(r"<figcaption>vascular_invasion — (near-uniform \(max/min|weights )",
                     page)
    assert "multiples of uniform (1/N)" in page
    # the PNG carries a legend band below the thumbnail-sized map
    import cv2
    thumb = cv2.imread(str(out / "heatmaps" / "s0" / "thumbnail.png"))
    legend = cv2.imread(str(out / "heatmaps" / "s0" / "vascular_invasion.png"))
    assert legend.shape[1] == thumb.shape[1] and legend.shape[0] > thumb.shape[0]
    # the page and the CSV say whether (and how) the probabilities are calibrated
    stored = json.loads((setup["run"] / "run.json").read_text())["calibration"]
    assert stored["fitted_on"] == "train" and stored["n_slides"] == 4  # no validation slides
    words = f"calibrated: temperature {stored['temperature']:.4g} fitted on 4 training slides"
    assert rows["s0"]["calibration"] == words and words in page
    # finished features are reused: the slide is not embedded again on a rerun
    h5 = out / "features" / "s0.h5"
    stamp = h5.stat().st_mtime_ns
    CliRunner().invoke(app, ["predict", str(setup["run"]), str(inputs[0]), "--out", str(out),
                             "--workers", "0", "--no-progress", "--no-html"])
    assert h5.stat().st_mtime_ns == stamp


def test_predict_refuses_a_missing_input(setup: dict[str, Path]) -> None:
    done = CliRunner().invoke(
        app, ["predict", str(setup["run"]), str(setup["root"] / "nope.svs"),
              "--out", str(setup["root"] / "out2"), "--no-progress"],
    )
    assert done.exit_code == 2


def test_report_shows_the_run_evaluation_figures(setup: dict[str, Path], tmp_path: Path) -> None:
    from fivewsi.evaluation.evaluate import evaluate_run

    features = setup["work"] / "features"
    evaluate_run(setup["run"], features, setup["root"] / "cohort.csv", split=None,
                 out=tmp_path / "eval", n_bootstrap=0)
    done = _predict(setup, str(features / "s1.h5"), "--out", str(tmp_path / "given"),
                    "--evaluation", str(tmp_path / "eval"))
    assert done.exit_code == 0, done.output
    page = (tmp_path / "given" / "report.html").read_text()
    assert "<h2>Evaluation</h2>" in page and page.count('src="data:image/png;base64,') == 3
    assert "ROC curves (one-vs-rest), slides" in page
    recorded = json.loads((tmp_path / "given" / "predict.json").read_text())
    assert recorded == {"run": str(setup["run"].resolve()),
                        "evaluation": str((tmp_path / "eval").resolve())}
    # Without --evaluation: none for a run never evaluated, then the run's own test evaluation.
    done = _predict(setup, str(features / "s1.h5"), "--out", str(tmp_path / "plain"))
    assert "<h2>Evaluation</h2>" not in (tmp_path / "plain" / "report.html").read_text()
    assert json.loads((tmp_path / "plain" / "predict.json").read_text())["evaluation"] is None
    shutil.copytree(tmp_path / "eval", tmp_path / "run" / "evaluation" / "test")
    run = tmp_path / "run"
    for name in ("run.json", "model.safetensors", "texts.safetensors"):
        if (setup["run"] / name).exists():
            shutil.copy(setup["run"] / name, run / name)
    other = _predict(setup, str(features / "s1.h5"), "--out", str(tmp_path / "found"), run=run)
    assert other.exit_code == 0, other.output
    # that evaluation names another run folder: not taken for this run's
    assert "<h2>Evaluation</h2>" not in (tmp_path / "found" / "report.html").read_text()
    info = json.loads((run / "evaluation" / "test" / "metrics.json").read_text())
    info["run"] = str(run.resolve())
    (run / "evaluation" / "test" / "metrics.json").write_text(json.dumps(info))
    again = _predict(setup, str(features / "s1.h5"), "--out", str(tmp_path / "found"), run=run)
    assert again.exit_code == 0, again.output
    assert "<h2>Evaluation</h2>" in (tmp_path / "found" / "report.html").read_text()
    assert json.loads((tmp_path / "found" / "predict.json").read_text())["evaluation"] == str(
        (run / "evaluation" / "test").resolve())
    bad = _predict(setup, str(features / "s1.h5"), "--out", str(tmp_path / "bad"),
                   "--evaluation", str(tmp_path / "nowhere"))
    assert bad.exit_code == 2 and "metrics.json" in bad.output


def _predict(setup: dict[str, Path], *args: str, run: Path | None = None):
    return CliRunner().invoke(
        app, ["predict", str(run or setup["run"]), *args, "--workers", "0", "--no-progress"]
    )


def _refused(done, needle: str) -> None:
    """Exit 2 with exactly one ``error:`` line naming ``needle``, and no traceback."""
    text = done.output
    assert done.exit_code == 2, text
    assert "Traceback" not in text and (
        done.exception is None or isinstance(done.exception, SystemExit)), text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert needle in " ".join(text.split()), text


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


# M1: every input is scored, or the command refuses before any work


def test_predict_refuses_two_inputs_with_one_slide_id(setup: dict[str, Path],
                                                      tmp_path: Path) -> None:
    h5 = setup["work"] / "features" / "s1.h5"
    a, b = _copy(h5, tmp_path / "a" / "s1.h5"), _copy(h5, tmp_path / "b" / "s1.h5")
    out = tmp_path / "out"
    _refused(_predict(setup, str(a), str(b), "--out", str(out)), "s1")
    assert not (out / "predictions.csv").exists()
    # a slide and a feature file claiming one id clash too
    slide = _copy(setup["slides"] / "s0.tif", tmp_path / "c" / "s1.tif")
    _refused(_predict(setup, str(slide), str(a), "--out", str(out)), "s1")
    assert not (out / "features").exists()  # refused before any preprocessing


def test_predict_scores_a_folder_of_slides_and_feature_files(setup: dict[str, Path],
                                                             tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    _copy(setup["slides"] / "s0.tif", mixed / "s0.tif")
    _copy(setup["work"] / "features" / "s1.h5", mixed / "s1.h5")
    out = tmp_path / "out"
    done = _predict(setup, str(mixed), "--out", str(out), "--no-html")
    assert done.exit_code == 0, done.output
    rows = {r["slide_id"]: r for r in _rows(out / "predictions.csv")}
    assert set(rows) == {"s0", "s1"}
    assert all(r["status"] == "ok" for r in rows.values())
    # the same file given twice (by name and through its folder) is one input
    done = _predict(setup, str(mixed), str(mixed / "s1.h5"), "--out", str(out), "--no-html")
    assert done.exit_code == 0, done.output
    assert len(_rows(out / "predictions.csv")) == 2


# M7 and empty input: one line and exit 2, before any slide work


def test_predict_bad_run_and_output_are_one_line_exit_2(setup: dict[str, Path],
                                                        tmp_path: Path) -> None:
    h5 = str(setup["work"] / "features" / "s1.h5")
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    out = tmp_path / "out"
    _refused(_predict(setup, h5, "--out", str(out), run=not_a_run), "not a fivewsi run")
    assert not out.exists()  # nothing written for a run that cannot be loaded
    pretrained = tmp_path / "pretrained"
    pretrained.mkdir()
    for item in setup["run"].iterdir():
        if item.is_file():
            _copy(item, pretrained / item.name)
    record = json.loads((pretrained / "run.json").read_text())
    record.update(stage="reports", classes=None)
    (pretrained / "run.json").write_text(json.dumps(record))
    _refused(_predict(setup, h5, "--out", str(out), run=pretrained), "pretrained on reports")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _refused(_predict(setup, h5, "--out", str(a_file)), "is a file")
    assert a_file.read_text() == "x"


def test_predict_into_a_folder_preprocessed_otherwise(setup: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "preprocess.json").write_text(json.dumps({"patch_size": 64, "target_mpp": 2.0}))
    done = _predict(setup, str(setup["slides"] / "s0.tif"), "--out", str(out))
    _refused(done, "other settings")
    assert not (out / "predictions.csv").exists()


def test_predict_on_a_read_only_out(setup: dict[str, Path], mount_tmpfs) -> None:
    read_only = mount_tmpfs(readonly=True)
    done = _predict(setup, str(setup["work"] / "features" / "s1.h5"),
                    "--out", str(read_only / "out"))
    _refused(done, "not writable")


def test_predict_on_no_inputs(setup: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(_predict(setup, str(empty), "--out", str(tmp_path / "out")), "no slides")
    assert not (tmp_path / "out" / "predictions.csv").exists()


# a prediction stands when only its pictures cannot be written


def _shifted_bag(source: Path, target: Path, shift: int) -> Path:
    import h5py

    _copy(source, target)
    with h5py.File(target, "r+") as handle:
        handle["coords"][...] = handle["coords"][...] - shift
    return target


def test_predict_keeps_the_prediction_when_heatmaps_fail(setup: dict[str, Path],
                                                         tmp_path: Path) -> None:
    negative = _shifted_bag(setup["work"] / "features" / "s1.h5",
                            tmp_path / "in" / "neg.h5", 10**9)
    classes = tmp_path / "classes.csv"
    long_name = "x" * 300
    write_classes([ClassDescription(long_name, "glandular adenocarcinoma"),
                   ClassDescription("LUSC", "keratinising squamous carcinoma")], classes)
    out = tmp_path / "out"
    h5 = setup["work"] / "features" / "s1.h5"
    done = _predict(setup, str(negative), str(h5), "--out", str(out), "--classes", str(classes))
    assert done.exit_code == 0, done.output
    rows = {r["slide_id"]: r for r in _rows(out / "predictions.csv")}
    for row in rows.values():
        assert row["status"] == "ok" and row["predicted"] in (long_name, "LUSC"), row
        assert not row["error"]
    # the 300-character class name gets a bounded heatmap file name
    maps = {p.name for p in (out / "heatmaps" / "s1").glob("*.png")}
    assert len(maps) >= 3 and all(len(name.encode()) < 255 for name in maps)
    assert rows["s1"]["render_error"] == ""
    # negative coordinates: no heatmaps, the problem recorded apart from the prediction
    assert "negative" in rows["neg"]["render_error"]
    assert not (out / "heatmaps" / "neg").exists()
    page = (out / "report.html").read_text()
    assert "Heatmaps not drawn" in page and "negative" in page


# CSV injection: text cells are guarded, numbers are not, and read back exactly


def test_predictions_csv_guards_formula_cells(setup: dict[str, Path], tmp_path: Path) -> None:
    from fivewsi.utils.outputs import csv_value

    bag = _copy(setup["work"] / "features" / "s1.h5", tmp_path / "in" / "=cmd.h5")
    classes = tmp_path / "classes.csv"
    write_classes([ClassDescription("+x", "glandular adenocarcinoma"),
                   ClassDescription("@y", "keratinising squamous carcinoma")], classes)
    out = tmp_path / "out"
    done = _predict(setup, str(bag), "--out", str(out), "--classes", str(classes), "--no-html")
    assert done.exit_code == 0, done.output
    (row,) = _rows(out / "predictions.csv")
    assert row["slide_id"] == "'=cmd" and csv_value(row["slide_id"]) == "=cmd"
    assert row["predicted"] in ("'+x", "'@y")
    assert csv_value(row["predicted"]) in ("+x", "@y")
    assert float(row["p_+x"]) + float(row["p_@y"]) == pytest.approx(1, abs=1e-4)
    assert not row["n_patches"].startswith("'")
    assert (out / "heatmaps" / "=cmd").is_dir()  # file names keep the id where it is safe


def test_predict_names_both_feature_sizes_and_encoders(setup: dict[str, Path],
                                                       tmp_path: Path) -> None:
    import h5py

    bag = _copy(setup["work"] / "features" / "s1.h5", tmp_path / "in" / "other.h5")
    with h5py.File(bag, "r+") as handle:
        features = handle["features"][...]
        attrs = dict(handle["features"].attrs)
        del handle["features"]
        handle.create_dataset("features", data=features[:, :16])
        handle["features"].attrs.update({**attrs, "encoder": "uni", "encoder_dim": 16})
    out = tmp_path / "out"
    done = _predict(setup, str(bag), str(setup["work"] / "features" / "s1.h5"),
                    "--out", str(out), "--no-html")
    assert done.exit_code == 1, done.output  # the other slide is done
    rows = {r["slide_id"]: r for r in _rows(out / "predictions.csv")}
    assert rows["s1"]["status"] == "ok"
    error = rows["other"]["error"]
    assert rows["other"]["status"] == "failed"
    assert "85-dim features from encoder he-handcrafted" in error, error
    assert "16-dim features from encoder uni" in error, error
