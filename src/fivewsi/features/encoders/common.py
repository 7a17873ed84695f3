"""Shared plumbing for neural patch encoders: preprocessing, weight files, strict loading.

:class:`TorchImageEncoder` turns any ``nn.Module`` that maps normalised ``[B, 3, H, W]`` float
images to ``[B, D]`` features into a :class:`~fivewsi.features.registry.PatchEncoder`. The helpers
below read state dicts without executing pickled code and load them strictly, so a wrong file
fails loudly instead of leaving layers randomly initialised.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> enc = TorchImageEncoder(model, name="toy", dim=3, input_size=32)
    >>> enc(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fivewsi.errors import FeatureStageError
from fivewsi.features.recipe import EncoderRecipe, Preprocess
from fivewsi.features.registry import PatchEncoder

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: File names looked for, in order, when ``--weights`` is a folder.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")

MODELS_EXTRA_HINT = (
    'install the model extra with `pip install "fivewsi[models]"`; torchvision must be the build '
    "that matches your installed torch (same CUDA/CPU variant and release pairing), otherwise "
    "timm and open_clip fail to import"
)


class WeightsMismatchError(FeatureStageError, RuntimeError):
    """A checkpoint does not fit its model (missing, unexpected or resized keys)."""


def import_timm() -> Any:
    """Import timm, turning any import failure into an actionable :class:`ImportError`.

    A torchvision that does not match torch fails with assorted errors (``RuntimeError`` about
    missing operators, ``AttributeError``...), hence the broad ``except``.
    """
    try:
        import timm
    except Exception as exc:
        raise ImportError(f"this encoder needs timm ({exc}); {MODELS_EXTRA_HINT}") from exc
    return timm


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size[-2:])
    return (h, w)


_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling


def recipe_pixels(patches: torch.Tensor, transform: Preprocess) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → float ``[B, 3, h, w]`` in ``[0, 1]``, resized and cropped as the
    recipe's torchvision transform does on a PIL image (normalisation not applied).

    ``Resize(int)`` scales the shorter side to ``resize`` (the longer one truncated, as
    torchvision computes it) with PIL's filter, antialiasing included; ``CenterCrop`` takes the
    box torchvision takes (offsets rounded half to even).

    Example:
        >>> from fivewsi.features.recipe import EncoderRecipe, Preprocess
        >>> t = Preprocess(resize=4, crop=2, mean=(0, 0, 0), std=(1, 1, 1))
        >>> recipe_pixels(torch.zeros(1, 8, 16, 3, dtype=torch.uint8), t).shape
        torch.Size([1, 3, 2, 2])
    """
    import numpy as np
    from PIL import Image

    images = patches.cpu().numpy()
    out = []
    for array in images:
        image = Image.fromarray(np.ascontiguousarray(array))
        if transform.resize is not None:
            width, height = image.size
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = transform.resize, int(transform.resize * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
            if size != image.size:
                image = image.resize(size, _PIL_FILTERS[transform.interpolation])
        if transform.crop is not None:
            width, height = image.size
            side = transform.crop
            if side > width or side > height:
                raise ValueError(f"patch {width}×{height} is smaller than the crop {side}")
            top, left = round((height - side) / 2.0), round((width - side) / 2.0)
            image = image.crop((left, top, left + side, top + side))
        out.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float().div_(255.0)


def _autocast_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class TorchImageEncoder(PatchEncoder):
    """Wrap ``model`` (normalised float ``[B, 3, H, W]`` → ``[B, D]``) as a patch encoder.

    Args:
        model: the network; its output is flattened to ``[B, D]``.
        name: encoder name stored with the features.
        dim: feature size ``D``.
        input_size: side (or ``(H, W)``) the model expects; patches of another size are resized
            with antialiased bilinear interpolation (no cropping: all tissue is kept).
        mean, std: per-channel normalisation applied to pixels scaled to ``[0, 1]``.
        amp: on CUDA run under ``torch.autocast`` (bf16 where supported, else fp16).
        source: where the weights came from, recorded by :meth:`describe`.
        transform: a recipe's published transform; when given it replaces ``input_size``'s
            resize (PIL resize and centre crop, :func:`recipe_pixels`) and ``mean``/``std``.

    Example:
        >>> import torch
        >>> enc = TorchImageEncoder(torch.nn.Flatten(), name="flat", dim=12, input_size=2)
        >>> enc(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)).shape
        torch.Size([1, 12])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        dim: int,
        input_size: int | Sequence[int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        amp: bool = True,
        source: str = "",
        transform: Preprocess | None = None,
    ) -> None:
        super().__init__()
        self.transform = transform
        if transform is not None:
            mean, std = transform.mean, transform.std
            input_size = transform.input_size or input_size
        self.model = model
        self.name = name
        self.dim = int(dim)
        self.input_size = _as_hw(input_size)
        self.amp = amp
        self.source = source
        #: Inputs in channels-last memory format (set by ``extract.prepare_encoder`` on CUDA).
        self.channels_last = False
        # Buffers follow .to(device) together with the model.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def device(self) -> torch.device:
        """Device of the wrapped model (where patches are moved before preprocessing)."""
        return self.mean.device

    def preprocess(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` → normalised float ``[B, 3, h, w]`` at the model's input size."""
        if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != torch.uint8:
            raise ValueError(
                f"{self.name}: expected uint8 patches [B, H, W, 3], "
                f"got {patches.dtype} {tuple(patches.shape)}"
            )
        if self.transform is not None:
            x = recipe_pixels(patches, self.transform).to(self.device, non_blocking=True)
        else:
            # Move uint8 first: four times less to copy than float32.
            x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            if tuple(x.shape[-2:]) != self.input_size:
                x = F.interpolate(
                    x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True
                )
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Features ``[B, dim]`` (float32) for uint8 RGB patches ``[B, H, W, 3]``."""
        if patches.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        x = self.preprocess(patches)
        if self.amp and x.device.type == "cuda":
            with torch.autocast("cuda", dtype=_autocast_dtype()):
                out = self.model(x)
        else:
            out = self.model(x)
        return out.reshape(out.shape[0], -1).float()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["encoder_input_size"] = list(self.input_size)
        if self.source:
            info["encoder_weights"] = self.source
        return info


def recipe_encoder(
    model: nn.Module,
    recipe: EncoderRecipe,
    *,
    dim: int,
    source: str,
    amp: bool = True,
    input_size: int | Sequence[int] = 224,
) -> TorchImageEncoder:
    """``model`` as ``recipe``'s encoder: its name, and its published transform (the recipe's
    input size wins over ``input_size``)."""
    return TorchImageEncoder(
        model, name=recipe.name, dim=dim, input_size=recipe.preprocess.input_size or input_size,
        transform=recipe.preprocess, amp=amp, source=source,
    )


def find_weights_file(path: Path, names: Iterable[str] = WEIGHT_FILE_NAMES) -> Path:
    """``path`` itself if it is a file, else the first of ``names`` inside the folder ``path``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); (folder / "pytorch_model.bin").touch()
        >>> find_weights_file(folder).name
        'pytorch_model.bin'
    """
    path = Path(path)
    if path.is_file():
        return path
    names = tuple(names)
    for name in names:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no weights file in {path}: expected one of {', '.join(names)}")


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``).

    Nested checkpoints (``{"model": ...}`` / ``{"state_dict": ...}``) are unwrapped and a
    ``module.`` prefix (DataParallel / DDP) is stripped.

    Example:
        >>> import tempfile, torch
        >>> file = Path(tempfile.mkdtemp()) / "w.pth"
        >>> torch.save({"model": {"module.w": torch.ones(1)}}, file)
        >>> list(load_state_dict_file(file))
        ['w']
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles with code or foreign objects refuse weights_only
            raise WeightsMismatchError(
                f"could not read {path} as a plain state dict (torch.load with weights_only=True: "
                f"{exc}); re-save it with torch.save(model.state_dict(), ...) or as .safetensors"
            ) from exc
    return _unwrap_state_dict(state, path)


def _unwrap_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "module"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsMismatchError(f"{path} holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsMismatchError(f"{path} holds no tensors (keys: {_few(state)})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _few(keys: Iterable[Any], n: int = 5) -> str:
    keys = [str(k) for k in keys]
    more = f" … (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    ignore_unexpected: Sequence[str] = (),
    ignore_missing: Sequence[str] = (),
    what: str = "weights",
) -> None:
    r"""Load ``state_dict`` into ``model``, failing on any key or shape mismatch.

    Args:
        ignore_unexpected: regexes (``re.match``) of checkpoint keys the model does not use and
            that are known to be harmless, e.g. ``r"head\."`` for a classifier.
        ignore_missing: regexes of model keys allowed to keep their initial values.
        what: names the checkpoint in error messages.

    Example:
        >>> lin = torch.nn.Linear(2, 2)
        >>> state = {**lin.state_dict(), "head.w": torch.ones(1)}
        >>> load_strict(lin, state, ignore_unexpected=[r"head\."])
    """
    own = model.state_dict()
    unexpected = [k for k in state_dict if k not in own and not _matches(k, ignore_unexpected)]
    missing = [k for k in own if k not in state_dict and not _matches(k, ignore_missing)]
    resized = [
        f"{k} {tuple(state_dict[k].shape)}≠{tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if resized:
        problems.append(f"{len(resized)} shape mismatches ({_few(resized, 3)})")
    if problems:
        raise WeightsMismatchError(
            f"{what} do not match the {type(model).__name__} architecture: " + "; ".join(problems)
        )
    usable = {k: v for k, v in state_dict.items() if k in own}
    model.load_state_dict(usable, strict=False)
    logger.debug("loaded %d tensors from %s", len(usable), what)


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(re.match(p, key) for p in patterns)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time.

    ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else huggingface_hub's default; reading the variables
    now (not at import) lets tests and callers redirect the cache.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_hf_file(repo_ids: str | Sequence[str], filenames: Sequence[str]) -> Path | None:
    """First of ``filenames`` found in the local HF cache for any of ``repo_ids``; never networks.

    Several repo ids allow for spellings that differ only in case (the hub resolves
    ``MahmoodLab/uni`` and ``MahmoodLab/UNI`` alike, but the cache folder keeps what was typed).

    Example:
        >>> cached_hf_file("no-such-org/no-such-model", ["config.json"]) is None
        True
    """
    from huggingface_hub import try_to_load_from_cache

    repo_ids = [repo_ids] if isinstance(repo_ids, str) else list(repo_ids)
    cache = hf_cache_dir()
    for repo_id in repo_ids:
        for filename in filenames:
            hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
            if isinstance(hit, str):  # otherwise None or the "known missing" sentinel
                return Path(hit)
    return None
