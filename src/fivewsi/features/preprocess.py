"""Slides → bags of patch features, for a whole batch of slides.

Layout of the output folder ``OUT``:

- ``features/<slide_id>.h5`` — the bag (see :mod:`fivewsi.features.bags`), written atomically:
  its presence means the slide is finished.
- ``qc/<slide_id>.jpg`` — thumbnail with the tissue outline and the patch grid.
- ``status/<slide_id>.json`` — the slide's record (done / failed, error, patches, seconds).
- ``manifest.csv`` — all records of the batch, rewritten at the end of every run.
- ``preprocess.json`` — the settings the features were made with; a rerun with other settings
  into the same folder is refused rather than mixing features.

A failed slide never stops the batch; a rerun skips finished slides and redoes the others.
Under a multi-process launcher each rank takes its own shard of slides.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from rich.progress import Progress

from fivewsi import __version__
from fivewsi.errors import FeatureStageError
from fivewsi.features.bags import read_bag_attrs, save_bag
from fivewsi.features.config import PreprocessConfig
from fivewsi.features.extract import embed_patches
from fivewsi.features.registry import PatchEncoder, create_encoder, get_spec
from fivewsi.slides.qc import save_qc_image
from fivewsi.slides.readers import SlideError, find_slides, open_slide, slide_id_from_path
from fivewsi.slides.tiling import Tiling, tile_slide
from fivewsi.utils import dist
from fivewsi.utils.atomic import sweep_tmp_files, write_json_atomic, write_text_atomic
from fivewsi.utils.logs import make_progress

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "slide_id", "path", "status", "error", "n_patches", "seconds",
    "backend", "slide_mpp", "mpp_source", "width", "height", "rank",
)


@dataclass
class SlideRecord:
    """The outcome of one slide, as written to ``status/`` and ``manifest.csv``."""

    slide_id: str
    path: str
    status: Literal["done", "failed"]
    error: str = ""
    n_patches: int = 0
    seconds: float = 0.0
    backend: str = ""
    slide_mpp: float | None = None
    mpp_source: str = ""
    width: int = 0
    height: int = 0
    rank: int = 0
    reused: bool = field(default=False, compare=False)


@dataclass
class PreprocessResult:
    """Records of the slides this process handled (all slides on rank 0 of a group)."""

    out: Path
    records: list[SlideRecord]
    seconds: float
    reports_failures: bool = True  # False on non-leader ranks of a process group

    @property
    def failed(self) -> list[SlideRecord]:
        return [r for r in self.records if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """False when a slide failed (only the leader of a process group reports it)."""
        return not (self.failed and self.reports_failures)


class SettingsMismatchError(FeatureStageError):
    """The output folder holds features made with other settings."""


def preprocess(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
    *,
    progress: bool = True,
) -> PreprocessResult:
    """Turn slides (files or folders) into one feature file per slide under ``out``.

    Example:
        >>> result = preprocess(["slides/"], "out/")  # doctest: +SKIP
        >>> [r.slide_id for r in result.failed]  # doctest: +SKIP
        []
    """
    config = config or PreprocessConfig()
    out = Path(out)
    started = time.perf_counter()
    get_spec(config.encoder)  # an unknown encoder fails before anything is written
    slides = find_slides(inputs)
    rank = dist.process_rank()
    grouped = dist.init_process_group(rank)
    for sub in ("features", "qc", "status"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        sweep_tmp_files(out / sub)
    _check_settings(out, config, rank)
    mine = _shard(slides, rank)
    log.info("rank %d/%d: %d of %d slides", rank.rank, rank.world_size, len(mine), len(slides))
    records = _run_shard(mine, out, config, rank, progress)
    dist.barrier()
    if rank.is_leader and (grouped or rank.world_size == 1):
        records = _merged_records(out, slides, records)
        _write_manifest(out / "manifest.csv", records)
    elif not grouped and rank.world_size > 1:
        _write_manifest(out / f"manifest.rank{rank.rank}-of-{rank.world_size}.csv", records)
    # Nobody exits before the manifest is written: a launcher stops all ranks when one fails.
    dist.barrier()
    dist.destroy_process_group()
    # In a group the leader speaks for everyone; the others exit cleanly.
    speaks = rank.is_leader or not grouped
    return PreprocessResult(out, records, time.perf_counter() - started, speaks)


def _check_settings(out: Path, config: PreprocessConfig, rank: dist.ProcessRank) -> None:
    path = out / "preprocess.json"
    wanted = json.loads(json.dumps(config.feature_settings(), default=str))
    if path.exists():
        found = json.loads(path.read_text())
        diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: folder has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
            raise SettingsMismatchError(
                f"{out} holds features made with other settings ({details}); "
                "use another --out folder or the folder's settings"
            )
    elif rank.is_leader:
        write_json_atomic(path, {**wanted, "fivewsi_version": __version__})


def _shard(slides: list[Path], rank: dist.ProcessRank) -> list[Path]:
    """Deterministic shard of this rank: largest files first, each to the lightest rank."""
    if rank.world_size == 1:
        return slides
    loads = [0] * rank.world_size
    mine: list[Path] = []
    for path in sorted(slides, key=lambda p: (-p.stat().st_size, str(p))):
        target = min(range(rank.world_size), key=lambda r: (loads[r], r))
        loads[target] += path.stat().st_size
        if target == rank.rank:
            mine.append(path)
    return sorted(mine)


def _run_shard(
    slides: list[Path], out: Path, config: PreprocessConfig, rank: dist.ProcessRank, progress: bool
) -> list[SlideRecord]:
    device = dist.pick_device(config.device, rank)
    encoder: PatchEncoder | None = None
    records: list[SlideRecord] = []
    seen: dict[str, Path] = {}
    with make_progress(progress) as bars:
        slide_bar = bars.add_task("slides", total=len(slides), rate="")
        for path in slides:
            slide_id = slide_id_from_path(path)
            if slide_id in seen:
                record = _failed(path, f"duplicate slide id {slide_id!r}: also {seen[slide_id]}")
            elif (record := _finished_record(out, path)) is None:
                if encoder is None:  # built lazily: a rerun with nothing to do loads no model
                    encoder = create_encoder(config.encoder, config.weights).to(device)
                record = _process_slide(path, out, config, encoder, device, bars)
                record.rank = rank.rank
                write_json_atomic(out / "status" / f"{slide_id}.json", asdict(record))
            seen.setdefault(slide_id, path)
            records.append(record)
            bars.advance(slide_bar)
    return records


def _failed(path: Path, error: str, **facts: object) -> SlideRecord:
    return SlideRecord(slide_id_from_path(path), str(path), "failed", error, **facts)  # type: ignore[arg-type]


def _finished_record(out: Path, path: Path) -> SlideRecord | None:
    """The record of a slide whose feature file is complete, or None if it must be (re)done."""
    slide_id = slide_id_from_path(path)
    h5 = out / "features" / f"{slide_id}.h5"
    if not h5.exists():
        return None
    try:
        attrs = read_bag_attrs(h5)
    except OSError:
        log.warning("%s: unreadable feature file, redoing it", slide_id)
        return None
    record = _read_record(out, path)
    if record.status != "done":  # file finished but killed before its status was written
        record = SlideRecord(slide_id, str(path), "done", n_patches=attrs["n_patches"])
    record.reused = True
    return record


def _merged_records(out: Path, slides: list[Path], own: list[SlideRecord]) -> list[SlideRecord]:
    """Records of every slide of the batch: this rank's own, the others' read from ``status/``."""
    mine = {record.path: record for record in own}
    records, seen = [], set()
    for path in slides:
        slide_id = slide_id_from_path(path)
        if str(path) in mine:
            records.append(mine[str(path)])
        elif slide_id in seen:
            records.append(_failed(path, f"duplicate slide id {slide_id!r}"))
        else:
            records.append(_read_record(out, path))
        seen.add(slide_id)
    return records


def _read_record(out: Path, path: Path) -> SlideRecord:
    slide_id = slide_id_from_path(path)
    status = out / "status" / f"{slide_id}.json"
    try:
        data = json.loads(status.read_text())
        data.pop("reused", None)
        return SlideRecord(**data)
    except (OSError, ValueError, TypeError):
        if (out / "features" / f"{slide_id}.h5").exists():
            return SlideRecord(slide_id, str(path), "done", n_patches=read_bag_attrs(
                out / "features" / f"{slide_id}.h5")["n_patches"])
        return _failed(path, "not processed (its rank did not finish)")


def _process_slide(
    path: Path,
    out: Path,
    config: PreprocessConfig,
    encoder: PatchEncoder,
    device: torch.device,
    bars: Progress,
) -> SlideRecord:
    started = time.perf_counter()
    facts: dict[str, object] = {}
    tiling: Tiling | None = None
    try:
        with open_slide(path, config.slide_mpp) as slide:
            info = slide.describe()
            facts = {
                "backend": info["backend"], "slide_mpp": info["mpp"],
                "mpp_source": info["mpp_source"] or "", "width": info["width"],
                "height": info["height"],
            }
            tiling = tile_slide(
                slide, target_mpp=config.target_mpp, patch_size=config.patch_size,
                min_tissue=config.min_tissue,
            )
        if len(tiling.coords) == 0:
            raise SlideError("no tissue found (no patch passes --min-tissue); see the QC image")
        features = _embed(path, tiling, config, encoder, device, bars)
        _save(out, path, tiling, features, encoder, config, info)
    except Exception as exc:  # one bad slide must not stop the batch
        if config.qc and tiling is not None:
            _save_qc(out, slide_id_from_path(path), tiling)
        log.error("%s: %s", path.name, exc)
        log.debug("traceback", exc_info=True)
        return _failed(path, _message(exc), seconds=time.perf_counter() - started, **facts)
    if config.qc:
        _save_qc(out, slide_id_from_path(path), tiling)
    seconds = time.perf_counter() - started
    log.info("%s: %d patches in %.1f s", path.name, len(tiling.coords), seconds)
    return SlideRecord(
        slide_id_from_path(path), str(path), "done", "", len(tiling.coords), round(seconds, 3),
        **facts,  # type: ignore[arg-type]
    )


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, SlideError) else f"{type(exc).__name__}: {text}"


def _embed(
    path: Path,
    tiling: Tiling,
    config: PreprocessConfig,
    encoder: PatchEncoder,
    device: torch.device,
    bars: Progress,
) -> np.ndarray:
    task = bars.add_task(f"  {path.name}", total=len(tiling.coords), rate="")
    started = time.perf_counter()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        rate = f"{done / max(time.perf_counter() - started, 1e-9):.0f} patches/s"
        bars.update(task, advance=n, rate=rate)

    try:
        return embed_patches(
            path, tiling.coords, size0=tiling.patch_size_level0, patch_size=tiling.patch_size,
            encoder=encoder, slide_mpp=config.slide_mpp, batch_size=config.batch_size,
            workers=config.workers, device=device, on_batch=advance,
        )
    finally:
        bars.remove_task(task)


def _save(
    out: Path,
    path: Path,
    tiling: Tiling,
    features: np.ndarray,
    encoder: PatchEncoder,
    config: PreprocessConfig,
    info: dict[str, object],
) -> None:
    level0_mag = _magnification(tiling.slide_mpp)
    coords_attrs = {
        "patch_size": tiling.patch_size,
        "patch_size_level0": tiling.patch_size_level0,
        "level0_magnification": level0_mag,
        "target_magnification": _magnification(tiling.target_mpp),
        "level0_width": info["width"],
        "level0_height": info["height"],
        "name": slide_id_from_path(path),
        "overlap": 0,
    }
    features_attrs = {
        **encoder.describe(),
        "target_mpp": tiling.target_mpp,
        "slide_mpp": tiling.slide_mpp,
        "mpp_source": info["mpp_source"] or "",
        "min_tissue": config.min_tissue,
        "fivewsi_version": __version__,
    }
    h5 = out / "features" / f"{slide_id_from_path(path)}.h5"
    save_bag(h5, features, tiling.coords, coords_attrs, features_attrs)


def _magnification(mpp: float) -> float:
    """Objective magnification for an mpp, by the field's convention 10 µm / mpp (0.5 → 20x)."""
    mag = 10.0 / mpp
    return float(round(mag)) if math.isclose(mag, round(mag), rel_tol=0.02) else round(mag, 2)


def _save_qc(out: Path, slide_id: str, tiling: Tiling) -> None:
    try:
        save_qc_image(out / "qc" / f"{slide_id}.jpg", tiling)
    except Exception as exc:  # a QC picture must never fail a slide
        log.warning("%s: QC image not written: %s", slide_id, exc)


def _write_manifest(path: Path, records: list[SlideRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = asdict(record)
        row["seconds"] = f"{record.seconds:.3f}"
        row["slide_mpp"] = "" if record.slide_mpp is None else f"{record.slide_mpp:.4f}"
        writer.writerow(row)
    write_text_atomic(path, buffer.getvalue())
