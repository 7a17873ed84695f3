"""Guards for what the stages write: writable outputs checked before any work, outputs that
never overwrite inputs, file names made safe from ids, and CSV cells that a spreadsheet will
not run as formulas.

Every command checks its output *before* it works (a read-only or misnamed ``--out`` fails in
a second with one line, not after an hour of embedding), and writes CSV text through
:func:`csv_cell`.

Example:
    >>> csv_cell("=HYPERLINK(\\"http://x\\")")
    '\\'=HYPERLINK("http://x")'
    >>> csv_cell("TCGA-05-4244"), csv_cell(-0.5)
    ('TCGA-05-4244', -0.5)
    >>> safe_file_name("a/b:c*d")
    'a_b_c_d'
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fivewsi.errors import FivewsiError

#: Characters a spreadsheet reads as the start of a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Longest file-name stem made from an id (file systems allow 255 bytes per name).
MAX_STEM_BYTES = 120


class OutputError(FivewsiError):
    """An output path that cannot be written, or that would overwrite an input."""


class NoSpaceError(OutputError):
    """The file system holding an output has too little free space left."""


def check_output_folder(path: str | os.PathLike[str], *, what: str = "--out") -> Path:
    """Create ``path`` if needed and prove it is a writable folder, before any work.

    Raises:
        OutputError: ``path`` is an existing file, or the folder cannot be created or written
            (read-only file system, permissions).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fivewsi-write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable: {exc.strerror or exc}") from None
    return path


def check_output_file(
    path: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    what: str = "--out",
) -> Path:
    """Prove ``path`` can be written as a file and is none of ``inputs``, before any work.

    Raises:
        OutputError: ``path`` is a folder, one of the inputs, or its folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    for source in inputs:
        if is_same_file(path, source):
            raise OutputError(
                f"{what} {path} is also an input ({source}); write the output elsewhere"
            )
    check_output_folder(path.parent if str(path.parent) else Path("."), what=f"{what}'s folder")
    return path


def is_same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file (through links, ``..`` and case-preserving names)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normpath(a.absolute()) == os.path.normpath(b.absolute())


def check_free_space(path: str | os.PathLike[str], needed: int, *, what: str = "output") -> None:
    """Raise :class:`NoSpaceError` when the file system of ``path`` has < ``needed`` bytes free.

    ``path`` may not exist yet: its nearest existing parent is measured.
    """
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise NoSpaceError(
            f"no space left for the {what} in {path}: {free} bytes free, about {needed} needed"
        )


def safe_file_name(identifier: str, *, max_bytes: int = MAX_STEM_BYTES) -> str:
    """A file-name stem from any id: no separators or reserved characters, no leading dot,
    bounded length (a long id keeps a prefix plus a short hash, so stems stay distinct).

    Example:
        >>> safe_file_name("..")
        '_..'
        >>> len(safe_file_name("x" * 400).encode()) <= MAX_STEM_BYTES
        True
    """
    stem = re.sub(r'[\x00-\x1f/\\:*?"<>|]', "_", str(identifier)).strip() or "_"
    if stem.startswith("."):
        stem = "_" + stem
    if len(stem.encode("utf-8")) <= max_bytes:
        return stem
    digest = hashlib.sha1(str(identifier).encode("utf-8")).hexdigest()[:10]
    keep = stem.encode("utf-8")[: max_bytes - 11].decode("utf-8", "ignore")
    return f"{keep}-{digest}"


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet shows as text: a leading ``= + - @`` (or tab / CR) gets
    a ``'`` in front, as OWASP advises (and so does a leading ``'``, so that :func:`csv_value`
    can undo it exactly); numbers and other values pass unchanged."""
    if isinstance(value, str) and value.startswith((*_FORMULA_START, "'")):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value of a cell written by :func:`csv_cell`: the guarding ``'`` taken off again, so
    fivewsi reads its own CSVs (``LABELS.csv`` into ``cohort merge``, ...) back unchanged.

    Example:
        >>> csv_value(csv_cell("=1+1")), csv_value(csv_cell("'=x")), csv_value("plain")
        ('=1+1', "'=x", 'plain')
    """
    if len(cell) > 1 and cell[0] == "'" and cell[1:].startswith((*_FORMULA_START, "'")):
        return cell[1:]
    return cell


def csv_row(values: Iterable[Any]) -> list[Any]:
    """:func:`csv_cell` over a row."""
    return [csv_cell(v) for v in values]
