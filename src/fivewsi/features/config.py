"""Settings of ``fivewsi preprocess``, in a module light enough for the command line to read.

Example:
    >>> config = PreprocessConfig(target_mpp=1.0)
    >>> config.feature_settings()
    {'target_mpp': 1.0, 'patch_size': 256, 'encoder': 'he-handcrafted', 'min_tissue': 0.25}
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

#: Settings that change the features: a folder holds features made with one value of each.
FEATURE_SETTINGS = ("target_mpp", "patch_size", "encoder", "min_tissue")


class PreprocessConfig(BaseModel):
    """Settings of ``fivewsi preprocess``."""

    model_config = ConfigDict(extra="forbid")

    target_mpp: float = Field(0.5, gt=0, le=64, description="microns per pixel of the patches")
    patch_size: int = Field(256, ge=16, le=4096, description="patch side at the target mpp")
    encoder: str = "he-handcrafted"
    weights: Path | None = None
    slide_mpp: float | None = Field(None, gt=0, description="level-0 mpp when metadata lacks it")
    slide_mpp_csv: Path | None = Field(
        None, description="CSV of slide_id or path, and mpp: per-slide level-0 mpp when "
        "metadata lacks it (wins over slide_mpp for the slides it lists)"
    )
    min_tissue: float = Field(0.25, ge=0, le=1, description="tissue fraction a patch needs")
    workers: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=0)
    batch_size: int | None = Field(
        None, ge=1, description="patches per encoder batch (None: 64 on the CPU, chosen from "
        "free GPU memory on CUDA)"
    )
    device: str = "auto"
    qc: bool = True

    def feature_settings(self) -> dict[str, object]:
        """The settings that change the features (one value of each per output folder)."""
        return {key: getattr(self, key) for key in FEATURE_SETTINGS}
