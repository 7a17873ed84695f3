"""`fivewsi predict` end to end: slides and feature files in, CSV, heatmaps, GeoJSON, page out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_tiny_text_model
from fivewsi.cli import app
from fivewsi.cohort.table import ClassDescription, CohortRow, write_classes, write_cohort
from fivewsi.features.preprocess import PreprocessConfig, preprocess
from fivewsi.synthetic import write_pixel_slide
from fivewsi.training import TrainConfig, train

PATCH = 256


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    slides = root / "slides"
    for i, style in enumerate(("tumour", "stroma", "tumour", "stroma")):
        write_pixel_slide(slides / f"s{i}.tif", width=1536, height=1024, seed=i,
                              regions=[(700, 500, 300, style)])
    work = root / "work"
    result = preprocess([slides], work, PreprocessConfig(workers=0, qc=False), progress=False)
    assert result.ok
    rows = [CohortRow(f"s{i}", ("LUAD", "LUSC")[i % 2], None, "train") for i in range(4)]
    write_cohort(rows, root / "cohort.csv")
    write_classes([ClassDescription("LUAD", "glandular adenocarcinoma"),
                   ClassDescription("LUSC", "keratinising squamous carcinoma")],
                  root / "classes.csv")
    run = root / "run"
    train(TrainConfig(
        features=work / "features", cohort=root / "cohort.csv", classes=root / "classes.csv",
        out=run, epochs=2, min_steps=0, batch_size=2, progress=False,
        model_options={"dim": 32, "heads": 4, "n_learnable_prompts": 2,
                       "text_encoder": str(write_tiny_text_model(root / "tiny-bert"))},
    ))
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
