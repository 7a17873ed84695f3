"""Hugging Face ``transformers`` patch encoders: the ``transformers`` recipe builder (Phikon,
Phikon-v2, PLIP) and any local vision model (``hf:``).

Models load from a local folder (``--weights DIR`` with ``config.json`` and the weights) or from
a repo already in the Hugging Face cache; always with ``local_files_only=True``, so nothing is
downloaded. Weights that leave layers uninitialised (missing keys) or do not fit (resized
tensors) raise :class:`~fivewsi.features.encoders.common.WeightsMismatchError` instead of the
usual transformers warning.

Example:
    >>> from fivewsi.features.registry import list_encoders
    >>> list_encoders()["plip"].dim
    512
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fivewsi.errors import FeatureStageError
from fivewsi.features.encoders.common import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchImageEncoder,
    WeightsMismatchError,
    cached_hf_file,
    recipe_encoder,
)
from fivewsi.features.recipe import EncoderRecipe, RecipeError, register_builder
from fivewsi.features.registry import register_encoder

logger = logging.getLogger(__name__)

_POOLINGS = ("auto", "pooler", "cls", "mean", "image_features")


class MissingHFModelError(FeatureStageError, FileNotFoundError):
    """Neither a local model folder nor a cached copy of the repo (nothing is downloaded)."""


def resolve_model_dir(source: str | Path, encoder: str) -> Path:
    """A local folder holding ``config.json``: ``source`` itself or its HF-cache snapshot.

    Example:
        >>> resolve_model_dir("no-such-org/no-such-model", "hf")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fivewsi.features.encoders.hf_models.MissingHFModelError: ...
    """
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingHFModelError(f"{path} has no config.json: not a Hugging Face model folder")
        return path
    cached = cached_hf_file(str(source), ["config.json"]) if _looks_like_repo_id(source) else None
    if cached is not None:
        return cached.parent  # the snapshot folder also holds the (symlinked) weights
    raise MissingHFModelError(
        f"no local model for encoder {encoder!r} from {str(source)!r}: pass --weights DIR (a "
        "folder with config.json and model.safetensors or pytorch_model.bin, e.g. from "
        "`hf download <repo> --local-dir DIR`) or download the repo into the Hugging Face cache "
        "beforehand; fivewsi never downloads weights"
    )


def _looks_like_repo_id(source: str | Path) -> bool:
    text = str(source)
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _load_pretrained(model_class: Any, folder: Path, **kwargs: Any) -> nn.Module:
    """``from_pretrained`` (local only, fp32) that fails on missing or resized weights.

    Missing ``pooler`` weights are tolerated (the pooler is then not used, see
    :func:`_pick_pooling`); unexpected keys are logged, since checkpoints often carry heads or a
    text tower the image encoder does not need.
    """
    try:
        with _quiet_transformers():
            model, info = model_class.from_pretrained(
                folder,
                local_files_only=True,
                output_loading_info=True,
                dtype=torch.float32,
                # Report resized tensors ourselves (transformers' own report is silenced).
                ignore_mismatched_sizes=True,
                **kwargs,
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsMismatchError(f"could not load a model from {folder}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", ()) if ".pooler." not in f".{k}"]
    resized = [_mismatch_text(m) for m in info.get("mismatched_keys", ())]
    if missing or resized:
        parts = [f"{len(missing)} missing keys ({_few(missing)})"] if missing else []
        parts += [f"{len(resized)} shape mismatches ({_few(resized)})"] if resized else []
        raise WeightsMismatchError(
            f"weights in {folder} do not match {type(model).__name__}: " + "; ".join(parts)
        )
    if info.get("unexpected_keys"):
        logger.info("%s: unused checkpoint keys: %s", folder, _few(info["unexpected_keys"]))
    model.fivewsi_pooler_loaded = not any(".pooler." in f".{k}" for k in info["missing_keys"])
    return model


def _mismatch_text(item: Any) -> str:
    """``key ckpt_shape≠model_shape`` from a transformers mismatched-keys entry."""
    if isinstance(item, (tuple, list)) and len(item) == 3:
        key, ckpt, own = item
        return f"{key} {tuple(ckpt)}≠{tuple(own)}"
    return str(item)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own load report (we raise or log the part that matters)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _few(keys: Sequence[Any], n: int = 5) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n} more)" if len(keys) > n else "")


# ---------------------------------------------------------------------------------------------
# Preprocessing facts from the model folder


def _preprocessor_config(folder: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` as a dict (empty if absent).

    Read as JSON rather than through ``AutoImageProcessor``: the "fast" processors of recent
    transformers need torchvision, which a CPU-only install may lack.
    """
    file = folder / "preprocessor_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _side(size: Any) -> tuple[int, int] | None:
    """``(H, W)`` from a processor ``size``/``crop_size`` entry (int or dict), if it says."""
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        edge = size.get("shortest_edge") or size.get("longest_edge")
        return (int(edge), int(edge)) if edge else None  # patches are square
    return None


def _config_image_size(config: Any) -> int | None:
    for cfg in (config, getattr(config, "vision_config", None)):
        size = getattr(cfg, "image_size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (list, tuple)):
            return int(size[-1])
    return None


def input_spec(
    folder: Path, config: Any, default_mean: Sequence[float], default_std: Sequence[float]
) -> tuple[tuple[int, int], Sequence[float], Sequence[float]]:
    """Input size, mean and std: processor config first, then the model config, then defaults.

    The model sees the whole patch resized to the crop size (the processor's centre crop is not
    reproduced: cropping would drop tissue at the patch border).
    """
    proc = _preprocessor_config(folder)
    size = (_side(proc.get("crop_size")) if proc.get("do_center_crop", True) else None) or _side(
        proc.get("size")
    )
    if size is None:
        side = _config_image_size(config) or 224
        size = (side, side)
        logger.info("%s: no processor size, using %s px from the model config", folder, side)
    if proc.get("do_normalize", True) is False:
        return size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = proc.get("image_mean") or default_mean
    std = proc.get("image_std") or default_std
    return size, _triple(mean), _triple(std)


def _triple(values: Sequence[float] | float) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    a, b, c = (float(v) for v in values)
    return (a, b, c)


# ---------------------------------------------------------------------------------------------
# Adapters: normalised pixels → [B, D]


class HFImageFeatures(nn.Module):
    """Run a transformers vision model on ``pixel_values`` and pool its output to ``[B, D]``.

    Poolings: ``image_features`` (``get_image_features``, e.g. a full CLIP model), ``pooler``
    (``pooler_output``), ``cls`` (first token of ``last_hidden_state``), ``mean`` (mean of the
    other tokens; spatial mean for convolutional ``[B, C, H, W]`` outputs).
    """

    def __init__(self, model: nn.Module, pooling: str, interpolate_pos: bool = False) -> None:
        super().__init__()
        if pooling not in _POOLINGS[1:]:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling
        # Resample position embeddings when the processor size differs from the trained one.
        self.kwargs = {"interpolate_pos_encoding": True} if interpolate_pos else {}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.pooling == "image_features":
            out = self.model.get_image_features(pixel_values=pixel_values, **self.kwargs)
            # transformers 5 returns an output object whose pooler_output is the projection.
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = self.model(pixel_values=pixel_values, **self.kwargs)
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:  # convolutional backbone: [B, C, H, W]
            return hidden.mean(dim=(2, 3))
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(dim=1)


class CLIPImageEmbeds(nn.Module):
    """``CLIPVisionModelWithProjection`` → projected ``image_embeds`` (not L2-normalised)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


def _needs_interpolation(model: nn.Module, side: int) -> bool:
    """Whether ``side`` differs from the trained size and the model can resample positions."""
    trained = _config_image_size(model.config)
    entry = model.get_image_features if hasattr(model, "get_image_features") else model.forward
    accepts = "interpolate_pos_encoding" in inspect.signature(entry).parameters
    return trained is not None and trained != side and accepts


def _probe_dim(module: nn.Module, size: tuple[int, int]) -> int:
    """Feature size from one forward pass on a blank image (configs name it inconsistently)."""
    with torch.no_grad():
        return int(module(torch.zeros(1, 3, *size)).reshape(1, -1).shape[1])


# ---------------------------------------------------------------------------------------------
# Registered encoders


#: ``architecture`` of a ``transformers`` recipe → (class to load, model types it accepts).
_RECIPE_CLASSES = {
    "ViTModel": ("ViTModel", ("vit",)),
    "AutoModel": ("AutoModel", ("dinov2", "vit")),
    # CLIP: only the vision tower and its projection are loaded (the text tower is unused).
    "CLIPModel": ("CLIPVisionModelWithProjection", ("clip", "clip_vision_model")),
}


@register_builder("transformers")
def build_transformers_encoder(
    recipe: EncoderRecipe, weights: Path | None = None, *, amp: bool = True
) -> TorchImageEncoder:
    """A ``transformers`` recipe's encoder from a model folder or the HF cache (local only).

    ``--weights`` is the folder as the hub ships it (``config.json`` + ``model.safetensors``
    or ``pytorch_model.bin``), or a weights file inside it; otherwise the first of the recipe's
    hub repos found in the Hugging Face cache. Embeddings: ``cls`` is the first token of
    ``last_hidden_state`` (after the final norm), ``pooled`` a CLIP model's projected image
    embedding (``get_image_features``, not L2-normalised).
    """
    import transformers

    class_name, model_types = _RECIPE_CLASSES[recipe.architecture]
    if weights is not None and Path(weights).is_file():
        weights = Path(weights).parent
    source = weights if weights is not None else _cached_repo(recipe)
    folder = resolve_model_dir(source, recipe.name)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type not in model_types:
        raise WeightsMismatchError(
            f"{folder} holds a {config.model_type!r} model; {recipe.title} is "
            f"{recipe.architecture} (model_type {model_types[0]})"
        )
    kwargs: dict[str, Any] = {}
    if recipe.architecture == "CLIPModel" and hasattr(config, "vision_config"):
        # A full CLIP config keeps projection_dim at the top level, not in vision_config.
        projection_dim = config.projection_dim
        config = config.vision_config
        config.projection_dim = projection_dim
    if recipe.architecture == "ViTModel":
        kwargs["add_pooling_layer"] = False  # the class token is used, not the pooler
    model = _load_pretrained(getattr(transformers, class_name), folder, config=config, **kwargs)
    if recipe.embedding == "pooled" and recipe.architecture == "CLIPModel":
        module: nn.Module = CLIPImageEmbeds(model)
        dim = model.config.projection_dim
    elif recipe.embedding == "cls":
        module = HFImageFeatures(model, "cls")
        dim = model.config.hidden_size
    else:
        raise RecipeError(f"recipe {recipe.name}: embedding {recipe.embedding!r} is not "
                          f"supported for {recipe.architecture}")
    module.eval()
    return recipe_encoder(
        module, recipe, dim=dim, amp=amp,
        source=str(weights) if weights is not None else f"hf-cache:{source}",
        input_size=_config_image_size(model.config) or 224,
    )


def _cached_repo(recipe: EncoderRecipe) -> str:
    """The first of the recipe's hub repos with a ``config.json`` in the HF cache, else the
    first repo (whose lookup then fails with the usual message)."""
    for repo in recipe.weights.hub:
        if cached_hf_file(repo, ["config.json"]) is not None:
            return repo
    return recipe.weights.hub[0]


def _pick_pooling(model: nn.Module, pooling: str) -> str:
    """Resolve ``auto``: image features for dual encoders, else a trained pooler, else CLS."""
    if pooling != "auto":
        return pooling
    if hasattr(model, "get_image_features"):
        return "image_features"
    # An untrained (randomly initialised) pooler would give noise, e.g. Phikon has none.
    has_pooler = getattr(model, "pooler", None) is not None
    return "pooler" if has_pooler and model.fivewsi_pooler_loaded else "cls"


@register_encoder(
    "hf:",
    dim=None,
    description=(
        "any Hugging Face vision model: hf:<local folder> or hf:<cached org/repo> (AutoModel, "
        "local files only); pooler_output if trained, else CLS token"
    ),
    needs_weights=True,
)
def hf_encoder(
    weights: Path | None = None,
    *,
    model_name: str,
    pooling: str = "auto",
    trust_remote_code: bool = False,
    amp: bool = True,
) -> TorchImageEncoder:
    """Generic ``AutoModel`` encoder; preprocessing from the folder's processor config.

    Args:
        weights: model folder; overrides ``model_name`` as the place to load from.
        model_name: local folder or repo id already in the Hugging Face cache.
        pooling: ``auto`` | ``pooler`` | ``cls`` | ``mean`` | ``image_features``.
        trust_remote_code: allow custom modelling code shipped in the (local) folder.

    Example:
        >>> enc = create_encoder("hf:owkin/phikon")  # cached ViT-B/16 → 768-d  # doctest: +SKIP
    """
    from transformers import AutoModel

    if pooling not in _POOLINGS:
        raise ValueError(f"pooling must be one of {_POOLINGS}, got {pooling!r}")
    source = weights if weights is not None else model_name
    if not str(source or ""):
        raise ValueError("name the model: hf:<folder> or hf:<org>/<repo>, or pass --weights DIR")
    folder = resolve_model_dir(source, f"hf:{model_name}")
    model = _load_pretrained(AutoModel, folder, trust_remote_code=trust_remote_code)
    clip_like = "clip" in model.config.model_type
    default_mean, default_std = (
        (CLIP_MEAN, CLIP_STD) if clip_like else (IMAGENET_MEAN, IMAGENET_STD)
    )
    size, mean, std = input_spec(folder, model.config, default_mean, default_std)
    model = HFImageFeatures(
        model, _pick_pooling(model, pooling), _needs_interpolation(model, size[0])
    )
    model.eval()
    return TorchImageEncoder(
        model,
        name=f"hf:{model_name}" if model_name else f"hf:{folder.name}",
        dim=_probe_dim(model, size),
        input_size=size,
        mean=mean,
        std=std,
        amp=amp,
        source=str(weights) if weights is not None else str(source),
    )
