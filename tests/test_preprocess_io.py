"""Per-slide resolution from a table (--slide-mpp-csv) and the recipe magnification warning
(issue 12, items 1 and 5)."""

from __future__ import annotations

import csv
import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fivewsi.features import preprocess as preprocess_module
from fivewsi.features.config import PreprocessConfig
from fivewsi.features.mpp_table import SlideMppTableError, read_slide_mpp_table
from fivewsi.features.preprocess import magnification_warning, preprocess
from fivewsi.features.recipe import EncoderRecipe
from fivewsi.features.registry import get_spec
from fivewsi.slides.readers import SlideError

FAST = {"workers": 0, "batch_size": 32}

ids = st.text(
    alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."),
    min_size=1, max_size=12,
).filter(lambda s: s.strip() == s and s not in (".", ".."))
mpps = st.floats(min_value=0.01, max_value=100, allow_nan=False).map(lambda v: round(v, 6))


def _write(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.dictionaries(ids, mpps, min_size=1, max_size=8),
       id_column=st.sampled_from(["slide_id", "slide", "Slide_ID"]),
       extra=st.booleans())
def test_table_round_trips(tmp_path: Path, table: dict[str, float], id_column: str,
                           extra: bool) -> None:
    header = [id_column, "mpp"] + (["note"] if extra else [])
    rows = [[k, repr(v)] + (["x, y"] if extra else []) for k, v in table.items()]
    parsed = read_slide_mpp_table(_write(tmp_path / "t.csv", header, rows))
    assert parsed.by_id == table
    for slide_id, mpp in table.items():
        assert parsed.lookup(tmp_path / f"{slide_id}.svs") == mpp


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.one_of(
    st.sampled_from(["", "abc", "0", "-1", "nan", "inf", "1e9", "0x10"]),
    st.floats(max_value=0, allow_nan=False).map(repr),
))
def test_a_bad_mpp_is_refused_naming_its_line(tmp_path: Path, bad: str) -> None:
    path = _write(tmp_path / "t.csv", ["slide_id", "mpp"], [["a", "0.5"], ["b", bad]])
    with pytest.raises(SlideMppTableError, match="line 3"):
        read_slide_mpp_table(path)


@pytest.mark.parametrize(("header", "rows", "match"), [
    (["slide_id", "micron"], [["a", "0.5"]], "needs a column 'mpp'"),
    (["name", "mpp"], [["a", "0.5"]], "'slide_id' or 'path'"),
    (["slide_id", "mpp"], [["a", "0.5"], ["a", "0.25"]], "two mpps"),
    (["slide_id", "mpp"], [], "lists no slide"),
    (["slide_id", "path", "mpp"], [["", "", "0.5"]], "names no slide"),
])
def test_malformed_tables(tmp_path: Path, header, rows, match) -> None:
    with pytest.raises(SlideMppTableError, match=match):
        read_slide_mpp_table(_write(tmp_path / "t.csv", header, rows))


def test_paths_are_relative_to_the_table_and_win_over_ids(tmp_path: Path) -> None:
    (tmp_path / "slides").mkdir()
    path = _write(tmp_path / "t.csv", ["slide_id", "path", "mpp"],
                  [["", "slides/a.tif", "0.25"], ["a", "", "0.5"]])
    table = read_slide_mpp_table(path)
    assert table.lookup(tmp_path / "slides" / "a.tif") == 0.25
    assert table.lookup(tmp_path / "elsewhere" / "a.tif") == 0.5
    with pytest.raises(SlideMppTableError, match="cannot read"):
        read_slide_mpp_table(tmp_path / "missing.csv")


@pytest.fixture(scope="module")
def no_mpp_slide(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no-mpp")
    rng = np.random.default_rng(3)
    tissue = np.full((768, 768, 3), 235, np.uint8)
    tissue[100:600, 150:650] = rng.integers(90, 200, (500, 500, 3), dtype=np.uint8)
    tissue[100:600, 150:650, 1] //= 2
    tifffile.imwrite(folder / "no-mpp.tif", tissue, tile=(256, 256), photometric="rgb")
    return folder / "no-mpp.tif"


def test_table_rescues_a_slide_without_metadata(no_mpp_slide: Path, tmp_path: Path) -> None:
    table = _write(tmp_path / "mpp.csv", ["slide_id", "mpp"], [["no-mpp", "0.5"], ["other", "1"]])
    out = tmp_path / "out"
    config = PreprocessConfig(slide_mpp_csv=table, slide_mpp=2.0, **FAST)
    result = preprocess([no_mpp_slide], out, config, progress=False)
    assert result.ok, result.failed
    record = result.records[0]
    assert record.slide_mpp == 0.5 and record.mpp_source == "user"  # the table, not --slide-mpp
    without = preprocess([no_mpp_slide], tmp_path / "bare", PreprocessConfig(**FAST),
                         progress=False)
    assert "--slide-mpp-csv" in without.failed[0].error


def test_cli_bad_table_is_one_error_line(no_mpp_slide: Path, tmp_path: Path) -> None:
    table = _write(tmp_path / "mpp.csv", ["slide_id", "mpp"], [["no-mpp", "zero"]])
    proc = subprocess.run(
        [sys.executable, "-m", "fivewsi", "preprocess", str(no_mpp_slide), "--out",
         str(tmp_path / "out"), "--slide-mpp-csv", str(table), "--workers", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "line 2" in lines[0] and "zero" in lines[0]
    assert not (tmp_path / "out" / "features").exists()


def _recipe(mpp: float, tile_size: int | None = None) -> EncoderRecipe:
    return EncoderRecipe.model_validate({
        "name": "toy-40x", "title": "toy", "dim": 8, "builder": "timm", "architecture": "vit",
        "embedding": "cls", "magnification": 10 / mpp, "mpp": mpp, "licence": "none",
        "tile_size": tile_size,
        "preprocess": {"resize": 224, "crop": 224, "mean": [0, 0, 0], "std": [1, 1, 1]},
        "weights": {"files": ["w.bin"], "layout": "timm"}, "sources": {"all": "a test"},
    })


@pytest.mark.parametrize(("recipe_mpp", "target", "warns"), [
    (0.5, 0.5, False), (0.5, 0.6, False), (0.46, 0.5, False),
    (0.25, 0.5, True), (0.5, 0.25, True), (0.5, 1.0, True), (0.5, 0.65, True),
])
def test_magnification_warning(recipe_mpp: float, target: float, warns: bool) -> None:
    spec = dataclasses.replace(get_spec("he-handcrafted"), recipe=_recipe(recipe_mpp))
    text = magnification_warning(spec, target)
    assert (text is not None) == warns
    if warns:
        assert f"{recipe_mpp:g} µm/px" in text and f"--mpp {target:g}" in text


@pytest.mark.parametrize(("tile", "target", "patch", "warns"), [
    (224, 0.5, 224, False),  # the published tiles
    (224, 0.5, 256, False),  # shrunk to 224: seen at 0.571 µm/px, 14% coarser
    (224, 0.5, 512, True),  # seen at 1.14 µm/px although --mpp matches
    (224, 0.25, 448, False),  # 40x patches twice as large: the same field, no warning
    (224, 0.25, 224, True),
    (512, 0.5, 256, True),  # a model published on 512 px tiles resized to 224
    (512, 0.5, 512, False),
])
def test_magnification_warning_at_the_network_input(tile: int, target: float, patch: int,
                                                     warns: bool) -> None:
    spec = dataclasses.replace(get_spec("he-handcrafted"), recipe=_recipe(0.5, tile))
    text = magnification_warning(spec, target, patch)
    assert (text is not None) == warns
    if warns:
        seen = f"{target * patch / 224:.3g} µm/px"
        assert seen in text and f"--patch-size {tile}" in text and f"{tile} px tiles" in text
    # without the patch size (or the recipe's tile size) only the mpps are compared
    assert (magnification_warning(spec, target) is None) == (target == 0.5)


def test_real_recipes_warn_on_the_effective_resolution() -> None:
    """H-optimus (224 px tiles at 0.5 µm/px): 256 px is within tolerance, 512 px is not."""
    spec = get_spec("h-optimus-0")
    assert spec.recipe is not None and spec.recipe.tile_size == 224
    assert magnification_warning(spec, 0.5, 224) is None
    assert magnification_warning(spec, 0.5, 256) is None
    assert "1.14 µm/px" in (magnification_warning(spec, 0.5, 512) or "")
    assert magnification_warning(get_spec("gigapath"), 0.5, 256) is None
    # CONCH v1.5 is published on 512 px patches at 20x: the default 256 px zooms in twofold
    assert "--patch-size 512" in (magnification_warning(get_spec("conch-v1.5"), 0.5, 256) or "")
    assert magnification_warning(get_spec("conch-v1.5"), 0.5, 512) is None


def test_preprocess_warns_when_the_recipe_magnification_disagrees(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    spec = dataclasses.replace(get_spec("he-handcrafted"), name="toy-40x", recipe=_recipe(0.25))
    monkeypatch.setattr(preprocess_module, "get_spec", lambda name: spec)
    with caplog.at_level(logging.WARNING, logger="fivewsi.features.preprocess"), \
            pytest.raises(SlideError, match="no slides"):  # warned before looking for slides
        preprocess([], tmp_path / "out", PreprocessConfig(target_mpp=0.5), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("toy-40x" in w and "0.25 µm/px" in w and "--mpp 0.5" in w for w in warnings)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fivewsi.features.preprocess"), \
            pytest.raises(SlideError):
        preprocess([], tmp_path / "out2", PreprocessConfig(target_mpp=0.25), progress=False)
    assert not [r for r in caplog.records if "µm/px" in r.getMessage()]
