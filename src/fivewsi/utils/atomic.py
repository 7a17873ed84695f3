"""Atomic file writes: write beside the target, fsync, then rename.

A reader (or a rerun after ``kill -9``) therefore sees either the old file or the complete new
one, never a partial file. Temporary files carry the ``.tmp-`` marker so they are never taken
for finished output and can be swept on the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARKER = ".tmp-"


def tmp_path_for(path: Path) -> Path:
    """The temporary sibling used while ``path`` is being written (unique per process)."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path`` atomically, on error it is removed.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sweep_tmp_files(folder: str | os.PathLike[str]) -> int:
    """Remove temporary files left by killed runs in ``folder``; return how many were removed.

    Only files of processes that are no longer alive are removed, so concurrent ranks writing
    into the same folder are not disturbed.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for tmp in folder.glob(f".*{TMP_MARKER}*"):
        pid_text = tmp.name.rsplit(TMP_MARKER, 1)[-1]
        if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
            continue
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed += 1
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
