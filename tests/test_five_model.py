"""FiveModel: prompts from questions, forward outputs, logit scale, registry, saved weights."""

from __future__ import annotations

import math

import pytest
import torch

from fivewsi.model.five import FiveModel
from fivewsi.model.outputs import BagBatch
from fivewsi.model.registry import create_model, get_model_spec
from fivewsi.model.text import TextEncoder

pytestmark = pytest.mark.usefixtures("offline")

QUESTIONS = ["What is the differentiation of the lesion?", "Is there vascular invasion?"]
IN_DIM, DIM = 16, 32


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def build(encoder: TextEncoder, **options: object) -> FiveModel:
    torch.manual_seed(0)
    options = {"dim": DIM, "heads": 4, "n_learnable_prompts": 3, "block_size": 32, **options}
    return FiveModel(IN_DIM, QUESTIONS, encoder, **options)


def batch(sizes: tuple[int, ...] = (50, 20)) -> BagBatch:
    gen = torch.Generator().manual_seed(3)
    return BagBatch.from_bags([torch.randn(n, IN_DIM, generator=gen) for n in sizes])


def test_registry_builds_five(encoder: TextEncoder) -> None:
    spec = get_model_spec("five")
    assert spec.text_aligned and spec.objectives == ("reports", "classes")
    assert "prompt" in spec.description
    model = create_model("five", in_dim=IN_DIM, questions=QUESTIONS, dim=DIM, heads=4)
    assert isinstance(model, FiveModel)
    assert model.n_prompts == 2 + 16
    assert model.aggregator.attention == "local"


def test_forward_shapes_and_normalisation(encoder: TextEncoder) -> None:
    model = build(encoder).eval()
    assert model.prompt_names == [*QUESTIONS, "learnable-1", "learnable-2", "learnable-3"]
    with torch.no_grad():
        out = model(batch())
        texts = model.encode_texts(["adenocarcinoma", "squamous cell carcinoma", "normal lung"])
        prompts = model.prompts()
    p = model.n_prompts
    assert out.embedding.shape == (2, DIM) and out.logits is None
    assert out.prompt_attention.shape == (2, p, 50)
    assert out.patch_attention.shape == (2, 50)
    assert out.prompt_tokens.shape == (2, p, DIM)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(out.patch_attention.sum(1), torch.ones(2))
    assert float(out.patch_attention[1, 20:].abs().sum()) == 0.0
    assert texts.shape == (3, DIM) and prompts.shape == (p, DIM)
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(prompts.norm(dim=1), torch.ones(p))
    # Question prompts are the questions' text embeddings.
    torch.testing.assert_close(prompts[:2], model.encode_texts(QUESTIONS))
    logits = model.similarity(out.embedding, texts)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, model.logit_scale * out.embedding @ texts.T)


def test_prompt_mask_drops_questions(encoder: TextEncoder) -> None:
    model = build(encoder).eval()
    keep = torch.tensor([False, True, True, True, True])
    with torch.no_grad():
        full, masked = model(batch()), model(batch(), keep)
    assert not torch.allclose(full.embedding, masked.embedding, atol=1e-4)
    torch.testing.assert_close(
        masked.patch_attention, full.prompt_attention[:, keep].mean(1), atol=1e-6, rtol=0
    )


def test_gradients_reach_projection_prompts_and_scale(encoder: TextEncoder) -> None:
    model = build(encoder).train()
    out = model(batch())
    texts = model.encode_texts(["adenocarcinoma", "squamous cell carcinoma"])
    loss = torch.nn.functional.cross_entropy(
        model.similarity(out.embedding, texts), torch.tensor([0, 1])
    )
    loss.backward()
    for name in ("text_projection.weight", "learnable_prompts", "log_logit_scale"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.aggregator.input[0].weight.grad is not None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(n.startswith("text_encoder.") for n in trainable)  # frozen base model


def test_logit_scale_learnable_or_fixed(encoder: TextEncoder) -> None:
    learnable = build(encoder)
    assert math.isclose(float(learnable.logit_scale.detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        learnable.log_logit_scale.fill_(math.log(1000.0))
    assert float(learnable.logit_scale.detach()) == pytest.approx(100.0)
    fixed = build(encoder, logit_scale=300.0)
    assert float(fixed.logit_scale) == pytest.approx(300.0)
    assert "log_logit_scale" not in dict(fixed.named_parameters())
    assert "log_logit_scale" in fixed.state_dict()


def test_full_attention_option(encoder: TextEncoder) -> None:
    local, full = build(encoder).eval(), build(encoder, attention="full").eval()
    full.load_state_dict(local.state_dict())
    with torch.no_grad():  # bags within one block: both modes agree
        small = batch((30, 12))
        torch.testing.assert_close(local(small).embedding, full(small).embedding, atol=1e-5, rtol=0)


def test_saved_state_dict_round_trip(encoder: TextEncoder) -> None:
    model = build(encoder).eval()
    state = model.saved_state_dict()
    assert not any(key.startswith("text_encoder.") for key in state)
    assert "learnable_prompts" in state and "text_projection.weight" in state
    other = build(encoder, logit_scale=None)
    torch.manual_seed(9)
    other.learnable_prompts.data.normal_()
    other.load_saved_state_dict(state)
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(batch()).embedding, model(batch()).embedding)
    with pytest.raises(ValueError, match="missing"):
        other.load_saved_state_dict(
            {k: v for k, v in state.items() if k != "aggregator.fuse.weight"}
        )


def test_saved_state_dict_keeps_lora_weights() -> None:
    model = build(TextEncoder(lora=True, lora_r=2))
    state = model.saved_state_dict()
    lora = [key for key in state if key.startswith("text_encoder.")]
    assert lora and all("lora_" in key for key in lora)
    out = model(batch((10,)))
    model.similarity(out.embedding, model.encode_texts(["x"])).sum().backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_options_are_declared_validated_and_defaulted() -> None:
    from pydantic import ValidationError

    options = get_model_spec("five").validate_options()
    assert options["dim"] == 512 and options["n_learnable_prompts"] == 16
    assert options["heads"] == 8 and options["attention"] == "local"
    assert options["text_encoder"] == "all-minilm-l6-v2" and options["lora"] is False
    with pytest.raises(ValidationError, match="dimm"):
        get_model_spec("five").validate_options({"dimm": 8})
    with pytest.raises(ValidationError, match="not divisible"):
        get_model_spec("five").validate_options({"dim": 30, "heads": 4})


def test_a_lazy_text_encoder_loads_only_for_new_texts(encoder: TextEncoder) -> None:
    eager = build(encoder).eval()
    torch.manual_seed(0)
    lazy = FiveModel(IN_DIM, QUESTIONS, TextEncoder(lazy=True), dim=DIM, heads=4,
                     n_learnable_prompts=3, block_size=32).eval()
    lazy.load_saved_state_dict(eager.saved_state_dict())
    assert not lazy.text_encoder.loaded
    lazy.remember_texts(QUESTIONS, eager.text_features(QUESTIONS))
    with torch.no_grad():
        torch.testing.assert_close(lazy(batch()).embedding, eager(batch()).embedding, atol=0,
                                   rtol=0)
        assert not lazy.text_encoder.loaded
        lazy.encode_texts(["a new text"])
    assert lazy.text_encoder.loaded
