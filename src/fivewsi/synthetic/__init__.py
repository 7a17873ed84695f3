"""Synthetic data with a known answer: pixel slides, feature-level cohorts and their reports.

Every synthetic LUAD / LUSC slide draws its true categories from one set of class-conditional
tables, and its report states them in the same words, whatever level it is made at.

- :mod:`fivewsi.synthetic.lung` — classes, report fields, category tables, class descriptions.
- :mod:`fivewsi.synthetic.reports` — prose reports stating a slide's reported categories.
- :mod:`fivewsi.synthetic.slide_spec` — :class:`PixelSlideSpec` (what a pixel slide looks
  like) and :class:`SignalRegion` (a focus of denser, larger, darker nuclei).
- :mod:`fivewsi.synthetic.pixel_slide` — paints a spec as H&E-like pixels
  (:func:`write_pixel_slide`, :func:`render_region`).
- :mod:`fivewsi.synthetic.tiff` — the bounded-memory pyramidal JPEG TIFF writer.
- :mod:`fivewsi.synthetic.pixel_cohort` — a cohort of pixel slides with prose reports, a slide
  table and class descriptions (what ``fivewsi demo`` runs on).
- :mod:`fivewsi.synthetic.feature_bags` — the feature-level generative model: patch feature
  bags with a known tumour region and findings.
- :mod:`fivewsi.synthetic.feature_cohort` — a feature-level cohort (bags, ``cohort.csv``,
  reports, ``truth.json``) for tests and benchmarks that skip the pixels.

Names are imported on first use, so ``import fivewsi.synthetic`` loads neither OpenCV nor h5py.

Example:
    >>> from fivewsi.synthetic import CLASSES, PixelSlideSpec
    >>> CLASSES, PixelSlideSpec(width=512, height=512).mpp
    (('LUAD', 'LUSC'), 0.5)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CLASSES": "fivewsi.synthetic.lung",
    "FIELDS": "fivewsi.synthetic.lung",
    "MPP": "fivewsi.synthetic.lung",
    "UNKNOWN_RATE": "fivewsi.synthetic.lung",
    "class_descriptions": "fivewsi.synthetic.lung",
    "draw_categories": "fivewsi.synthetic.lung",
    "report_text": "fivewsi.synthetic.reports",
    "REGION_STYLES": "fivewsi.synthetic.slide_spec",
    "PixelSlideSpec": "fivewsi.synthetic.slide_spec",
    "SignalRegion": "fivewsi.synthetic.slide_spec",
    "render_region": "fivewsi.synthetic.pixel_slide",
    "write_pixel_slide": "fivewsi.synthetic.pixel_slide",
    "TileRow": "fivewsi.synthetic.tiff",
    "encode_jpeg_tile": "fivewsi.synthetic.tiff",
    "pyramid_sizes": "fivewsi.synthetic.tiff",
    "write_pyramid_tiff": "fivewsi.synthetic.tiff",
    "CLASS_STYLES": "fivewsi.synthetic.pixel_cohort",
    "DIFFERENTIATION_STYLES": "fivewsi.synthetic.pixel_cohort",
    "PixelCohort": "fivewsi.synthetic.pixel_cohort",
    "PixelSlide": "fivewsi.synthetic.pixel_cohort",
    "tumour_regions": "fivewsi.synthetic.pixel_cohort",
    "write_pixel_cohort": "fivewsi.synthetic.pixel_cohort",
    "FeatureCohort": "fivewsi.synthetic.feature_cohort",
    "FeatureSlide": "fivewsi.synthetic.feature_cohort",
    "load_truth": "fivewsi.synthetic.feature_cohort",
    "make_feature_cohort": "fivewsi.synthetic.feature_cohort",
}

if TYPE_CHECKING:
    from fivewsi.synthetic.feature_cohort import (
        FeatureCohort,
        FeatureSlide,
        load_truth,
        make_feature_cohort,
    )
    from fivewsi.synthetic.lung import (
        CLASSES,
        FIELDS,
        MPP,
        UNKNOWN_RATE,
        class_descriptions,
        draw_categories,
    )
    from fivewsi.synthetic.pixel_cohort import (
        CLASS_STYLES,
        DIFFERENTIATION_STYLES,
        PixelCohort,
        PixelSlide,
        tumour_regions,
        write_pixel_cohort,
    )
    from fivewsi.synthetic.pixel_slide import render_region, write_pixel_slide
    from fivewsi.synthetic.reports import report_text
    from fivewsi.synthetic.slide_spec import REGION_STYLES, PixelSlideSpec, SignalRegion
    from fivewsi.synthetic.tiff import TileRow, encode_jpeg_tile, pyramid_sizes, write_pyramid_tiff


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fivewsi.synthetic' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "CLASSES",
    "CLASS_STYLES",
    "DIFFERENTIATION_STYLES",
    "FIELDS",
    "MPP",
    "REGION_STYLES",
    "UNKNOWN_RATE",
    "FeatureCohort",
    "FeatureSlide",
    "PixelCohort",
    "PixelSlide",
    "PixelSlideSpec",
    "SignalRegion",
    "TileRow",
    "class_descriptions",
    "draw_categories",
    "encode_jpeg_tile",
    "load_truth",
    "make_feature_cohort",
    "pyramid_sizes",
    "render_region",
    "report_text",
    "tumour_regions",
    "write_pixel_cohort",
    "write_pixel_slide",
    "write_pyramid_tiff",
]
