"""`preprocess` under faults and hostile input: full disk, changed slides, links, races,
unusable outputs and names (issue 10)."""

from __future__ import annotations

import csv
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fivewsi.features import bags
from fivewsi.features.preprocess import (
    DuplicateSlideError,
    PreprocessConfig,
    SettingsMismatchError,
    preprocess,
)
from fivewsi.slides.readers import SlideError
from fivewsi.synthetic import write_pixel_slide
from fivewsi.utils.outputs import OutputError, csv_value

FAST = {"workers": 0, "batch_size": 32}
FIVEWSI = [sys.executable, "-m", "fivewsi"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*FIVEWSI, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return {csv_value(row["slide_id"]): row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rel-slides")
    for seed in range(3):
        write_pixel_slide(folder / f"s{seed}.tif", width=2048, height=1536, mpp=0.5, seed=seed)
    return folder


def test_full_disk_stops_the_batch_cleanly(slides, mount_tmpfs):
    disk = mount_tmpfs(size="40k")
    out = disk / "pp"
    proc = run("preprocess", slides, "--out", out, "--no-qc", "--workers", "0", "--no-progress")
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr[-2000:])
    assert "no space left" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not [p for p in (out / "features").iterdir() if ".tmp-" in p.name or p.stat().st_size
                == 0]
    for h5 in (out / "features").glob("*.h5"):
        assert bags.load_bag(h5).n_patches > 0  # what is there is complete
    if (out / "manifest.csv").exists():
        rows = manifest(out)
        failed = [r for r in rows.values() if r["status"] == "failed"]
        assert failed and all("no space left" in r["error"] for r in failed)


def test_full_disk_during_the_hdf5_write_is_no_signal(slides, mount_tmpfs):
    """The free-space estimate bypassed: the write itself meets ENOSPC (libhdf5 used to crash)."""
    disk = mount_tmpfs(size="28k")
    out = disk / "pp"
    code = (
        "import sys; import fivewsi.features.preprocess as p\n"
        "p.check_free_space = lambda *a, **k: None\n"
        "from fivewsi.cli.app import main\n"
        f"sys.argv = ['fivewsi', 'preprocess', {str(slides)!r}, '--out', {str(out)!r},"
        " '--no-qc', '--workers', '0', '--no-progress']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr[-2000:])
    assert "no space left" in proc.stderr and "Traceback" not in proc.stderr
    left = list((out / "features").iterdir())
    assert not [p for p in left if ".tmp-" in p.name]
    for h5 in left:
        assert bags.load_bag(h5).n_patches > 0


# H3: a feature file records its source; a different slide under a finished name is redone


def test_feature_file_records_its_source(slides, tmp_path):
    out = tmp_path / "out"
    preprocess([slides / "s0.tif"], out, PreprocessConfig(**FAST), progress=False)
    attrs = bags.read_bag_attrs(out / "features" / "s0.h5")
    assert attrs["source_path"] == str(slides / "s0.tif")
    assert int(attrs["source_size"]) == (slides / "s0.tif").stat().st_size
    assert attrs["source_mtime_ns"] == str((slides / "s0.tif").stat().st_mtime_ns)
    assert len(attrs["source_fingerprint"]) == 64


def test_a_different_slide_under_a_finished_name_is_redone(tmp_path):
    first, second, out = tmp_path / "batch1", tmp_path / "batch2", tmp_path / "out"
    write_pixel_slide(first / "case.tif", width=2048, height=1536, mpp=0.5, seed=11)
    write_pixel_slide(second / "case.tif", width=2048, height=1536, mpp=0.5, seed=12)
    one = preprocess([first / "case.tif"], out, PreprocessConfig(**FAST), progress=False)
    a = bags.load_bag(out / "features" / "case.h5")
    again = preprocess([first / "case.tif"], out, PreprocessConfig(**FAST), progress=False)
    assert one.ok and again.records[0].reused  # the same file: reused
    two = preprocess([second / "case.tif"], out, PreprocessConfig(**FAST), progress=False)
    b = bags.load_bag(out / "features" / "case.h5")
    assert two.ok and not two.records[0].reused
    assert b.attrs["source_path"] == str(second / "case.tif")
    assert a.features.shape != b.features.shape or not np.allclose(a.features, b.features)
    assert manifest(out)["case"]["path"] == str(second / "case.tif")


def test_feature_file_without_source_identity_is_redone(slides, tmp_path):
    out = tmp_path / "out"
    preprocess([slides / "s0.tif"], out, PreprocessConfig(**FAST), progress=False)
    with h5py.File(out / "features" / "s0.h5", "r+") as handle:  # as written by older fivewsi
        del handle["features"].attrs["source_fingerprint"]
    result = preprocess([slides / "s0.tif"], out, PreprocessConfig(**FAST), progress=False)
    assert result.ok and not result.records[0].reused


def test_two_inputs_with_one_id_are_refused_before_any_work(tmp_path):
    for name in ("a", "b"):
        write_pixel_slide(tmp_path / name / "case.tif", width=1024, height=1024, mpp=0.5, seed=1)
    out = tmp_path / "out"
    with pytest.raises(DuplicateSlideError, match="case"):
        preprocess([tmp_path / "a", tmp_path / "b"], out, PreprocessConfig(**FAST),
                   progress=False)
    assert not (out / "features").exists()
    proc = run("preprocess", tmp_path / "a", tmp_path / "b", "--out", out, "--no-progress")
    assert proc.returncode == 2
    assert str(tmp_path / "a" / "case.tif") in proc.stderr
    assert str(tmp_path / "b" / "case.tif") in proc.stderr


# H4: the slide id is the name the user gave (a link), not its target


def test_two_links_to_one_file_are_two_slides(slides, tmp_path):
    farm = tmp_path / "sym"
    farm.mkdir()
    (farm / "patientA.svs").symlink_to(slides / "s0.tif")
    (farm / "patientB.svs").symlink_to(slides / "s0.tif")
    out = tmp_path / "out"
    result = preprocess([farm], out, PreprocessConfig(**FAST), progress=False)
    assert result.ok
    assert sorted(r.slide_id for r in result.records) == ["patientA", "patientB"]
    assert sorted(p.name for p in (out / "features").glob("*.h5")) == ["patientA.h5",
                                                                       "patientB.h5"]
    assert manifest(out)["patientA"]["path"] == str(farm / "patientA.svs")
    again = preprocess([farm / "patientA.svs"], out, PreprocessConfig(**FAST), progress=False)
    assert again.records[0].reused


# M7: an unusable --out fails in one line, before any work


def test_read_only_out_is_refused_first(slides, mount_tmpfs):
    disk = mount_tmpfs(readonly=True)
    proc = run("preprocess", slides, "--out", disk / "pp", "--no-progress")
    assert proc.returncode == 2 and "not writable" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_out_that_is_a_file_is_refused_first(slides, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    proc = run("preprocess", slides, "--out", target, "--no-progress")
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert target.read_text() == "keep me"
    with pytest.raises(OutputError):
        preprocess([slides], target, PreprocessConfig(**FAST), progress=False)


# M5: two runs with different settings into one folder: never both accepted


def _claim(out: str, patch_size: int, barrier, results) -> None:
    from fivewsi.features.preprocess import _check_settings
    from fivewsi.utils import dist

    barrier.wait()
    try:
        _check_settings(Path(out), PreprocessConfig(patch_size=patch_size, **FAST),
                        dist.process_rank())
        results.put(patch_size)
    except SettingsMismatchError:
        results.put(None)


def test_concurrent_runs_with_other_settings_never_both_accepted(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(8):
        out = tmp_path / f"trial{trial}"
        out.mkdir()
        barrier, results = context.Barrier(2), context.Queue()
        procs = [context.Process(target=_claim, args=(str(out), size, barrier, results))
                 for size in (224, 256)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        accepted = [v for v in (results.get(timeout=10), results.get(timeout=10)) if v]
        assert len(accepted) == 1, (trial, accepted)
        folder = (out / "preprocess.json").read_text()
        assert f'"patch_size": {accepted[0]}' in folder


# minor: empty input exits 2


def test_empty_input_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "x.svs").mkdir()
    for given in (empty, tmp_path / "x.svs"):
        with pytest.raises(SlideError, match="no slides found"):
            preprocess([given], tmp_path / "out", PreprocessConfig(**FAST), progress=False)
        proc = run("preprocess", given, "--out", tmp_path / "out", "--no-progress")
        assert proc.returncode == 2 and "no slides found" in proc.stderr


# minor: never scan the command's own output


def test_out_inside_the_input_folder_is_never_scanned(tmp_path):
    folder = tmp_path / "slides"
    write_pixel_slide(folder / "s0.tif", width=2048, height=1536, mpp=0.5, seed=0)
    for _ in range(2):
        result = preprocess([folder], folder, PreprocessConfig(**FAST), progress=False)
        assert [r.slide_id for r in result.records] == ["s0"]
    assert (folder / "qc" / "s0.jpg").exists()
    other = tmp_path / "other"
    write_pixel_slide(other / "s1.tif", width=2048, height=1536, mpp=0.5, seed=1)
    for _ in range(2):
        nested = preprocess([other], other / "sub" / "out", PreprocessConfig(**FAST),
                            progress=False)
        assert [r.slide_id for r in nested.records] == ["s1"]


# minor: a feature file with no features is never taken as finished


def test_empty_feature_file_is_redone(slides, tmp_path):
    out = tmp_path / "out"
    preprocess([slides / "s0.tif"], out, PreprocessConfig(**FAST), progress=False)
    for variant in ("no dataset", "0 patches"):
        h5 = out / "features" / "s0.h5"
        attrs = bags.read_bag_attrs(h5)
        with h5py.File(h5, "w") as handle:
            if variant == "0 patches":
                dset = handle.create_dataset("features", data=np.zeros((0, 8), np.float32))
                for key in ("source_size", "source_mtime_ns", "source_fingerprint"):
                    dset.attrs[key] = attrs[key]
                handle.create_dataset("coords", data=np.zeros((0, 2), np.int64))
        result = preprocess([slides / "s0.tif"], out, PreprocessConfig(**FAST), progress=False)
        assert result.ok and not result.records[0].reused, variant
        assert bags.load_bag(h5).n_patches > 0


# minor: ids must name files


def test_unusable_slide_ids_are_refused(slides, tmp_path):
    for name in ("..svs", ".hidden.svs", "x" * 210 + ".svs"):
        bad = tmp_path / name
        bad.write_bytes((slides / "s0.tif").read_bytes())
        with pytest.raises(SlideError, match=r"cannot name a file|too long"):
            preprocess([bad], tmp_path / "out", PreprocessConfig(**FAST), progress=False)
        proc = run("preprocess", bad, "--out", tmp_path / "out", "--no-progress")
        assert proc.returncode == 2 and name in proc.stderr
    assert not list((tmp_path / "out" / "features").glob("*"))
    # in a folder, hidden files (macOS "._x.svs") are not slides at all
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "TCGA-05-4244-01Z.svs").symlink_to(slides / "s0.tif")
    (folder / "._TCGA-05-4244-01Z.svs").write_bytes(b"\x00" * 10)
    result = preprocess([folder], tmp_path / "out2", PreprocessConfig(**FAST), progress=False)
    assert [r.slide_id for r in result.records] == ["TCGA-05-4244-01Z"]


# minor: CSV injection


def test_manifest_cells_are_never_formulas(slides, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "=cmd.svs").symlink_to(slides / "s0.tif")
    out = tmp_path / "out"
    result = preprocess([folder], out, PreprocessConfig(**FAST), progress=False)
    assert result.ok and result.records[0].slide_id == "=cmd"
    with open(out / "manifest.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["slide_id"] == "'=cmd" and csv_value(row["slide_id"]) == "=cmd"
    assert (out / "features" / "=cmd.h5").exists()


def test_predict_a_different_slide_under_one_name_gets_its_own_prediction(tmp_path):
    """H3 through predict: `predict RUN batch1/case.tif --out O`, then batch2/case.tif."""
    from typer.testing import CliRunner

    from fivewsi.cli import app
    from fivewsi.cohort.table import CohortRow, write_cohort
    from fivewsi.training import TrainConfig, train

    slides = tmp_path / "slides"
    for i, style in enumerate(("tumour", "stroma", "tumour", "stroma")):
        write_pixel_slide(slides / f"s{i}.tif", width=1536, height=1024, seed=i,
                          regions=[(700, 500, 300, style)])
    work = tmp_path / "work"
    assert preprocess([slides], work, PreprocessConfig(workers=0, qc=False), progress=False).ok
    rows = [CohortRow(f"s{i}", ("LUAD", "LUSC")[i % 2], None, "train") for i in range(4)]
    write_cohort(rows, tmp_path / "cohort.csv")
    run_dir = tmp_path / "run"
    train(TrainConfig(features=work / "features", cohort=tmp_path / "cohort.csv", out=run_dir,
                      model="mean", model_options={"dim": 16}, epochs=2, min_steps=0,
                      batch_size=2, progress=False))
    for batch, (seed, style) in (("batch1", (21, "tumour")), ("batch2", (22, "stroma"))):
        write_pixel_slide(tmp_path / batch / "case.tif", width=1536, height=1024, seed=seed,
                          regions=[(700, 500, 300, style)])

    def predict(slide: Path, out: Path) -> dict[str, str]:
        done = CliRunner().invoke(app, ["predict", str(run_dir), str(slide), "--out", str(out),
                                        "--workers", "0", "--no-progress", "--no-html"])
        assert done.exit_code == 0, done.output
        with open(out / "predictions.csv", newline="") as handle:
            return next(csv.DictReader(handle))

    shared = tmp_path / "O"
    first = predict(tmp_path / "batch1" / "case.tif", shared)
    second = predict(tmp_path / "batch2" / "case.tif", shared)
    alone = predict(tmp_path / "batch2" / "case.tif", tmp_path / "fresh")
    assert second["p_LUAD"] == alone["p_LUAD"] != first["p_LUAD"]
    attrs = bags.read_bag_attrs(shared / "features" / "case.h5")
    assert attrs["source_path"] == str(tmp_path / "batch2" / "case.tif")
