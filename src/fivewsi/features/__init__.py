"""Features: frozen patch encoders and bags of patch features (CLAM / TRIDENT HDF5 layout).

Example:
    >>> from fivewsi.features import create_encoder
    >>> encoder = create_encoder("he-handcrafted")
    >>> encoder.dim > 0
    True
"""

from fivewsi.features.bags import Bag, load_bag, save_bag
from fivewsi.features.registry import (
    EncoderSpec,
    PatchEncoder,
    create_encoder,
    list_encoders,
    register_encoder,
)

__all__ = [
    "Bag",
    "EncoderSpec",
    "PatchEncoder",
    "create_encoder",
    "list_encoders",
    "load_bag",
    "register_encoder",
    "save_bag",
]
