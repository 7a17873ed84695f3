"""Check that a fivewsi wheel holds exactly the package: every file under src/fivewsi (caches
and hidden files aside) and nothing else but its ``.dist-info``.

Usage: python .ci/wheel_contents.py WHEEL [SOURCE_ROOT]   (SOURCE_ROOT holds src/fivewsi)
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def source_files(root: Path) -> set[str]:
    """Paths of the package's files as the wheel names them (``fivewsi/...``)."""
    package = root / "src" / "fivewsi"
    return {
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*")
        if path.is_file()
        and path.suffix != ".pyc"
        and "__pycache__" not in path.parts
        and not path.name.startswith(".")
    }


def problems(wheel: Path, root: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        names = {name for name in archive.namelist() if ".dist-info/" not in name}
    expected = source_files(root)
    return [f"missing from the wheel: {name}" for name in sorted(expected - names)] + [
        f"in the wheel but not under src/fivewsi: {name}" for name in sorted(names - expected)
    ]


def main(argv: list[str]) -> int:
    wheel = Path(argv[0])
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    found = problems(wheel, root)
    for line in found:
        print(line, file=sys.stderr)
    if not found:
        print(f"{wheel.name} holds the {len(source_files(root))} files of src/fivewsi")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
