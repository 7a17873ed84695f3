"""`fivewsi demo`: the pipeline on synthetic slides that fivewsi writes itself (no download).

It runs exactly what a user runs on real data::

    fivewsi preprocess DEMO/slides --out DEMO

Later stages (reports, training, prediction) join the demo as they land.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fivewsi.features.preprocess import PreprocessConfig, PreprocessResult, preprocess
from fivewsi.slides.synthetic import write_synthetic_slide

log = logging.getLogger(__name__)


def write_demo_slides(folder: Path, n_slides: int = 6, seed: int = 0) -> list[Path]:
    """Write ``n_slides`` small H&E-like pyramidal TIFFs (some with pen marks) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_slides):
        path = folder / f"demo-{index:03d}.tif"
        if not path.exists():
            write_synthetic_slide(
                path, width=4096, height=3072, mpp=0.5, seed=seed + index,
                pen_mark=index % 3 == 2,
            )
        paths.append(path)
    return paths


def run_demo(out: Path, n_slides: int = 6, progress: bool = True) -> PreprocessResult:
    """Write the demo slides into ``out/slides`` and preprocess them into ``out``."""
    out = Path(out)
    slides = write_demo_slides(out / "slides", n_slides)
    log.info("wrote %d synthetic slides to %s", len(slides), out / "slides")
    log.info("running: fivewsi preprocess %s --out %s", out / "slides", out)
    return preprocess([out / "slides"], out, PreprocessConfig(), progress=progress)
