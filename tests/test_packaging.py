"""The wheel holds every file of src/fivewsi (question sets, py.typed, any new data file).

Builds the wheel without build isolation (offline, a few seconds) and checks its file list with
the same script as CI. The slow half, installing the wheel in a fresh venv and running
``fivewsi demo`` from outside the source tree, is ``make wheel-check`` (.ci/check_wheel.sh).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_package_file(tmp_path: Path) -> None:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(tree)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("fivewsi-*.whl")
    check = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "wheel_contents.py"), str(wheel), str(tree)],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr
