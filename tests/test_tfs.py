"""TFS aggregator: shapes, padding and permutation invariance, local vs full, prompt masks."""

from __future__ import annotations

import pytest
import torch

from fivewsi.model.outputs import BagBatch
from fivewsi.model.tfs import (
    TFSAggregator,
    grid_position_encoding,
    morton_order,
)

IN_DIM, DIM, HEADS, BLOCK, PROMPTS = 24, 32, 4, 64, 5


def grid_bag(n: int, seed: int, width: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random patch features on a ``width``-wide grid (tissue-like: offset, row-major)."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(n)
    coords = torch.stack([index % width + 7, index // width + 3], dim=1).float()
    return torch.randn(n, IN_DIM, generator=gen), coords


def make(attention: str = "local", **options: object) -> TFSAggregator:
    torch.manual_seed(0)
    return TFSAggregator(
        IN_DIM, DIM, heads=HEADS, attention=attention, block_size=BLOCK, **options
    ).eval()


@pytest.fixture(scope="module")
def prompts() -> torch.Tensor:
    return torch.randn(PROMPTS, DIM, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attention", ["local", "full"])
def test_shapes_and_attention_sums(attention: str, prompts: torch.Tensor) -> None:
    bags = [grid_bag(n, i) for i, n in enumerate([150, 40, 97])]
    batch = BagBatch.from_bags([f for f, _ in bags], [c for _, c in bags])
    with torch.no_grad():
        out = make(attention)(batch, prompts)
    assert out.embedding.shape == (3, DIM)
    assert out.prompt_tokens.shape == (3, PROMPTS, DIM)
    assert out.prompt_attention.shape == (3, PROMPTS, 150)
    assert out.patch_attention.shape == (3, 150)
    torch.testing.assert_close(out.patch_attention.sum(1), torch.ones(3))
    torch.testing.assert_close(out.prompt_attention.sum(2), torch.ones(3, PROMPTS))
    assert float(out.prompt_attention[1, :, 40:].abs().sum()) == 0.0
    assert torch.isfinite(out.embedding).all()


@pytest.mark.parametrize(
    ("attention", "shift"), [("local", True), ("local", False), ("full", True)]
)
def test_padding_invariance(attention: str, shift: bool, prompts: torch.Tensor) -> None:
    """A bag alone and the same bag padded in a batch give the same outputs."""
    model = make(attention, shift=shift)
    sizes = [200, 70, 130, 5]  # > 3 blocks, within one block, uneven blocks, tiny
    bags = [grid_bag(n, i) for i, n in enumerate(sizes)]
    with torch.no_grad():
        batch = model(BagBatch.from_bags([f for f, _ in bags], [c for _, c in bags]), prompts)
        for i, (feats, coords) in enumerate(bags):
            alone = model(BagBatch.from_bags([feats], [coords]), prompts)
            n = sizes[i]
            torch.testing.assert_close(batch.embedding[i], alone.embedding[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(
                batch.prompt_attention[i, :, :n], alone.prompt_attention[0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(
                batch.patch_attention[i, :n], alone.patch_attention[0], atol=1e-5, rtol=0
            )


@pytest.mark.parametrize("attention", ["local", "full"])
def test_permutation_invariance(attention: str, prompts: torch.Tensor) -> None:
    model = make(attention)
    feats, coords = grid_bag(300, 3)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a = model(BagBatch.from_bags([feats], [coords]), prompts)
        b = model(BagBatch.from_bags([feats[perm]], [coords[perm]]), prompts)
    torch.testing.assert_close(a.embedding, b.embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.patch_attention[:, perm], b.patch_attention, atol=1e-6, rtol=0)


def test_local_equals_full_within_one_block(prompts: torch.Tensor) -> None:
    local, full = make("local"), make("full")
    full.load_state_dict(local.state_dict())
    small = [grid_bag(n, 10 + i) for i, n in enumerate([BLOCK, 33])]
    big = grid_bag(3 * BLOCK, 20)
    with torch.no_grad():
        for bags in (small, [*small, big]):  # alone in one block, and padded next to a big bag
            batch = BagBatch.from_bags([f for f, _ in bags], [c for _, c in bags])
            a, b = local(batch, prompts), full(batch, prompts)
            torch.testing.assert_close(a.embedding[:2], b.embedding[:2], atol=1e-5, rtol=0)
        # A bag spanning several blocks does differ: the test can tell the modes apart.
        assert not torch.allclose(a.embedding[2], b.embedding[2], atol=1e-4)


def test_shift_connects_blocks(prompts: torch.Tensor) -> None:
    """Plain blocks never mix; shifted heads let the last block reach the first half-block."""
    feats, coords = grid_bag(4 * BLOCK, 5)
    other = feats.clone()
    other[morton_order(coords[None], torch.ones(1, 4 * BLOCK, dtype=torch.bool))[0, -1]] += 5.0
    tokens: dict[str, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        tokens["y"] = out  # self-attention output, in Morton order

    for shift, changes in ((False, False), (True, True)):
        model = make(shift=shift)

        handle = model.self_attn.out.register_forward_hook(keep)
        with torch.no_grad():
            model(BagBatch.from_bags([feats], [coords]), prompts)
            first = tokens["y"][0, :BLOCK // 2].clone()  # first half-block in Morton order
            model(BagBatch.from_bags([other], [coords]), prompts)
            second = tokens["y"][0, :BLOCK // 2]
        handle.remove()
        assert (not torch.allclose(first, second, atol=1e-6)) is changes


def test_chunks_match_one_pass_with_gradients(prompts: torch.Tensor) -> None:
    """Chunked local attention (recomputed in backward) equals one pass, values and grads."""
    bags = [grid_bag(n, 30 + i) for i, n in enumerate([5 * BLOCK + 17, 2 * BLOCK - 3])]
    batch = BagBatch.from_bags([f for f, _ in bags], [c for _, c in bags])
    results = []
    # One pass keeping activations vs small chunks recomputed in backward (checkpointing).
    for chunk_size, checkpoint_patches in ((4096, 10**9), (2 * BLOCK, 0)):
        model = make(chunk_size=chunk_size, checkpoint_patches=checkpoint_patches).train()
        p = prompts.clone().requires_grad_(True)
        torch.manual_seed(5)  # same dropout masks: chunking must not change the computation
        model.input[3].p = model.self_drop.p = 0.0  # dropout draws differ per chunk layout
        out = model(batch, p)
        (out.embedding.square().sum() + out.patch_attention.square().sum()).backward()
        grads = [param.grad.clone() for param in model.parameters()]
        results.append((out.embedding.detach(), out.prompt_attention.detach(), grads, p.grad))
    (e1, a1, g1, p1), (e2, a2, g2, p2) = results
    torch.testing.assert_close(e1, e2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a1, a2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-4)
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_prompt_mask(prompts: torch.Tensor) -> None:
    model = make()
    feats, coords = grid_bag(120, 6)
    batch = BagBatch.from_bags([feats], [coords])
    keep = torch.tensor([False, True, True, False, True])
    with torch.no_grad():
        full = model(batch, prompts)
        masked = model(batch, prompts, keep)
    torch.testing.assert_close(full.prompt_attention, masked.prompt_attention)
    torch.testing.assert_close(
        masked.patch_attention, full.prompt_attention[:, keep].mean(1), atol=1e-7, rtol=0
    )
    assert not torch.allclose(full.embedding, masked.embedding, atol=1e-4)
    # Dropped prompts do not matter at all: changing them leaves the output unchanged.
    changed = prompts.clone()
    changed[~keep] = torch.randn(2, DIM)
    with torch.no_grad():
        again = model(batch, changed, keep)
    torch.testing.assert_close(again.embedding, masked.embedding)
    with pytest.raises(ValueError, match="at least one prompt"):
        model(batch, prompts, torch.zeros(PROMPTS, dtype=torch.bool))
    with pytest.raises(ValueError, match="prompt_mask shape"):
        model(batch, prompts, torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("attention", ["local", "full"])
def test_gradients_reach_projection_and_prompts(attention: str) -> None:
    model = make(attention).train()
    prompts = torch.randn(PROMPTS, DIM, requires_grad=True)
    bags = [grid_bag(n, i) for i, n in enumerate([150, 60])]
    out = model(BagBatch.from_bags([f for f, _ in bags], [c for _, c in bags]), prompts)
    (out.embedding.pow(2).sum() + out.patch_attention.pow(2).sum()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


def test_deterministic(prompts: torch.Tensor) -> None:
    feats, coords = grid_bag(250, 8)
    batch = BagBatch.from_bags([feats], [coords])
    with torch.no_grad():
        assert torch.equal(make()(batch, prompts).embedding, make()(batch, prompts).embedding)


def test_morton_order_and_positions() -> None:
    coords = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    order = morton_order(coords + 100, mask)
    assert order.tolist() == [[1, 2, 0, 3]]  # (0,0) → (1,1) → (2,0); padding last
    enc = grid_position_encoding(coords, mask, 8)
    shifted = grid_position_encoding(coords + 37, mask, 8)
    torch.testing.assert_close(enc, shifted)  # relative to the bag's top-left patch
    assert float(enc[0, 3].abs().sum()) == 0.0
    assert not torch.allclose(enc[0, 0], enc[0, 2])


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="attention must be"):
        TFSAggregator(IN_DIM, DIM, heads=HEADS, attention="sparse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        TFSAggregator(IN_DIM, 30, heads=HEADS)
    model = make()
    empty = BagBatch(torch.zeros(1, 3, IN_DIM), torch.zeros(1, 3, 2), torch.zeros(1, 3).bool())
    with pytest.raises(ValueError, match="at least one patch"):
        model(empty, torch.randn(PROMPTS, DIM))
