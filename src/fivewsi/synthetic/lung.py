"""The synthetic LUAD / LUSC world shared by every synthetic cohort: classes, fields, categories.

Both the feature-level cohort (:mod:`fivewsi.synthetic.feature_cohort`) and the pixel cohort
(:mod:`fivewsi.synthetic.pixel_cohort`) draw each slide's true categories from the same
class-conditional tables here, and describe the classes with the same texts. The numbers are
rough shapes of resected NSCLC, not rates measured on real slides.

Example:
    >>> import numpy as np
    >>> categories = draw_categories("LUSC", np.random.default_rng(0))
    >>> list(categories) == list(FIELDS), categories["differentiation"]
    (True, 'poor')
"""

from __future__ import annotations

import numpy as np

from fivewsi.cohort.table import ClassDescription
from fivewsi.reports.questions import QuestionSet, load_question_set

#: The two classes, in label order.
CLASSES = ("LUAD", "LUSC")
#: The report fields (questions of the ``lung`` question set) a synthetic slide has a truth for.
FIELDS = (
    "differentiation",
    "stas",
    "vascular_invasion",
    "pleural_invasion",
    "adjacent_invasion",
    "margins",
)
#: Microns per level-0 pixel of every synthetic cohort's slides.
MPP = 0.5
#: Probability that a report is silent on a field the slide shows.
UNKNOWN_RATE = 0.3

# Class-conditional category probabilities (rough shapes of resected NSCLC, not exact rates).
_DIFFERENTIATION = {
    "LUAD": {"well": 0.22, "well_to_moderate": 0.08, "moderate": 0.38, "moderate_to_poor": 0.08,
             "poor": 0.17, "mixed": 0.07},
    "LUSC": {"well": 0.04, "well_to_moderate": 0.02, "moderate": 0.36, "moderate_to_poor": 0.16,
             "poor": 0.37, "undifferentiated": 0.03, "mixed": 0.02},
}
_P_PRESENT = {  # P(present / involved)
    "LUAD": {"stas": 0.45, "vascular_invasion": 0.35, "pleural_invasion": 0.30, "margins": 0.08},
    "LUSC": {"stas": 0.12, "vascular_invasion": 0.28, "pleural_invasion": 0.18, "margins": 0.14},
}
# Adjacent structures are invaded mostly through the pleura.
_P_ADJACENT = {True: 0.30, False: 0.02}

#: The finding each field's feature direction stands for; its absence is the other
#: category (differentiation has a category per grade instead).
FINDING = {"stas": "present", "vascular_invasion": "present", "pleural_invasion": "present",
           "adjacent_invasion": "present", "margins": "involved"}


def draw_categories(label: str, rng: np.random.Generator) -> dict[str, str]:
    """The true category of each of :data:`FIELDS` for a slide of class ``label``.

    Example:
        >>> draw_categories("LUAD", np.random.default_rng(0))["stas"]
        'present'
    """
    table = _DIFFERENTIATION[label]
    cats = list(table)
    probs = np.array([table[c] for c in cats])
    out = {"differentiation": cats[int(rng.choice(len(cats), p=probs / probs.sum()))]}
    p = _P_PRESENT[label]
    out["stas"] = "present" if rng.random() < p["stas"] else "absent"
    out["vascular_invasion"] = "present" if rng.random() < p["vascular_invasion"] else "absent"
    pleural = rng.random() < p["pleural_invasion"]
    out["pleural_invasion"] = "present" if pleural else "absent"
    out["adjacent_invasion"] = "present" if rng.random() < _P_ADJACENT[pleural] else "absent"
    out["margins"] = "involved" if rng.random() < p["margins"] else "clear"
    return out


def class_descriptions(questions: QuestionSet | None = None) -> list[ClassDescription]:
    """Descriptions of LUAD and LUSC that name the findings typical of each, in the words of the
    question set's render phrases (so a text model can score slides against them zero-shot).

    Example:
        >>> [c.name for c in class_descriptions()]
        ['LUAD', 'LUSC']
    """
    qs = load_question_set(questions or "lung")
    p = qs.render_phrase
    luad = (
        "Lung adenocarcinoma: a malignant glandular epithelial tumour of the peripheral lung "
        f"with acinar, lepidic or papillary growth, often {p('differentiation', 'well')} or "
        f"{p('differentiation', 'moderate')}, with {p('stas', 'present')} and frequently "
        f"{p('pleural_invasion', 'present')}."
    )
    lusc = (
        "Lung squamous cell carcinoma: a malignant epithelial tumour of the central airways "
        "with keratinisation and intercellular bridges, often "
        f"{p('differentiation', 'poor')} or {p('differentiation', 'moderate_to_poor')}, "
        f"with {p('stas', 'absent')} and {p('pleural_invasion', 'absent')}."
    )
    return [ClassDescription("LUAD", luad), ClassDescription("LUSC", lusc)]
