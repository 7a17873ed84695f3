"""Every registered model tests itself (timm's tests/test_models.py pattern): built from its
declared default options, it runs forward on a small bag, trains one step, and comes back
through the run layer (record → model, saved weights, stored texts) with identical outputs.

A newly registered model is tested by being registered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fivewsi.model.interfaces import SlideModel, TextAlignedModel
from fivewsi.model.outputs import BagBatch
from fivewsi.model.registry import get_model_spec, list_models
from fivewsi.runs.classifier import build_model
from fivewsi.runs.record import ModelRecord
from fivewsi.runs.weights import (
    load_text_features,
    load_weights,
    save_text_features,
    save_weights,
)

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

MODELS = sorted(list_models())
IN_DIM, N_CLASSES = 12, 3
QUESTIONS = ["What is the differentiation of the lesion?", "Is there vascular invasion?"]
DESCRIPTIONS = ["adenocarcinoma", "squamous cell carcinoma", "small cell carcinoma"]


def _record(name: str) -> ModelRecord:
    spec = get_model_spec(name)
    return ModelRecord(
        architecture=name, in_dim=IN_DIM, n_classes=N_CLASSES,
        questions=QUESTIONS if spec.text_aligned else [], args=spec.validate_options(),
    )


def _batch() -> BagBatch:
    gen = torch.Generator().manual_seed(0)
    return BagBatch.from_bags([torch.randn(n, IN_DIM, generator=gen) for n in (40, 17)])


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest) -> tuple[str, SlideModel]:
    torch.manual_seed(0)
    return request.param, build_model(_record(request.param))


def test_registered_with_declared_options_and_objectives(built: tuple[str, SlideModel]) -> None:
    name, model = built
    spec = get_model_spec(name)
    assert isinstance(model, spec.model) and spec.description
    assert spec.objectives and set(spec.objectives) <= {"reports", "classes"}
    assert spec.options.model_config.get("extra") == "forbid"
    assert isinstance(model, TextAlignedModel) == spec.text_aligned
    if "reports" in spec.objectives:
        assert spec.text_aligned  # learning from reports means scoring texts


def test_forward_scores_the_classes(built: tuple[str, SlideModel]) -> None:
    _, model = built
    model.eval()
    batch = _batch()
    with torch.no_grad():
        output = model(batch)
        logits = model.class_logits(output, DESCRIPTIONS)
    assert logits.shape == (2, N_CLASSES) and torch.isfinite(logits).all()
    assert output.embedding.shape[0] == 2
    assert output.patch_attention is not None and output.patch_attention.shape == (2, 40)
    torch.testing.assert_close(output.patch_attention.sum(1), torch.ones(2))
    if output.prompt_attention is not None:
        assert output.prompt_attention.shape[1] == len(model.prompt_names)


def test_one_training_step_changes_the_weights(built: tuple[str, SlideModel]) -> None:
    _, model = built
    model.train()
    batch, labels = _batch(), torch.tensor([0, 2])
    before = {k: v.clone() for k, v in model.saved_state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    output = model(batch, labels=labels)
    loss = torch.nn.functional.cross_entropy(model.class_logits(output, DESCRIPTIONS), labels)
    if output.aux_loss is not None:
        loss = loss + output.aux_loss
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.saved_state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_saved_and_rebuilt_through_the_run_layer(
    built: tuple[str, SlideModel], tmp_path: Path
) -> None:
    name, model = built
    model.eval()
    save_weights(model, tmp_path / "model.safetensors")
    lazy = isinstance(model, TextAlignedModel)
    if lazy:
        assert save_text_features(model, [QUESTIONS, DESCRIPTIONS], tmp_path / "texts.st")
    torch.manual_seed(1)  # other initial weights: everything must come from the files
    again = build_model(_record(name), lazy=lazy)
    load_weights(again, tmp_path / "model.safetensors")
    if isinstance(again, TextAlignedModel):
        again.remember_texts(*load_text_features(tmp_path / "texts.st"))
    again.eval()
    batch = _batch()
    with torch.no_grad():
        expected = model.class_logits(model(batch), DESCRIPTIONS)
        found = again.class_logits(again(batch), DESCRIPTIONS)
    torch.testing.assert_close(found, expected, atol=0, rtol=0)
    if lazy:
        assert not again.text_encoder.loaded  # type: ignore[attr-defined]
