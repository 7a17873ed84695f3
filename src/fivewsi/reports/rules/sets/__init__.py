"""Built-in rule sets: one module per question set, named after it (``lung.py`` for ``lung``).

Each module builds a :class:`~fivewsi.reports.rules.engine.RuleSet` and registers it with
:func:`~fivewsi.reports.rules.registry.register_rule_set`; the registry finds the modules here
and imports one only when its question set is looked up. Adding an organ: docs/reports-rules.md.
"""
