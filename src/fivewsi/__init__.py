"""fivewsi: slide classifiers from whole-slide images and their pathology reports (FiVE).

The package follows the pipeline's stages, one subpackage each:

- :mod:`fivewsi.slides` — open slides of any format, find tissue, tile it into patches.
- :mod:`fivewsi.features` — embed patches with a frozen patch encoder into bags of features.

Example:
    >>> import fivewsi
    >>> "he-handcrafted" in fivewsi.list_encoders()
    True
"""

from __future__ import annotations

__version__ = "0.1.0"

from fivewsi.features.bags import Bag, load_bag, save_bag
from fivewsi.features.registry import create_encoder, list_encoders
from fivewsi.slides.readers import SlideError, open_slide

__all__ = [
    "Bag",
    "SlideError",
    "__version__",
    "create_encoder",
    "list_encoders",
    "load_bag",
    "open_slide",
    "save_bag",
]
