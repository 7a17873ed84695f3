"""Every docstring example in the package runs, so none can rot.

One test per module of ``fivewsi``, found by walking the package (a new module is tested by
existing). Modules whose examples need the ``[models]`` extra (the ones registering encoders
that declare ``extra="models"``, or importing timm / open_clip / torchvision at top level) are
marked ``models``: ``make test-models`` runs them in the environment that has those packages.
Examples that need real files or weights carry ``# doctest: +SKIP`` in the source.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path
from types import ModuleType

import pytest

import fivewsi
from fivewsi.features.registry import list_encoders

_EXTRA_IMPORT = re.compile(r"^(?:import|from)\s+(?:timm|open_clip|torchvision)\b", re.MULTILINE)
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def module_names() -> list[str]:
    """Every module of the package except ``__main__`` (importing it runs the CLI)."""
    names = [fivewsi.__name__]
    for info in pkgutil.walk_packages(fivewsi.__path__, prefix=f"{fivewsi.__name__}."):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            names.append(info.name)
    return sorted(names)


def _source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    return Path(spec.origin).read_text(encoding="utf-8")


def needs_models_extra(name: str) -> bool:
    registering = {s.factory.__module__ for s in list_encoders().values() if s.extra == "models"}
    return name in registering or bool(_EXTRA_IMPORT.search(_source(name)))


def _params() -> list[object]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.models] if needs_models_extra(name) else [])
        for name in module_names()
    ]


def doctests(module: ModuleType) -> list[doctest.DocTest]:
    """The module's own docstring examples (not those of objects it imports)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [test for test in finder.find(module) if test.examples]


def example_lines(test: doctest.DocTest) -> int:
    """Source lines of the examples (``>>>`` plus ``...`` continuation lines)."""
    return sum(len(example.source.splitlines()) for example in test.examples)


@pytest.mark.parametrize("name", _params())
def test_docstring_examples(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    report: list[str] = []
    for test in doctests(module):
        runner.run(test, out=report.append, clear_globs=True)
    if runner.failures:
        failed = f"{runner.failures} of {runner.tries} examples failed:\n"
        pytest.fail(failed + "".join(report), pytrace=False)
