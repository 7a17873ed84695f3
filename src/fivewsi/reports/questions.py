"""Question sets: the questions asked of every report, as data (bundled YAML or your own file).

A question set names the fields of a fine-grained label: for each question a ``key``, the
question text, its ordered ``categories`` (always including ``unknown``) and the short phrase
each category ``render``s to in the label text. The LLM instruction and worked examples live in
the same file, with a ``version`` to bump whenever any prompt text changes (caches key on it).

Example:
    >>> qs = load_question_set("lung")
    >>> qs.keys[:2]
    ('differentiation', 'stas')
    >>> qs.question("margins").categories
    ('clear', 'involved', 'unknown')
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fivewsi.errors import ReportStageError
from fivewsi.reports.schema import UNKNOWN

log = logging.getLogger(__name__)

_BUNDLE = "question_sets"


class QuestionSetError(ReportStageError, ValueError):
    """A question set that cannot be found, read or validated."""


class Question(BaseModel):
    """One question: its field key, text, categories and how each category renders.

    Example:
        >>> q = Question(key="grade", question="Grade?", categories=["low", "high", "unknown"],
        ...              render={"low": "low grade", "high": "high grade"})
        >>> q.render["high"]
        'high grade'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    question: str = Field(min_length=1)
    categories: tuple[str, ...]
    render: dict[str, str]
    #: Optional extra words per category, used when normalizing free-text answers.
    synonyms: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Question:
        cats = self.categories
        if len(set(cats)) != len(cats):
            raise ValueError(f"question {self.key!r}: duplicate categories in {list(cats)}")
        if UNKNOWN not in cats:
            raise ValueError(f"question {self.key!r}: categories must include {UNKNOWN!r}")
        missing = [c for c in cats if c != UNKNOWN and not self.render.get(c, "").strip()]
        if missing:
            raise ValueError(f"question {self.key!r}: no render phrase for {missing}")
        extra = sorted(set(self.render) - set(cats)) + sorted(set(self.synonyms) - set(cats))
        if extra:
            raise ValueError(f"question {self.key!r}: render/synonyms name no category: {extra}")
        return self


class Example(BaseModel):
    """A worked example shown to the LLM before each report: an excerpt and its answer line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    report: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class QuestionSet(BaseModel):
    """A named, versioned list of questions plus the LLM instruction and worked examples.

    Example:
        >>> qs = load_question_set("lung")
        >>> qs.render_phrase("stas", "present")
        'spread through air spaces present'
        >>> qs.render_phrase("stas", "unknown")
        ''
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    organ: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    examples: tuple[Example, ...] = ()
    questions: tuple[Question, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> QuestionSet:
        keys = [q.key for q in self.questions]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"duplicate question keys {dupes}")
        for i, example in enumerate(self.examples):
            # A literal split is right here: examples are ours, and must be clean.
            parts = example.answer.strip().split(";")
            if len(parts) != len(keys):
                raise ValueError(
                    f"example {i + 1}: answer has {len(parts)} parts, expected {len(keys)}"
                )
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        """The field keys, in question order."""
        return tuple(q.key for q in self.questions)

    def question(self, key: str) -> Question:
        """The question with this key (KeyError naming the known keys otherwise)."""
        for q in self.questions:
            if q.key == key:
                return q
        raise KeyError(f"no question {key!r} in set {self.name!r}; keys: {list(self.keys)}")

    def render_phrase(self, key: str, category: str) -> str:
        """The label phrase of ``category`` for ``key`` ('' for unknown or unlisted ones)."""
        return "" if category == UNKNOWN else self.question(key).render.get(category, "")

    def fingerprint(self) -> str:
        """A short hash of everything in the set; changes whenever any text changes.

        Example:
            >>> len(load_question_set("lung").fingerprint())
            16
        """
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def list_question_sets() -> list[str]:
    """Names of the bundled question sets.

    Example:
        >>> "lung" in list_question_sets()
        True
    """
    folder = resources.files("fivewsi.reports").joinpath(_BUNDLE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_question_set(name_or_path: str | Path | QuestionSet = "lung") -> QuestionSet:
    """A bundled question set by name, or one read from a YAML file (a set passes through).

    Raises:
        QuestionSetError: unknown name / missing file (listing the bundled names), bad YAML or
            a set that fails validation.

    Example:
        >>> load_question_set("lung").organ
        'lung'
    """
    if isinstance(name_or_path, QuestionSet):
        return name_or_path
    text = str(name_or_path)
    if text in list_question_sets():
        return _load_bundled(text)
    path = Path(text).expanduser()
    if path.is_file():
        return _parse(path.read_text(encoding="utf-8"), str(path))
    raise QuestionSetError(
        f"no question set {text!r}: not a bundled name ({', '.join(list_question_sets())}) "
        "and not an existing YAML file"
    )


@functools.cache
def _load_bundled(name: str) -> QuestionSet:
    # Sets are frozen models, so sharing one cached instance is safe.
    source = resources.files("fivewsi.reports").joinpath(_BUNDLE, f"{name}.yaml")
    return _parse(source.read_text(encoding="utf-8"), f"bundled set {name!r}")


def _parse(text: str, where: str) -> QuestionSet:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise QuestionSetError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise QuestionSetError(f"{where}: expected a mapping at the top level")
    try:
        return QuestionSet.model_validate(data)
    except ValidationError as exc:
        raise QuestionSetError(f"{where}: invalid question set:\n{exc}") from None
