"""The command line end to end, in subprocesses: exit codes, kill -9 safety, two ranks."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fivewsi.features.bags import load_bag
from fivewsi.synthetic import write_pixel_slide

FIVEWSI = [sys.executable, "-m", "fivewsi"]


def run(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*FIVEWSI, *args], capture_output=True, text=True, env=env,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli-slides")
    for seed in range(3):
        write_pixel_slide(folder / f"s{seed}.tif", width=2560, height=2048, mpp=0.5,
                              seed=seed)
    (folder / "broken.svs").write_bytes(b"\x00" * 1000)
    return folder


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def test_version_and_encoders():
    assert run("--version").stdout.strip() or run("--version").stderr.strip()
    listing = run("encoders")
    assert listing.returncode == 0
    assert "he-handcrafted" in listing.stderr + listing.stdout


def test_preprocess_exit_status_and_summary(slides, tmp_path):
    out = tmp_path / "out"
    proc = run("preprocess", str(slides), "--out", str(out), "--workers", "0", "--no-progress")
    assert proc.returncode == 1, proc.stderr  # broken.svs failed, after the others
    rows = manifest(out)
    assert [k for k, r in rows.items() if r["status"] == "done"] == ["s0", "s1", "s2"]
    assert "3 done" in proc.stderr and "1 failed" in proc.stderr
    good = run("preprocess", *(str(p) for p in sorted(slides.glob("s*.tif"))), "--out", str(out),
               "--workers", "0", "--no-progress")
    assert good.returncode == 0 and "3 reused" in good.stderr


def test_usage_errors_exit_2(tmp_path):
    proc = run("preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run("preprocess", str(tmp_path), "--out", str(tmp_path / "o"), "--encoder", "nope")
    assert proc.returncode == 2 and "unknown encoder" in proc.stderr


def test_kill_9_never_leaves_a_file_taken_as_done(slides, tmp_path):
    """Kill the run at several moments; every feature file left must equal a clean run's."""
    clean = tmp_path / "clean"
    args = ["--workers", "0", "--no-progress", "--no-qc"]
    inputs = [str(p) for p in sorted(slides.glob("s*.tif"))]
    assert run("preprocess", *inputs, "--out", str(clean), *args).returncode == 0
    out = tmp_path / "killed"
    for delay in (0.3, 1.5, 2.5, 4.0):
        proc = subprocess.Popen([*FIVEWSI, "preprocess", *inputs, "--out", str(out), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for h5 in (out / "features").glob("*.h5"):
            left, ref = load_bag(h5), load_bag(clean / "features" / h5.name)
            np.testing.assert_array_equal(left.features, ref.features)
    final = run("preprocess", *inputs, "--out", str(out), *args)
    assert final.returncode == 0
    for ref in (clean / "features").glob("*.h5"):
        np.testing.assert_array_equal(load_bag(out / "features" / ref.name).features,
                                      load_bag(ref).features)
    assert not [p for p in (out / "features").iterdir() if not p.name.endswith(".h5")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_share_the_batch(slides, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "fivewsi", "preprocess", str(slides),
           "--out", str(out), "--workers", "0", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    rows = manifest(out)
    assert set(rows) == {"s0", "s1", "s2", "broken"}
    done = {k: r for k, r in rows.items() if r["status"] == "done"}
    assert len(done) == 3
    assert {r["rank"] for r in rows.values()} == {"0", "1"}  # both ranks did work
    assert proc.returncode != 0  # the leader reports the broken slide
    assert len(list((out / "features").glob("*.h5"))) == 3
