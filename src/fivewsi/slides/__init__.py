"""Slides: open whole-slide images of any format, find tissue, tile it into patch coordinates.

Example:
    >>> from fivewsi.slides import open_slide  # doctest: +SKIP
    >>> with open_slide("slide.svs") as slide:  # doctest: +SKIP
    ...     patch = slide.read_scaled(0, 0, size0=512, out_px=256)
"""

from fivewsi.slides.qc import save_qc_image
from fivewsi.slides.readers import (
    SLIDE_SUFFIXES,
    FallbackTiffReader,
    OpenSlideReader,
    PillowReader,
    SlideError,
    SlideReader,
    find_slides,
    open_slide,
    slide_id_from_path,
)
from fivewsi.slides.tiling import Tiling, tile_slide
from fivewsi.slides.tissue import TissueParams, detect_tissue

__all__ = [
    "SLIDE_SUFFIXES",
    "FallbackTiffReader",
    "OpenSlideReader",
    "PillowReader",
    "SlideError",
    "SlideReader",
    "Tiling",
    "TissueParams",
    "detect_tissue",
    "find_slides",
    "open_slide",
    "save_qc_image",
    "slide_id_from_path",
    "tile_slide",
]
