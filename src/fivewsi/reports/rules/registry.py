"""The registry of rule sets, by question-set name.

Built-in rule sets are the modules of :mod:`fivewsi.reports.rules.sets`, each named after its
question set and registering itself on import with :func:`register_rule_set`. They are imported
only when looked up (or listed), so importing the engine compiles no organ's patterns. Rules
for a question set of your own: build a :class:`~fivewsi.reports.rules.engine.RuleSet` with the
set's ``name`` and register it before extracting.

Example:
    >>> sorted(list_rule_sets())
    ['lung']
    >>> get_rule_set("lung").keys[:2]
    ('differentiation', 'stas')
"""

from __future__ import annotations

import importlib
import pkgutil

from fivewsi.errors import ReportStageError
from fivewsi.reports.rules.engine import RuleSet

#: The package whose modules are the built-in rule sets (module name = question-set name).
SETS_PACKAGE = "fivewsi.reports.rules.sets"

_REGISTRY: dict[str, RuleSet] = {}


class NoRuleSetError(ReportStageError, ValueError):
    """No rule set is registered under a question set's name."""


def register_rule_set(rule_set: RuleSet) -> RuleSet:
    """Register ``rule_set`` under its name and return it.

    Raises:
        ValueError: another rule set is already registered under that name.
    """
    known = _REGISTRY.get(rule_set.name)
    if known is not None and known is not rule_set:
        raise ValueError(f"a rule set {rule_set.name!r} is already registered")
    _REGISTRY[rule_set.name] = rule_set
    return rule_set


def builtin_rule_sets() -> list[str]:
    """Names of the built-in rule-set modules (without importing them)."""
    package = importlib.import_module(SETS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)


def list_rule_sets() -> dict[str, RuleSet]:
    """Every rule set, by name: the built-in ones (imported now) and those registered."""
    for name in builtin_rule_sets():
        importlib.import_module(f"{SETS_PACKAGE}.{name}")
    return dict(sorted(_REGISTRY.items()))


def get_rule_set(name: str) -> RuleSet:
    """The rule set of question set ``name``.

    Raises:
        NoRuleSetError: none is registered under ``name``; the message lists those that are.

    Example:
        >>> get_rule_set("kidney")
        Traceback (most recent call last):
        ...
        fivewsi.reports.rules.registry.NoRuleSetError: the rules backend has no rule set for \
question set 'kidney' (rule sets: lung); add one (docs/reports-rules.md) or use the llm backend
    """
    found = _REGISTRY.get(name)
    if found is None:
        if name in builtin_rule_sets():
            importlib.import_module(f"{SETS_PACKAGE}.{name}")
        found = _REGISTRY.get(name)
    if found is None:
        known = ", ".join(list_rule_sets()) or "none"
        raise NoRuleSetError(
            f"the rules backend has no rule set for question set {name!r} (rule sets: {known}); "
            "add one (docs/reports-rules.md) or use the llm backend"
        )
    return found
