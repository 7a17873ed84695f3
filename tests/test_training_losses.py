"""Report contrastive loss (field dropping, dedup, negatives) and the class losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fivewsi.cohort.labels import LabelPart
from fivewsi.model.outputs import AggregatorOutput
from fivewsi.training.losses import (
    IGNORE,
    class_loss,
    content_key,
    contrastive_loss,
    eval_report_texts,
    prompt_mask_for,
    render_parts,
    report_step,
)
from fivewsi.training.module import accuracy_metrics, lr_factor

KEYS = ["grade", "stas", "vessels", "pleura"]
N_PROMPTS = len(KEYS) + 3


def _label(**fields: str) -> list[LabelPart]:
    return [
        LabelPart(key, text, unknown=text == "Unknown") for key, text in fields.items()
    ]


A = _label(grade="high grade", stas="stas present", vessels="Unknown", pleura="pleura clear")
B = _label(grade="low grade", stas="stas absent", vessels="vessels invaded", pleura="Unknown")
A_REORDERED = [A[3], A[0], A[1]]  # same known parts, another order, no Unknown part


def _parts_of(text: str) -> set[str]:
    return set(text.split("; ")) if text else set()


def test_identical_labels_share_one_target() -> None:
    step = report_step([A, B, A_REORDERED, A], KEYS, N_PROMPTS, np.random.default_rng(0),
                       max_drop_fraction=0.0)
    assert step.targets.tolist() == [0, 1, 0, 0]
    assert len(step.texts) == step.n_positive == 2
    assert _parts_of(step.texts[0]) == {"high grade", "stas present", "pleura clear"}
    assert step.prompt_mask.all()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dropped_fields_and_unknown_parts_never_reach_the_texts(seed: int) -> None:
    step = report_step([A, B], KEYS, N_PROMPTS, np.random.default_rng(seed),
                       max_drop_fraction=0.75)
    dropped_texts = {p.text for p in A + B if p.key in step.drop_keys}
    for text in step.texts:
        assert not _parts_of(text) & dropped_texts
        assert "Unknown" not in _parts_of(text)
    for i, key in enumerate(KEYS):
        assert bool(step.prompt_mask[i]) == (key not in step.drop_keys)
    assert step.prompt_mask[len(KEYS):].all()  # learnable prompts are always kept
    for label, target in zip([A, B], step.targets.tolist(), strict=True):
        kept = {p.text for p in label if not p.unknown and p.key not in step.drop_keys}
        if target == IGNORE:
            assert not kept
        else:
            assert _parts_of(step.texts[target]) == kept


def test_all_negatives_are_the_pool_with_the_same_fields_dropped() -> None:
    c = _label(grade="low grade", stas="stas present", vessels="vessels clear", pleura="Unknown")
    pool = [A, B, c, A_REORDERED]
    for seed in range(20):
        step = report_step([A], KEYS, N_PROMPTS, np.random.default_rng(seed), negatives="all",
                           pool=pool, max_drop_fraction=0.5)
        assert step.n_positive == 1 and step.targets.tolist() == [0]
        keys = [content_key([LabelPart("", t) for t in text.split("; ")]) for text in step.texts]
        assert len(set(keys)) == len(keys)  # one text per distinct content, A only once
        expected = {
            content_key([p for p in lab if not p.unknown and p.key not in step.drop_keys])
            for lab in pool
        }
        assert set(keys) == {k for k in expected if k}


def test_negatives_all_needs_a_pool_and_unknown_schemes_fail() -> None:
    with pytest.raises(ValueError, match="pool"):
        report_step([A], KEYS, N_PROMPTS, np.random.default_rng(0), negatives="all")
    with pytest.raises(ValueError, match="negatives"):
        report_step([A], KEYS, N_PROMPTS, np.random.default_rng(0), negatives="some")


def test_a_step_where_every_label_would_be_empty_is_redrawn() -> None:
    only_grade = [LabelPart("grade", "high grade")]
    for seed in range(30):
        step = report_step([only_grade], KEYS, N_PROMPTS, np.random.default_rng(seed),
                           max_drop_fraction=0.5)
        assert step.targets.tolist() == [0] and "grade" not in step.drop_keys


def test_eval_texts_are_canonical_and_deduplicated() -> None:
    texts, targets = eval_report_texts([A, B, A_REORDERED, _label(grade="Unknown")])
    assert texts == ["high grade; stas present; pleura clear", "low grade; stas absent; "
                     "vessels invaded"]
    assert targets.tolist() == [0, 1, 0, IGNORE]


def test_prompt_mask_keeps_learnable_prompts() -> None:
    assert prompt_mask_for(KEYS, 6, {"stas", "pleura"}).tolist() == [
        True, False, True, False, True, True
    ]


def test_contrastive_loss_ignores_empty_slides_and_keeps_the_graph() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [9.0, -9.0]], requires_grad=True)
    loss = contrastive_loss(logits, torch.tensor([0, 1, IGNORE]))
    expected = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]))
    assert torch.isclose(loss, expected)
    empty = contrastive_loss(logits, torch.tensor([IGNORE] * 3))
    empty.backward()
    assert float(empty.detach()) == 0.0 and logits.grad is not None


def test_class_loss_adds_the_models_auxiliary_loss() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    plain = class_loss(AggregatorOutput(torch.zeros(2, 3)), logits, targets)
    assert torch.isclose(plain, torch.nn.functional.cross_entropy(logits, targets))
    aux = AggregatorOutput(torch.zeros(2, 3), aux_loss=torch.tensor(0.5))
    assert torch.isclose(class_loss(aux, logits, targets), plain + 0.5)


def test_schedule_warms_up_then_decays_to_zero() -> None:
    values = [lr_factor(s, warmup=5, total=50) for s in range(51)]
    assert values[:6] == sorted(values[:6]) and max(values) == 1.0
    assert values[5:] == sorted(values[5:], reverse=True) and values[-1] == 0.0
    assert lr_factor(0, warmup=0, total=10) == 1.0


def test_balanced_accuracy_weights_classes_equally() -> None:
    target = torch.tensor([0, 0, 0, 0, 1])
    metrics = accuracy_metrics(torch.zeros(5, dtype=torch.long), target)
    assert float(metrics["val/acc"]) == pytest.approx(0.8)
    assert float(metrics["val/bacc"]) == pytest.approx(0.5)


C = _label(grade="low grade", stas="stas present", vessels="vessels clear", pleura="Unknown")
D = _label(grade="high grade", stas="stas absent", vessels="vessels clear", pleura="pleura clear")


def _canonical(text: str, pool: list[list[LabelPart]], drop: set[str]) -> bool:
    """Whether ``text`` is some pool label's kept parts in the label's own order."""
    return any(
        text == "; ".join(p.text for p in lab if not p.unknown and p.key not in drop)
        for lab in pool
    )


def test_positives_and_negatives_are_rendered_alike_by_default() -> None:
    # Rendering the positives shuffled and the negatives canonical is a shortcut the model
    # learns (issue 11): by default every text, positive or negative, is canonical.
    pool = [A, B, C, D]
    n_negatives = 0
    for seed in range(40):
        step = report_step([A, B], KEYS, N_PROMPTS, np.random.default_rng(seed),
                           negatives="all", pool=pool, max_drop_fraction=0.5)
        assert step.n_positive == 2
        n_negatives += len(step.texts) - step.n_positive
        for text in step.texts:
            assert _canonical(text, pool, step.drop_keys), (seed, text)
        # The same label renders to the same string as a positive and as a negative.
        as_negative = report_step([C], KEYS, N_PROMPTS, np.random.default_rng(seed),
                                  negatives="all", pool=pool, max_drop_fraction=0.5)
        assert as_negative.drop_keys == step.drop_keys
        assert set(as_negative.texts) == set(step.texts)
    assert n_negatives > 40


def test_shuffling_reaches_positives_and_negatives_alike() -> None:
    pool = [A, B, C, D]
    shuffled = {"positive": [], "negative": []}
    for seed in range(300):
        step = report_step([A], KEYS, N_PROMPTS, np.random.default_rng(seed), negatives="all",
                           pool=pool, max_drop_fraction=0.0, shuffle=True)
        for i, text in enumerate(step.texts):
            role = "positive" if i < step.n_positive else "negative"
            shuffled[role].append(not _canonical(text, pool, step.drop_keys))
    # Three kept parts each: 5 of the 6 orders are not the canonical one, for both roles.
    rates = {role: float(np.mean(flags)) for role, flags in shuffled.items()}
    assert all(0.7 < rate < 0.95 for rate in rates.values()), rates


def test_render_parts_is_the_one_rendering() -> None:
    parts = [LabelPart("a", " x "), LabelPart("b", "y"), LabelPart("c", "z")]
    assert render_parts(parts) == "x; y; z"
    orders = {render_parts(parts, np.random.default_rng(s), shuffle=True) for s in range(50)}
    assert len(orders) == 6 and all(set(o.split("; ")) == {"x", "y", "z"} for o in orders)
    with pytest.raises(ValueError, match="rng"):
        render_parts(parts, shuffle=True)


def test_weight_decay_spares_biases_norms_and_the_logit_scale(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from conftest import write_tiny_text_model
    from fivewsi.model.five import FiveModel
    from fivewsi.model.text import TextEncoder
    from fivewsi.training.module import TrainingModule

    encoder = TextEncoder(write_tiny_text_model(tmp_path / "tiny"), lora=True, lora_r=2)
    model = FiveModel(16, ["What grade?", "Is there STAS?"], encoder, dim=32, heads=4,
                      n_learnable_prompts=2)
    module = TrainingModule(model, stage="classes", hparams={}, lr=1e-3, text_lr_ratio=0.1,
                            weight_decay=0.01, class_texts=["a", "b"])
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what configure reads
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["group"]: g for g in optimizer.param_groups}
    assert sorted(groups) == ["decay", "no_decay", "text"]  # LoRA has no biases (bias="none")
    names = {g: set(group["names"]) for g, group in groups.items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set().union(*names.values()) == trainable
    assert sum(len(n) for n in names.values()) == len(trainable)
    norms = {
        f"{m}.{p}" for m, mod in model.named_modules()
        if isinstance(mod, torch.nn.LayerNorm) for p, _ in mod.named_parameters(recurse=False)
    } & trainable
    biases = {n for n in trainable if n.endswith("bias")}
    assert norms and biases and "log_logit_scale" in trainable
    assert names["no_decay"] == norms | biases | {"log_logit_scale"}
    assert {"learnable_prompts", "text_projection.weight"} <= names["decay"]
    assert all("lora_" in n for n in names["text"])
    assert (groups["decay"]["weight_decay"], groups["decay"]["lr"]) == (0.01, 1e-3)
    assert (groups["no_decay"]["weight_decay"], groups["no_decay"]["lr"]) == (0.0, 1e-3)
    assert groups["text"]["weight_decay"] == 0.01
    assert groups["text"]["lr"] == pytest.approx(1e-4)
    # Parameters keep their identity: the groups hold the model's own tensors.
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}


def test_texts_are_shuffled_only_without_a_text_cache(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import write_tiny_text_model
    from fivewsi.model.five import FiveModel
    from fivewsi.model.text import TextEncoder
    from fivewsi.training.module import TrainingModule

    folder = write_tiny_text_model(tmp_path / "tiny")
    for lora in (False, True):
        model = FiveModel(16, ["What grade?"], TextEncoder(folder, lora=lora, lora_r=2), dim=32,
                          heads=4, n_learnable_prompts=2)
        module = TrainingModule(model, stage="reports", hparams={}, lr=1e-3,
                                question_keys=["grade"])
        # Frozen (cached) encoder: canonical texts; LoRA: every text shuffled, as released.
        assert module.shuffle_parts is lora
