"""Output guards: writable before work, never over an input, safe names, CSV cells as text."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fivewsi.errors import FivewsiError
from fivewsi.utils.outputs import (
    MAX_STEM_BYTES,
    NoSpaceError,
    OutputError,
    check_free_space,
    check_output_file,
    check_output_folder,
    csv_cell,
    csv_value,
    is_same_file,
    safe_file_name,
)


def test_output_folder_is_created_and_must_be_a_folder(tmp_path):
    assert check_output_folder(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        check_output_folder(tmp_path / "file")
    assert issubclass(OutputError, FivewsiError)


def test_read_only_output_fails_before_work(mount_tmpfs):
    readonly = mount_tmpfs(readonly=True)
    with pytest.raises(OutputError, match="not writable"):
        check_output_folder(readonly / "out")
    with pytest.raises(OutputError, match="not writable"):
        check_output_file(readonly / "labels.csv")


def test_output_file_is_never_an_input(tmp_path):
    source = tmp_path / "reports.csv"
    source.write_text("id,report\n")
    with pytest.raises(OutputError, match="also an input"):
        check_output_file(tmp_path / "sub" / ".." / "reports.csv", inputs=[source])
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, inputs=[source])
    assert check_output_file(tmp_path / "labels.csv", inputs=[source]).name == "labels.csv"
    link = tmp_path / "link.csv"
    link.symlink_to(source)
    assert is_same_file(link, source)


def test_free_space(mount_tmpfs):
    small = mount_tmpfs(size="64k")
    check_free_space(small / "not" / "yet", 1000)
    with pytest.raises(NoSpaceError, match="no space left"):
        check_free_space(small, 10**9)


@given(st.text(max_size=400))
def test_safe_file_names_are_bounded_plain_and_never_hidden(identifier):
    stem = safe_file_name(identifier)
    assert stem and len(stem.encode("utf-8")) <= MAX_STEM_BYTES
    assert not stem.startswith(".") and "/" not in stem and "\\" not in stem and "\x00" not in stem


def test_long_ids_keep_distinct_names():
    assert safe_file_name("a" * 300 + "1") != safe_file_name("a" * 300 + "2")


@given(st.text() | st.from_regex(r"\A'*[=+\-@'].*", fullmatch=True))
def test_csv_cells_never_start_a_formula(text):
    cell = csv_cell(text)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))
    buffer = io.StringIO()
    csv.writer(buffer).writerow([cell])
    assert next(csv.reader(io.StringIO(buffer.getvalue()))) == [cell]
    assert csv_value(cell) == text  # fivewsi reads its own cells back unchanged
