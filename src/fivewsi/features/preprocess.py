"""Slides → bags of patch features, for a whole batch of slides.

Layout of the output folder ``OUT``:

- ``features/<slide_id>.h5`` — the bag (see :mod:`fivewsi.features.bags`), written atomically:
  its presence means the slide is finished. It records its source slide (path, size, mtime,
  fingerprint): a rerun reuses it only for that very file and redoes it for another.
- ``qc/<slide_id>.jpg`` — thumbnail with the tissue outline and the patch grid.
- ``status/<slide_id>.json`` — the slide's record (done / failed, error, patches, seconds).
- ``manifest.csv`` — all records of the batch, rewritten at the end of every run.
- ``preprocess.json`` — the settings the features were made with, created exclusively; a run
  with other settings into the same folder (even a concurrent one) is refused rather than
  mixing features.

A failed slide never stops the batch; a rerun skips finished slides and redoes the others. A
full disk does stop it (there is no point going on): the slide that met it and the rest are
recorded, no partial file is left, and :class:`~fivewsi.utils.outputs.NoSpaceError` is raised
after the manifest is written.
Under a multi-process launcher each rank takes its own shard of slides.
"""

from __future__ import annotations

import csv
import errno
import hashlib
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
from fivewsi.features.extract import embed_patches, prepare_encoder
from fivewsi.features.mpp_table import SlideMppTable, read_slide_mpp_table
from fivewsi.features.registry import EncoderSpec, PatchEncoder, create_encoder, get_spec
from fivewsi.slides.qc import save_qc_image
from fivewsi.slides.readers import (
    SlideError,
    check_slide_id,
    find_slides,
    open_slide,
    slide_id_from_path,
)
from fivewsi.slides.tiling import Tiling, tile_slide
from fivewsi.utils import dist
from fivewsi.utils.atomic import sweep_tmp_files, write_json_atomic, write_text_atomic
from fivewsi.utils.logs import make_progress
from fivewsi.utils.outputs import (
    NoSpaceError,
    OutputError,
    check_free_space,
    check_output_folder,
    csv_cell,
)

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


class DuplicateSlideError(FeatureStageError):
    """Two inputs of one batch would give the same slide id (and so one feature file)."""


#: The folders preprocess writes under ``OUT``.
OUTPUT_FOLDERS = ("features", "qc", "status")
#: Bytes read from each end of a slide for its content fingerprint.
FINGERPRINT_BYTES = 1 << 20
#: Attributes of the ``features`` dataset that name the slide a feature file was made from.
SOURCE_ATTRS = ("source_path", "source_size", "source_mtime_ns", "source_fingerprint")
#: Free space kept beyond a bag's arrays (HDF5 metadata, attributes, status and manifest files).
SPACE_MARGIN = 64 << 10


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
    spec = get_spec(config.encoder)  # an unknown encoder fails before anything is written
    if (warning := magnification_warning(spec, config.target_mpp, config.patch_size)) is not None:
        log.warning("%s", warning)
    check_output_folder(out)  # a read-only or misnamed --out fails before any work
    mpp_table = None if config.slide_mpp_csv is None else read_slide_mpp_table(
        config.slide_mpp_csv)
    # never the command's own output (qc/*.jpg), even with --out equal to an input folder
    slides = find_slides(inputs, exclude=[out / sub for sub in OUTPUT_FOLDERS])
    _check_ids(slides)
    rank = dist.process_rank()
    grouped = dist.init_process_group(rank)
    for sub in OUTPUT_FOLDERS:
        (out / sub).mkdir(parents=True, exist_ok=True)
        sweep_tmp_files(out / sub)
    _check_settings(out, config, rank)
    mine = _shard(slides, rank)
    log.info("rank %d/%d: %d of %d slides", rank.rank, rank.world_size, len(mine), len(slides))
    records = _run_shard(mine, out, config, rank, progress, mpp_table)
    no_space = next((r for r in records if r.error.startswith(NO_SPACE)), None)
    dist.barrier()
    if rank.is_leader and (grouped or rank.world_size == 1):
        records = _merged_records(out, slides, records)
        _write_manifest(out / "manifest.csv", records)
    elif not grouped and rank.world_size > 1:
        _write_manifest(out / f"manifest.rank{rank.rank}-of-{rank.world_size}.csv", records)
    # Nobody exits before the manifest is written: a launcher stops all ranks when one fails.
    dist.barrier()
    dist.destroy_process_group()
    if no_space is not None:  # the batch stopped: nothing more can be written there
        stopped = sum(r.error.startswith(NOT_PROCESSED) for r in records)
        raise NoSpaceError(
            f"{no_space.error} (slide {no_space.slide_id}); stopped with {stopped} slide(s) not "
            f"processed; free space in {out} and rerun (finished slides are kept)"
        )
    # In a group the leader speaks for everyone; the others exit cleanly.
    speaks = rank.is_leader or not grouped
    return PreprocessResult(out, records, time.perf_counter() - started, speaks)


#: Relative disagreement between a recipe's mpp and ``--mpp`` beyond which preprocess warns.
MPP_TOLERANCE = 0.25


def magnification_warning(
    spec: EncoderSpec, target_mpp: float, patch_size: int | None = None
) -> str | None:
    """A warning when the resolution the encoder sees disagrees with the one it was trained at.

    Only recipe encoders know the resolution they were trained at (``spec.recipe.mpp``). When
    the recipe also gives the tile side its authors feed it (``recipe.tile_size``) and
    ``patch_size`` is given, the comparison is at the network's input: the recipe resizes a
    patch's shorter side to ``preprocess.resize``, so a ``patch_size`` px patch at
    ``target_mpp`` reaches the network at ``target_mpp * patch_size / resize`` µm/px, against
    ``mpp * tile_size / resize`` for the authors' tiles (256 px patches for a model published
    on 224 px tiles: 14% coarser; 512 px: 2.3x). Otherwise ``target_mpp`` is compared with
    ``mpp``. The warning is given when the larger of the two exceeds the smaller by more than
    :data:`MPP_TOLERANCE`, so 0.5 µm/px (20x) against a 40x model (0.25) warns, 0.5 against
    0.46 does not.

    Example:
        >>> from fivewsi.features.registry import get_spec
        >>> magnification_warning(get_spec("he-handcrafted"), 2.0) is None
        True
    """
    recipe = spec.recipe
    if recipe is None or recipe.mpp is None:
        return None
    resize = recipe.preprocess.resize
    if recipe.tile_size is not None and patch_size is not None and resize is not None:
        seen, trained = target_mpp * patch_size / resize, recipe.mpp * recipe.tile_size / resize
        low, high = sorted((seen, trained))
        if high <= low * (1 + MPP_TOLERANCE):
            return None
        return (
            f"encoder {spec.name} was trained on {recipe.tile_size} px tiles at {recipe.mpp:g} "
            f"µm/px ({recipe.magnification:g}x), which its {resize} px input sees at "
            f"{trained:.3g} µm/px; {patch_size} px patches at --mpp {target_mpp:g} reach it at "
            f"{seen:.3g} µm/px and its features may suffer: consider --mpp {recipe.mpp:g} "
            f"--patch-size {recipe.tile_size}"
        )
    low, high = sorted((float(recipe.mpp), float(target_mpp)))
    if high <= low * (1 + MPP_TOLERANCE):
        return None
    return (
        f"encoder {spec.name} was trained at {recipe.mpp:g} µm/px ({recipe.magnification:g}x) "
        f"but patches are cut at --mpp {target_mpp:g} µm/px ({_magnification(target_mpp):g}x); "
        f"its features may suffer: consider --mpp {recipe.mpp:g}"
    )


def _check_ids(slides: list[Path]) -> None:
    """Refuse, before any work, ids that cannot name a file and two inputs with one id."""
    seen: dict[str, Path] = {}
    for path in slides:
        slide_id = check_slide_id(slide_id_from_path(path), path)
        if slide_id in seen:
            raise DuplicateSlideError(
                f"two inputs give the slide id {slide_id!r}: {seen[slide_id]} and {path}; "
                "rename one or preprocess them into different --out folders"
            )
        seen[slide_id] = path


def _check_settings(out: Path, config: PreprocessConfig, rank: dist.ProcessRank) -> None:
    """Create ``preprocess.json`` exclusively, or compare with the one already there.

    Every rank, and every concurrent run into one folder, does the same: exactly one creation
    wins (``os.link`` of a complete temporary file never replaces an existing file), and all
    others compare their settings with the winner's, so two settings are never both accepted.
    """
    path = out / "preprocess.json"
    wanted = json.loads(json.dumps(config.feature_settings(), default=str))
    if not path.exists():
        _create_exclusive(path, {**wanted, "fivewsi_version": __version__})
    found = _read_settings(path)
    diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: folder has {a!r}, asked {b!r}" for k, (a, b) in diff.items())
        raise SettingsMismatchError(
            f"{out} holds features made with other settings ({details}); "
            "use another --out folder or the folder's settings"
        )


def _create_exclusive(path: Path, data: dict[str, object]) -> None:
    """Write ``data`` as JSON to ``path`` unless it exists (then leave it alone)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(tmp, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic, complete, and never over an existing file
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: exclusive creation instead
            try:
                with open(path, "x", encoding="utf-8") as handle:
                    handle.write(text)
            except FileExistsError:
                pass
    except OSError as exc:  # a full disk, most likely: one line, exit 2
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _read_settings(path: Path) -> dict[str, object]:
    for _ in range(50):  # a concurrent run may be writing it (file systems without links)
        try:
            return json.loads(path.read_text())
        except ValueError:
            time.sleep(0.05)
    raise SettingsMismatchError(f"{path} is not valid JSON; remove it or use another --out")


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
    slides: list[Path],
    out: Path,
    config: PreprocessConfig,
    rank: dist.ProcessRank,
    progress: bool,
    mpp_table: SlideMppTable | None = None,
) -> list[SlideRecord]:
    device = dist.pick_device(config.device, rank)
    encoder: PatchEncoder | None = None
    records: list[SlideRecord] = []
    with make_progress(progress) as bars:
        slide_bar = bars.add_task("slides", total=len(slides), rate="")
        for index, path in enumerate(slides):
            slide_id = slide_id_from_path(path)
            if (record := _finished_record(out, path)) is None:
                if encoder is None:  # built lazily: a rerun with nothing to do loads no model
                    encoder = create_encoder(config.encoder, config.weights).to(device)
                    encoder = prepare_encoder(encoder, device)
                slide_mpp = (mpp_table.lookup(path) if mpp_table else None) or config.slide_mpp
                record = _process_slide(path, out, config, encoder, device, bars, slide_mpp)
                record.rank = rank.rank
                try:
                    write_json_atomic(out / "status" / f"{slide_id}.json", asdict(record))
                except OSError as exc:
                    if not _is_no_space(exc):
                        raise
                    record = _failed(path, _no_space_message(exc), seconds=record.seconds)
            records.append(record)
            bars.advance(slide_bar)
            if record.error.startswith(NO_SPACE):  # a full disk: no point going on
                log.error("%s: %s; stopping the batch", path.name, record.error)
                records += [
                    _failed(rest, f"{NOT_PROCESSED}: the batch stopped, no space left")
                    for rest in slides[index + 1:]
                ]
                break
    return records


#: How the error of a slide that met a full disk starts (and of those it left undone).
NO_SPACE = "no space left"
NOT_PROCESSED = "not processed"


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, NoSpaceError):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # h5py turns a failed write into OSError / RuntimeError with HDF5's text, errno lost
    text = str(exc).lower()
    return isinstance(exc, (OSError, RuntimeError)) and (
        "no space left" in text or "disk quota" in text
    )


def _no_space_message(exc: BaseException) -> str:
    if isinstance(exc, NoSpaceError):
        return str(exc)
    where = getattr(exc, "filename", None)
    return f"{NO_SPACE} on the device" + (f" (writing {where})" if where else "")


def _failed(path: Path, error: str, **facts: object) -> SlideRecord:
    return SlideRecord(slide_id_from_path(path), str(path), "failed", error, **facts)  # type: ignore[arg-type]


def _finished_record(out: Path, path: Path) -> SlideRecord | None:
    """The record of a slide whose feature file is complete and was made from this very file
    (same size, modification time and fingerprint), or None if it must be (re)done."""
    slide_id = slide_id_from_path(path)
    h5 = out / "features" / f"{slide_id}.h5"
    if not h5.exists():
        return None
    try:
        attrs = read_bag_attrs(h5)
    except (OSError, KeyError, ValueError):
        log.warning("%s: unreadable feature file, redoing it", slide_id)
        return None
    if attrs.get("n_patches", 0) <= 0:
        log.warning("%s: feature file has no features, redoing it", slide_id)
        return None
    if attrs.get("source_fingerprint") is None:
        log.warning("%s: feature file does not record its source slide, redoing it", slide_id)
        return None
    try:
        identity = source_identity(path)
    except OSError:
        return None  # the slide itself fails clearly when it is processed
    same = all(
        str(attrs.get(key)) == str(identity[key])
        for key in ("source_size", "source_mtime_ns", "source_fingerprint")
    )
    if not same:
        log.warning("%s: the slide is not the file its features were made from (%s), "
                    "redoing it", slide_id, attrs.get("source_path"))
        return None
    record = _read_record(out, path)
    if record.status != "done":  # file finished but killed before its status was written
        record = SlideRecord(slide_id, str(path), "done", n_patches=attrs["n_patches"])
    record.path = str(path)  # the same file may have been moved
    record.reused = True
    return record


def source_identity(path: str | os.PathLike[str]) -> dict[str, object]:
    """What a feature file records of its slide: path, size, modification time and a cheap
    content fingerprint (SHA-256 of the size and the first and last MB).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.tif"
        >>> _ = p.write_bytes(b"slide")
        >>> sorted(source_identity(p)) == sorted(SOURCE_ATTRS)
        True
    """
    path = Path(path)
    stat = path.stat()
    digest = hashlib.sha256(str(stat.st_size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(stat.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {
        "source_path": str(path),
        "source_size": int(stat.st_size),
        "source_mtime_ns": str(stat.st_mtime_ns),  # a string: HDF5 has no unbounded integers
        "source_fingerprint": digest.hexdigest(),
    }


def _merged_records(out: Path, slides: list[Path], own: list[SlideRecord]) -> list[SlideRecord]:
    """Records of every slide of the batch: this rank's own, the others' read from ``status/``."""
    mine = {record.path: record for record in own}
    return [mine[str(path)] if str(path) in mine else _read_record(out, path) for path in slides]


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
    slide_mpp: float | None = None,
) -> SlideRecord:
    """Tile and embed one slide; ``slide_mpp`` is its level-0 mpp where metadata lacks it."""
    started = time.perf_counter()
    facts: dict[str, object] = {}
    tiling: Tiling | None = None
    try:
        identity = source_identity(path)  # before reading: a change meanwhile means a redo
        with open_slide(path, slide_mpp) as slide:
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
        features = _embed(path, tiling, config, encoder, device, bars, slide_mpp)
        _save(out, path, tiling, features, encoder, config, info, identity)
    except Exception as exc:  # one bad slide must not stop the batch
        no_space = _is_no_space(exc)
        if config.qc and tiling is not None and not no_space:
            _save_qc(out, slide_id_from_path(path), tiling)
        log.error("%s: %s", path.name, exc)
        log.debug("traceback", exc_info=True)
        message = _no_space_message(exc) if no_space else _message(exc)
        return _failed(path, message, seconds=time.perf_counter() - started, **facts)
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
    slide_mpp: float | None = None,
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
            encoder=encoder, slide_mpp=slide_mpp, batch_size=config.batch_size,
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
    identity: dict[str, object],
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
        **identity,
    }
    h5 = out / "features" / f"{slide_id_from_path(path)}.h5"
    # A full disk is found before HDF5 writes (libhdf5 may crash on a half-written file);
    # a write that fails anyway leaves no file behind (save_bag writes a temporary sibling).
    needed = features.size * 4 + tiling.coords.size * 8 + SPACE_MARGIN
    check_free_space(h5.parent, needed, what=f"features of {h5.stem}")
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


#: Manifest columns holding text (ids, paths, errors): written through :func:`csv_cell`.
_TEXT_COLUMNS = ("slide_id", "path", "status", "error", "backend", "mpp_source")


def _write_manifest(path: Path, records: list[SlideRecord]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = asdict(record)
        row["seconds"] = f"{record.seconds:.3f}"
        row["slide_mpp"] = "" if record.slide_mpp is None else f"{record.slide_mpp:.4f}"
        row.update({key: csv_cell(row[key]) for key in _TEXT_COLUMNS})
        writer.writerow(row)
    try:
        write_text_atomic(path, buffer.getvalue())
    except OSError as exc:
        if not _is_no_space(exc):
            raise
        log.error("manifest not written (%s); status/ holds each slide's record", exc)
