"""Prose pathology reports of synthetic slides, stating exactly the findings they report.

Half are prose, half synoptic checklist lines; the phrasing varies (histology, site, size) but
:func:`~fivewsi.reports.rules.extract_rules` reads back exactly the reported categories, and
a field reported ``unknown`` is not mentioned at all.

Example:
    >>> import numpy as np
    >>> reported = dict.fromkeys(FIELDS, "unknown") | {"stas": "present"}
    >>> print(report_text("LUAD", reported, np.random.default_rng(3)), end="")
    Right lower lobe, lobectomy:
    Invasive adenocarcinoma, acinar predominant, 5.4 cm.
    Spread through air spaces: present.
    Lymph nodes: see separate specimen report.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fivewsi.reports.schema import UNKNOWN
from fivewsi.synthetic.lung import FIELDS

_HISTOLOGY = {
    "LUAD": ("invasive adenocarcinoma, acinar predominant", "adenocarcinoma with papillary and "
             "lepidic components", "invasive adenocarcinoma, solid and acinar patterns"),
    "LUSC": ("invasive squamous cell carcinoma, keratinising", "squamous cell carcinoma",
             "invasive squamous cell carcinoma with focal keratinisation"),
}
_SITES = ("Right upper lobe", "Right lower lobe", "Left upper lobe", "Left lower lobe",
          "Right middle lobe")
_GRADE_TEXT = {
    "well": ("well differentiated (G1)", "well differentiated"),
    "well_to_moderate": ("well to moderately differentiated (G1-G2)",
                         "well to moderately differentiated"),
    "moderate": ("moderately differentiated (G2)", "moderately differentiated"),
    "moderate_to_poor": ("moderately to poorly differentiated (G2-G3)",
                         "moderately to poorly differentiated"),
    "poor": ("poorly differentiated (G3)", "poorly differentiated"),
    "undifferentiated": ("undifferentiated (G4)", "undifferentiated"),
    "mixed": ("with well and poorly differentiated areas (mixed differentiation)",
              "well to poorly differentiated"),
}
_FINDING_TEXT = {
    ("stas", "present"): ("Tumour cells are seen within air spaces beyond the edge of the main "
                          "tumour (STAS present).",
                          "Spread through air spaces: present."),
    ("stas", "absent"): ("Spread through air spaces is not identified.",
                         "Spread through air spaces: not identified."),
    ("vascular_invasion", "present"): ("Lymphovascular invasion is present (V1).",
                                       "Angiolymphatic invasion: present."),
    ("vascular_invasion", "absent"): ("Lymphovascular invasion is not identified.",
                                      "Angiolymphatic invasion: not identified."),
    ("pleural_invasion", "present"): ("The tumour invades through the visceral pleura (PL2).",
                                      "Visceral pleural invasion: present (PL1)."),
    ("pleural_invasion", "absent"): ("The visceral pleura is not involved by tumour (PL0).",
                                     "Visceral pleural invasion: not identified (PL0)."),
    ("adjacent_invasion", "present"): ("The tumour directly invades the chest wall soft "
                                       "tissue.",
                                       "Direct invasion of the chest wall: present."),
    ("adjacent_invasion", "absent"): ("The tumour is confined to the lung.",
                                      "Direct extrapulmonary extension: not identified."),
    ("margins", "clear"): ("The bronchial, vascular and parenchymal margins are free of tumour "
                           "(R0).",
                           "Surgical margins: negative for carcinoma (R0)."),
    ("margins", "involved"): ("Carcinoma is present at the bronchial resection margin (R1).",
                              "Surgical margins: involved by carcinoma (R1)."),
}


def report_text(label: str, reported: Mapping[str, str], rng: np.random.Generator) -> str:
    """A short resection report stating exactly the reported (non-unknown) findings."""
    synoptic = bool(rng.random() < 0.5)  # half prose, half synoptic checklist lines
    style = 1 if synoptic else 0
    histology = _HISTOLOGY[label][int(rng.integers(len(_HISTOLOGY[label])))]
    site = _SITES[int(rng.integers(len(_SITES)))]
    size = f"{rng.uniform(1.2, 6.5):.1f} cm"
    grade = reported["differentiation"]
    lines = [f"{site}, lobectomy:"]
    if grade == UNKNOWN:
        lines.append(f"{histology[0].upper()}{histology[1:]}, {size}.")
    else:
        lines.append(f"{histology[0].upper()}{histology[1:]}, "
                     f"{_GRADE_TEXT[grade][style]}, {size}.")
    for key in FIELDS[1:]:
        if reported[key] != UNKNOWN:
            lines.append(_FINDING_TEXT[key, reported[key]][style])
    lines.append("Lymph nodes: see separate specimen report.")
    return "\n".join(lines) + "\n"
