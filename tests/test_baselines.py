"""Label-only MIL baselines: shapes, padding invariance, attention, aux losses, learning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from fivewsi.model import baselines
from fivewsi.model.baselines import (
    CLAMSB,
    DSMIL,
    MILClassifier,
    NystromAttention,
    TransMIL,
    masked_softmax,
    moore_penrose_pinv,
)
from fivewsi.model.outputs import AggregatorOutput, BagBatch
from fivewsi.model.registry import create_model, get_model_spec, list_models

IN_DIM = 12
# Small hidden sizes keep the tests fast; TransMIL needs dim divisible by its 8 heads.
SMALL = {"dim": 32}
WITH_AUX = {"dsmil", "clam-sb"}
#: Every registered label-only model: a newly registered one is tested by being registered.
BASELINE_NAMES = [name for name, spec in list_models().items() if not spec.text_aligned]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids oversubscription slowdowns on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, n_classes: int = 2, **options: object) -> MILClassifier:
    """Build a registered baseline through the registry, its options validated."""
    model = create_model(name, in_dim=IN_DIM, n_classes=n_classes, **{**SMALL, **options})
    assert isinstance(model, MILClassifier)
    return model


def random_bags(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, IN_DIM, generator=generator) for n in sizes]


def test_all_baselines_registered_as_label_models() -> None:
    assert {"mean", "max", "abmil", "dsmil", "transmil", "clam-sb"} <= set(BASELINE_NAMES)
    for name in BASELINE_NAMES:
        spec = get_model_spec(name)
        assert spec.objectives == ("classes",) and not spec.text_aligned
        assert spec.description
        assert spec.model.__module__ == baselines.__name__


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_output_shapes_and_types(name: str, n_classes: int) -> None:
    torch.manual_seed(0)
    model = build(name, n_classes).eval()
    batch = BagBatch.from_bags(random_bags([4, 11, 7]))
    out = model(batch)
    assert isinstance(out, AggregatorOutput)
    assert out.logits is not None and out.logits.shape == (3, n_classes)
    assert out.embedding.ndim == 2 and out.embedding.shape[0] == 3
    assert out.patch_attention is not None and out.patch_attention.shape == (3, 11)
    assert out.aux_loss is None
    assert out.prompt_attention is None and out.prompt_tokens is None
    for tensor in (out.logits, out.embedding, out.patch_attention):
        assert tensor.dtype == torch.float32
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_patch_attention_sums_to_one_and_is_zero_on_padding(name: str) -> None:
    torch.manual_seed(1)
    model = build(name, 3).eval()
    sizes = [1, 5, 13, 2]
    with torch.no_grad():
        out = model(BagBatch.from_bags(random_bags(sizes, seed=1)))
    attention = out.patch_attention
    assert attention is not None
    assert (attention >= 0).all()
    for i, n in enumerate(sizes):
        assert float(attention[i, :n].sum()) == pytest.approx(1.0, abs=1e-5)
        assert torch.all(attention[i, n:] == 0)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_padding_does_not_change_a_bag(name: str) -> None:
    torch.manual_seed(2)
    model = build(name, 3).eval()
    bags = random_bags([6, 17, 3], seed=2)
    with torch.no_grad():
        batched = model(BagBatch.from_bags(bags))
        for i, bag in enumerate(bags):
            alone = model(BagBatch.from_bags([bag]))
            n = bag.shape[0]
            torch.testing.assert_close(batched.logits[i], alone.logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batched.embedding[i], alone.embedding[0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                batched.patch_attention[i, :n], alone.patch_attention[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_padding_values_are_ignored(name: str) -> None:
    """Garbage in padded positions (not just zeros) must not reach the output."""
    torch.manual_seed(3)
    model = build(name, 2).eval()
    batch = BagBatch.from_bags(random_bags([4, 9], seed=3))
    noisy = BagBatch(
        batch.features.masked_fill(~batch.mask.unsqueeze(-1), 1e3), batch.coords, batch.mask
    )
    with torch.no_grad():
        clean_out, noisy_out = model(batch), model(noisy)
    torch.testing.assert_close(clean_out.logits, noisy_out.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_aux_loss_only_for_models_that_have_one(name: str) -> None:
    torch.manual_seed(4)
    model = build(name, 3).train()
    batch = BagBatch.from_bags(random_bags([5, 20, 1], seed=4))
    out = model(batch, labels=torch.tensor([0, 2, 1]))
    if name in WITH_AUX:
        assert out.aux_loss is not None
        assert out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
        assert float(out.aux_loss.detach()) > 0
    else:
        assert out.aux_loss is None
    assert model(batch).aux_loss is None


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(5)
    model = build(name, 2).train()
    batch = BagBatch.from_bags(random_bags([6, 30], seed=5))
    labels = torch.tensor([0, 1])
    out = model(batch, labels=labels)
    loss = F.cross_entropy(out.logits, labels)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    missing = [
        pname
        for pname, param in model.named_parameters()
        if param.grad is None or not torch.any(param.grad != 0)
    ]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_deterministic_given_seed(name: str) -> None:
    batch = BagBatch.from_bags(random_bags([5, 8], seed=6))
    outs = []
    for _ in range(2):
        torch.manual_seed(6)
        model = build(name, 2).train()  # dropout active: the seed must fix it too
        outs.append(model(batch).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_single_patch_and_large_bags(name: str) -> None:
    torch.manual_seed(7)
    # TransMIL with 8 landmarks: a 50-patch bag (51 tokens, 64 grid cells) exceeds them.
    options = {"num_landmarks": 8} if name == "transmil" else {}
    model = build(name, 2, **options).train()
    batch = BagBatch.from_bags(random_bags([1, 50], seed=7))
    out = model(batch, labels=torch.tensor([1, 0]))
    assert torch.isfinite(out.logits).all()
    assert out.patch_attention is not None
    assert float(out.patch_attention[0, 0].detach()) == pytest.approx(1.0)
    assert torch.all(out.patch_attention[0, 1:] == 0)
    if out.aux_loss is not None:
        assert torch.isfinite(out.aux_loss)


def test_transmil_default_landmarks_with_a_bag_larger_than_them() -> None:
    torch.manual_seed(8)
    model = TransMIL(in_dim=IN_DIM, n_classes=2).eval()  # dim 512, 256 landmarks
    assert model.layer1.attn.num_landmarks == 256
    out = model(BagBatch.from_bags(random_bags([300, 2], seed=8)))
    assert out.logits is not None and torch.isfinite(out.logits).all()
    assert out.patch_attention is not None
    assert float(out.patch_attention[0].sum()) == pytest.approx(1.0, abs=1e-5)


def test_nystrom_attention_matches_softmax_attention_when_landmarks_are_tokens() -> None:
    """With as many landmarks as tokens, the Nyström factors reproduce exact attention."""
    torch.manual_seed(9)
    layer = NystromAttention(16, heads=2, num_landmarks=64, pinv_iterations=20).eval()
    x = torch.randn(1, 10, 16)
    _, rows = layer(x, query_rows=10)
    q, k, _ = layer.to_qkv(x).chunk(3, dim=-1)
    q = q.view(1, 10, 2, 8).transpose(1, 2) * layer.scale
    k = k.view(1, 10, 2, 8).transpose(1, 2)
    exact = torch.softmax(q @ k.transpose(-1, -2), dim=-1)[0]
    assert rows is not None
    torch.testing.assert_close(rows, exact, atol=1e-3, rtol=0)


def test_nystrom_landmarks_are_segment_means() -> None:
    layer = NystromAttention(8, heads=1, num_landmarks=3)
    t = torch.arange(7, dtype=torch.float32).view(1, 1, 7, 1)
    # 7 tokens into 3 segments: [0, 1, 2], [3, 4], [5, 6]
    assert layer._landmarks(t, 3).flatten().tolist() == pytest.approx([1.0, 3.5, 5.5])


def test_moore_penrose_pinv_inverts_a_softmax_matrix() -> None:
    torch.manual_seed(10)
    x = torch.softmax(torch.randn(3, 6, 6), dim=-1)
    z = moore_penrose_pinv(x, iterations=30)
    torch.testing.assert_close(z, torch.linalg.pinv(x), atol=1e-3, rtol=1e-3)


def test_masked_softmax_ignores_masked_scores() -> None:
    scores = torch.tensor([[1.0, 2.0, 100.0]])
    weights = masked_softmax(scores, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(weights, torch.tensor([[0.2689, 0.7311, 0.0]]), atol=1e-4, rtol=0)


def test_dsmil_aux_loss_is_the_max_instance_cross_entropy() -> None:
    torch.manual_seed(11)
    model = DSMIL(in_dim=IN_DIM, n_classes=3).eval()
    bags = random_bags([4, 7], seed=11)
    labels = torch.tensor([2, 0])
    out = model(BagBatch.from_bags(bags), labels=labels)
    max_logits = torch.stack([model.instance_classifier(b).max(dim=0).values for b in bags])
    assert out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, F.cross_entropy(max_logits, labels))


def test_clam_aux_loss_scaled_by_bag_weight() -> None:
    batch = BagBatch.from_bags(random_bags([20], seed=12))
    labels = torch.tensor([1])
    losses = {}
    for weight in (0.7, 0.5):
        torch.manual_seed(12)
        model = CLAMSB(in_dim=IN_DIM, n_classes=2, dim=32, bag_weight=weight).eval()
        losses[weight] = model(batch, labels=labels).aux_loss
    # aux = (1 - w) / w · L_inst with the same L_inst: 3/7 vs 1.
    torch.testing.assert_close(losses[0.7], losses[0.5] * (0.3 / 0.7))


def test_clam_svm_instance_loss_and_bad_options() -> None:
    torch.manual_seed(13)
    model = CLAMSB(in_dim=IN_DIM, n_classes=2, dim=32, instance_loss="svm")
    out = model(BagBatch.from_bags(random_bags([9, 3], seed=13)), labels=torch.tensor([0, 1]))
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    with pytest.raises(ValueError, match="instance_loss"):
        CLAMSB(in_dim=IN_DIM, n_classes=2, instance_loss="hinge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_classes"):
        CLAMSB(in_dim=IN_DIM, n_classes=1)
    with pytest.raises(ValidationError, match="unknown_option"):
        build("abmil", 2, unknown_option=1)


def test_max_attention_splits_argmax_positions() -> None:
    model = build("max", 2, dim=4).eval()
    with torch.no_grad():
        model.fc[0].weight.copy_(torch.eye(4, IN_DIM))
        model.fc[0].bias.zero_()
    features = torch.zeros(3, IN_DIM)
    features[0, 0] = features[0, 1] = 5.0  # patch 0 holds the max of dims 0 and 1
    features[1, 2] = 5.0  # patch 1 holds dim 2
    # dim 3 is zero everywhere: tied between all three patches.
    out = model(BagBatch.from_bags([features]))
    expected = torch.tensor([2 + 1 / 3, 1 + 1 / 3, 1 / 3]) / 4
    torch.testing.assert_close(out.patch_attention[0], expected)


def test_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        MILClassifier(in_dim=IN_DIM, n_classes=2)  # type: ignore[abstract]


def test_empty_bag_and_wrong_feature_size_are_rejected() -> None:
    model = build("mean", 2)
    batch = BagBatch.from_bags(random_bags([3, 2]))
    batch.mask[1] = False
    with pytest.raises(ValueError, match="without patches"):
        model(batch)
    with pytest.raises(ValueError, match="expected features"):
        model(BagBatch.from_bags([torch.randn(3, IN_DIM + 1)]))


def synthetic_bags(n_classes: int, per_class: int, seed: int) -> tuple[BagBatch, torch.Tensor]:
    """Noise bags of 6–15 patches; 2–3 patches carry their class's signal direction."""
    generator = torch.Generator().manual_seed(seed)
    signals = 3.0 * torch.eye(IN_DIM)[:n_classes]
    bags, labels = [], []
    for label in range(n_classes):
        for _ in range(per_class):
            n = int(torch.randint(6, 16, (1,), generator=generator))
            bag = torch.randn(n, IN_DIM, generator=generator)
            hits = torch.randperm(n, generator=generator)[: 2 + len(bags) % 2]
            bag[hits] += signals[label]
            bags.append(bag)
            labels.append(label)
    return BagBatch.from_bags(bags), torch.tensor(labels)


@pytest.mark.parametrize(("name", "n_classes"), [(n, 2) for n in BASELINE_NAMES] + [("abmil", 3)])
def test_every_baseline_overfits_tiny_bags(name: str, n_classes: int) -> None:
    torch.manual_seed(14)
    batch, labels = synthetic_bags(n_classes, 8 // n_classes + (n_classes == 3), seed=14)
    model = build(name, n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    predicted: list[int] = []
    for step in range(1, 61):
        model.train()
        out = model(batch, labels=labels)
        loss = F.cross_entropy(out.logits, labels)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0:  # stop as soon as the train bags are all classified right
            model.eval()
            with torch.no_grad():
                predicted = model(batch).logits.argmax(dim=1).tolist()
            if predicted == labels.tolist():
                break
    assert predicted == labels.tolist()
