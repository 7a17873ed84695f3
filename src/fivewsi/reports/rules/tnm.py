"""TNM strings: the G, L, V, R and PL codes of a staging run ("pT2 pN0 L1 V0 R0").

A code counts only inside a run of TNM tokens that holds a T, N or ICD token ("pT2 pN0 L1 V0
R0", "G. 3, pT 2, pV 0", "C34.3 M 8255/3 G3"), so block labels ("L1- Level X lymph node"),
cassettes ("G1 and G2") and node stations ("4R", "R2 lymph node") never pass.

Example:
    >>> [code[:2] for code in find_tnm_codes("g. 3, pt 2, pv 0")]
    [('g', '3'), ('v', '0')]
    >>> find_tnm_codes("r2 lymph node, cassettes g1 and g2")
    []
"""

from __future__ import annotations

import re

#: A code found in a TNM run: ``(kind, value, start, end)``, kind one of g, l, v, r, pl.
TnmCode = tuple[str, str, int, int]

_TNM_TOKEN = (
    r"(?:[pcyr]{0,2}t ?[0-4x][a-d]?|[pcy]?n ?[0-3xo]|[pcy]?m ?[01x][a-c]?|g\.? ?[1-4x]"
    r"(?:-g?[2-4])?|p?l ?[01x]|p?v ?[0-2x]|pn ?[01x]|r ?[0-2x]|pl ?[0-3x]"
    r"|stage ?[0iv]{1,4} ?[abc]?|\(\d{1,2}/\d{1,3}\)|\([a-z/]{1,12}\)|c ?\d\d[.,]\d"
    r"|m-? ?\d{4}/\d)(?![a-z0-9])"
)
_TNM_RUN = re.compile(r"(?<![a-z0-9])" + _TNM_TOKEN + r"(?:[ ,.;/]{1,3}" + _TNM_TOKEN + r")+")
_TNM_ANCHOR = re.compile(
    r"(?<![a-z0-9])(?:[pcyr]{0,2}t ?[0-4x][a-d]?|[pcy]?n ?[0-3xo]|m-? ?\d{4}/\d|c ?\d\d[.,]\d)"
    r"(?![a-z0-9])"
)
_TNM_CODE = re.compile(
    r"(?<![a-z0-9])(?:(?P<g>g)\.? ?(?P<gv>[1-4x](?:-g?[2-4])?)|(?P<pl>pl) ?(?P<plv>[0-3])"
    r"|p?(?P<l>l) ?(?P<lv>[01])|p?(?P<v>v) ?(?P<vv>[0-2])|(?P<r>r) ?(?P<rv>[0-2x]))(?![a-z0-9])"
)
# Cheap literal-led patterns that find where a TNM string may be ("pT2", "T2 N1", "8255/3").
_TNM_HINTS = (re.compile(r"p[tn] ?[0-4xo]"), re.compile(r"t ?[0-4x]"), re.compile(r"/3"))


def find_tnm_codes(low: str) -> list[TnmCode]:
    """``(kind, value, start, end)`` of G/L/V/R/PL codes inside the TNM strings of lower-case
    text ``low`` (use :meth:`Doc.tnm_codes <fivewsi.reports.rules.document.Doc.tnm_codes>`,
    which computes them once per report).

    A run counts only with a T, N or ICD token in it, so block labels ("L1- Level X node") and
    node stations ("R2 lymph node") never pass for codes.

    Example:
        >>> [c[:2] for c in find_tnm_codes("pt2 pn0 l1 v0 r0, stage ib")]
        [('l', '1'), ('v', '0'), ('r', '0')]
    """
    hits = sorted(
        m.start()
        for hint in _TNM_HINTS
        for m in hint.finditer(low)
        if not (m.start() and low[m.start() - 1].isalnum())
    )
    codes: list[TnmCode] = []
    last = -1
    for i in hits:
        if i < last:
            continue
        for run in _TNM_RUN.finditer(low, max(0, i - 50), min(len(low), i + 60)):
            if run.start() < last or not _TNM_ANCHOR.search(run.group()):
                continue
            last = run.end()
            for m in _TNM_CODE.finditer(run.group()):
                kind = next(k for k in ("g", "l", "v", "r", "pl") if m.group(k))
                codes.append(
                    (kind, m.group(kind + "v"), run.start() + m.start(), run.start() + m.end())
                )
    return codes
