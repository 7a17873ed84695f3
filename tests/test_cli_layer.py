"""The command-line layer itself: every command registered, the README's command lines real,
one error path (exit 2, one line, no traceback), ``--config`` merged under the command line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fivewsi.cli import app
from fivewsi.cli.app import COMMANDS, load_command
from fivewsi.cli.config import ConfigFileError, merge_settings, read_config_file
from fivewsi.cli.errors import user_error_message, validation_message
from fivewsi.errors import FivewsiError

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def leaf_commands() -> list[tuple[str, ...]]:
    """Every runnable command as its words, e.g. ("reports", "extract")."""
    leaves: list[tuple[str, ...]] = []
    for name in COMMANDS:
        command = load_command(name)
        subcommands = getattr(command, "commands", None)
        if subcommands:
            leaves.extend((name, sub) for sub in subcommands)
        else:
            leaves.append((name,))
    return leaves


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=ENV)


@pytest.mark.parametrize("words", leaf_commands(), ids=" ".join)
def test_every_command_has_help_and_the_shared_verbosity_options(words):
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    if words != ("encoders",):
        assert "--verbose" in result.output and "--quiet" in result.output


def test_root_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def readme_command_lines() -> list[str]:
    """Every ``fivewsi …`` command line in the README's bash blocks (continuations joined)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if re.search(r"(^|\s)(-m )?fivewsi\s", line + " ") and "pip " not in line:
                lines.append(line)
    return lines


def test_the_readme_has_command_lines():
    assert len(readme_command_lines()) >= 20


@pytest.mark.parametrize("line", readme_command_lines())
def test_readme_command_lines_parse_against_the_real_cli(line):
    """Each option the README shows exists: parsing with --help appended fails on any other."""
    words = shlex.split(line)
    args = words[words.index("fivewsi") + 1:]
    result = invoke(*args, "--help")
    assert result.exit_code == 0, f"{line}\n{result.output}"
    assert "Usage:" in result.output


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    cohort = tmp / "cohort.csv"
    cohort.write_text("slide_id,label,report_label,split\na,X,,train\nb,Y,,test\n")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("lr: [unclosed\n")
    return [
        (["preprocess", str(tmp / "missing"), "--out", str(tmp / "o")], "not found"),
        (["preprocess", str(tmp), "--out", str(tmp / "o"), "--encoder", "nope"],
         "unknown encoder"),
        (["preprocess", "--out", str(tmp / "o")], "needs slides"),
        (["train", "-f", str(tmp), "-c", str(cohort), "-o", str(tmp / "r"), "--lr", "5"],
         "lr"),
        (["train", "--config", str(bad_yaml)], "not valid YAML"),
        (["train", "--config", str(tmp / "nope.yaml")], "config file not found"),
        (["evaluate", str(tmp), "-f", str(tmp), "-c", str(cohort)], "no run.json"),
        (["predict", str(tmp), str(tmp), "--out", str(tmp / "p")], "run"),
        (["fewshot", "-f", str(tmp), "-c", str(cohort), "-o", str(tmp / "g"),
          "--models", "nosuchmodel"], "nosuchmodel"),
        (["reports", "extract", str(tmp / "missing.csv"), "--out", str(tmp / "l.csv")],
         "missing.csv"),
        (["reports", "extract", str(cohort), "--out", str(tmp / "l.csv"), "--backend", "llm"],
         "--model"),
        (["cohort", "merge", str(tmp / "missing.csv"), "--labels", str(cohort), "--out",
          str(tmp / "c.csv")], "missing.csv"),
        (["demo", "--out", str(tmp / "d"), "--size", "huge"], "unknown demo size"),
    ]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    for args, needle in _bad_inputs(tmp_path / "inputs"):
        result = invoke(*args)
        text = result.output
        assert result.exit_code == 2, f"{args}: exit {result.exit_code}\n{text}"
        assert ("Traceback" not in text and result.exception is None) or isinstance(
            result.exception, SystemExit), f"{args}\n{text}"
        assert needle in text, f"{args}: {needle!r} not in\n{text}"
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, f"{args}\n{text}"


def test_a_bug_keeps_its_traceback():
    assert user_error_message(ZeroDivisionError("x")) is None
    assert user_error_message(FivewsiError("bad\n  thing")) == "bad thing"
    assert user_error_message(FileNotFoundError(2, "No such file", "a.svs")) == (
        "a.svs: No such file"
    )


def test_validation_errors_name_each_setting_without_values():
    from pydantic import BaseModel, Field, ValidationError

    class Settings(BaseModel):
        lr: float = Field(1.0, le=1.0)
        secret: int = 0

    with pytest.raises(ValidationError) as info:
        Settings(lr=5.0, secret="sk-live-123")
    message = validation_message(info.value)
    assert "lr:" in message and "secret:" in message and "sk-live-123" not in message


def test_config_file_merging(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("target-mpp: 1.0\npatch_size: 224\nqc: false\n")
    settings = read_config_file(path)
    assert settings == {"target_mpp": 1.0, "patch_size": 224, "qc": False}
    merged = merge_settings(settings, {"target_mpp": 0.5, "qc": None, "encoder": None})
    assert merged == {"target_mpp": 0.5, "patch_size": 224, "qc": False}
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigFileError, match="mapping"):
        read_config_file(path)
    assert read_config_file(None) == {}


def test_preprocess_reads_a_config_file_and_records_the_merged_settings(tmp_path):
    from fivewsi.features.bags import load_bag
    from fivewsi.synthetic import write_pixel_slide

    slides = tmp_path / "slides"
    slides.mkdir()
    write_pixel_slide(slides / "s0.tif", width=1024, height=768, mpp=0.5, seed=0)
    out = tmp_path / "out"
    config = tmp_path / "preprocess.yaml"
    config.write_text(yaml.safe_dump({
        "inputs": [str(slides)], "out": str(out), "patch_size": 128, "target_mpp": 1.0,
        "workers": 0, "qc": False, "progress": False,
    }))
    result = invoke("preprocess", "--config", str(config), "--patch-size", "64", "-q")
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((out / "config.yaml").read_text())
    assert recorded["patch_size"] == 64  # the command line wins
    assert recorded["target_mpp"] == 1.0 and recorded["qc"] is False  # from the file
    assert recorded["inputs"] == [str(slides)]
    assert load_bag(out / "features" / "s0.h5").attrs["patch_size"] == 64
    assert not (out / "qc" / "s0.jpg").exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("inputs: [x]\nout: y\npatch_sise: 3\n")
    bad = invoke("preprocess", "--config", str(unknown))
    assert bad.exit_code == 2 and "patch_sise" in bad.output
