"""The released TFS as a variant (``five-official``): properties that pin its data flow.

The numerical parity with the released ``models/patch_fusion.py`` was checked offline (max |Δ|
in docs/model.md); these tests pin the same data flow by hand-checkable properties.
"""

from __future__ import annotations

import pytest
import torch

from fivewsi.model.outputs import BagBatch
from fivewsi.model.registry import create_model, get_model_spec
from fivewsi.model.tfs_official import (
    FiveOfficialModel,
    OfficialTFS,
    index_position_encoding,
)

pytestmark = pytest.mark.usefixtures("one_thread")
DIM, HEADS = 16, 2


def _tfs(position: str = "index", in_dim: int = DIM) -> OfficialTFS:
    torch.manual_seed(0)
    return OfficialTFS(in_dim, DIM, heads=HEADS, position=position).double().eval()  # type: ignore[arg-type]


def _bags(*sizes: int, in_dim: int = DIM) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(n, in_dim, generator=gen, dtype=torch.float64) for n in sizes]


def _batch(bags: list[torch.Tensor], coords: list[torch.Tensor] | None = None) -> BagBatch:
    batch = BagBatch.from_bags(bags, coords)
    return BagBatch(batch.features.double(), batch.coords.double(), batch.mask, batch.slide_ids)


@pytest.mark.parametrize("position", ["index", "grid"])
def test_padding_never_changes_a_bag(position: str) -> None:
    # The released self-attention attends to padded positions; this one masks them.
    tfs, prompts = _tfs(position), torch.randn(5, DIM, dtype=torch.float64)
    short, long = _bags(9, 30)
    with torch.no_grad():
        alone = tfs(_batch([short]), prompts)
        padded = tfs(_batch([short, long]), prompts)
    torch.testing.assert_close(padded.embedding[0], alone.embedding[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(padded.prompt_attention[0, :, :9], alone.prompt_attention[0])
    assert float(padded.prompt_attention[0, :, 9:].abs().sum()) == 0.0
    ones = torch.ones(2, 5, dtype=torch.float64)
    torch.testing.assert_close(padded.prompt_attention.sum(-1), ones)


def test_grid_positions_make_it_permutation_equivariant() -> None:
    tfs, prompts = _tfs("grid"), torch.randn(4, DIM, dtype=torch.float64)
    (bag,) = _bags(12)
    xy = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij"), -1)
    xy = xy.reshape(-1, 2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = tfs(_batch([bag], [xy]), prompts)
        b = tfs(_batch([bag[perm]], [xy[perm]]), prompts)
    torch.testing.assert_close(b.embedding, a.embedding)
    torch.testing.assert_close(b.prompt_attention, a.prompt_attention[:, :, perm])
    # Released positions are the patch's index in the bag: order matters there.
    index = _tfs("index")
    with torch.no_grad():
        c, d = index(_batch([bag]), prompts), index(_batch([bag[perm]]), prompts)
    assert not torch.allclose(c.embedding, d.embedding)


def test_instance_branch_has_the_outer_residual_and_one_position() -> None:
    # Zero the last layers of both instance sublayers: tokens = (x + pos) + x = 2x + pos, and a
    # fusion reading only the instance half returns their mean over the bag.
    tfs = _tfs()
    with torch.no_grad():
        for layer in (tfs.self_out, tfs.self_mlp[2]):
            layer.weight.zero_()
            layer.bias.zero_()
        tfs.fuse.weight.zero_()
        tfs.fuse.bias.zero_()
        tfs.fuse.weight[:, DIM:] = torch.eye(DIM)
        (bag,) = _bags(7)
        out = tfs(_batch([bag]), torch.randn(3, DIM, dtype=torch.float64))
    pos = index_position_encoding(torch.ones(1, 7, dtype=torch.bool), DIM, torch.float64)[0]
    torch.testing.assert_close(out.embedding[0], (2 * bag + pos).mean(0))


def test_prompt_branch_reads_the_tokens_after_self_attention_without_residuals() -> None:
    # Zero queries make the cross-attention uniform: each prompt's output is then, by hand,
    # MLP(LN(Out(mean V(LN(tokens + pos))))) with tokens from the self-attention branch.
    tfs = _tfs()
    with torch.no_grad():
        tfs.cross_q.weight.zero_()
        tfs.cross_q.bias.zero_()
        tfs.fuse.weight.zero_()
        tfs.fuse.bias.zero_()
        tfs.fuse.weight[:, :DIM] = torch.eye(DIM)
        (bag,) = _bags(6)
        prompts = torch.randn(2, DIM, dtype=torch.float64)
        out = tfs(_batch([bag]), prompts)
        x = bag.unsqueeze(0)
        pos = index_position_encoding(torch.ones(1, 6, dtype=torch.bool), DIM, torch.float64)
        h = x + pos
        q, k, v = tfs.self_qkv(tfs.self_norm(h)).chunk(3, -1)
        heads = [slice(i * DIM // HEADS, (i + 1) * DIM // HEADS) for i in range(HEADS)]
        attn = torch.cat([
            torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / (DIM // HEADS) ** 0.5, -1)
            @ v[..., s] for s in heads
        ], -1)
        h = h + tfs.self_out(attn)
        tokens = h + tfs.self_mlp(tfs.self_mlp_norm(h)) + x
        values = tfs.cross_kv(tfs.cross_norm(tokens + pos)).chunk(2, -1)[1]
        prompt = tfs.prompt_mlp(tfs.prompt_mlp_norm(tfs.cross_out(values.mean(1))))
    uniform = torch.full((1, 2, 6), 1 / 6, dtype=torch.float64)
    torch.testing.assert_close(out.prompt_attention, uniform)
    torch.testing.assert_close(out.embedding[0], prompt[0])  # every prompt reads the same


def test_dropping_prompts_equals_leaving_them_out_and_there_is_no_dropout() -> None:
    tfs, prompts = _tfs(), torch.randn(5, DIM, dtype=torch.float64)
    batch = _batch(_bags(20))
    keep = torch.tensor([True, False, True, True, False])
    with torch.no_grad():
        masked = tfs(batch, prompts, keep)
        fewer = tfs(batch, prompts[keep])
        trained = tfs.train()(batch, prompts, keep)
    torch.testing.assert_close(masked.embedding, fewer.embedding)
    torch.testing.assert_close(trained.embedding, masked.embedding, rtol=0, atol=0)


def test_registered_with_the_released_defaults() -> None:
    spec = get_model_spec("five-official")
    assert spec.text_aligned and spec.model is FiveOfficialModel
    defaults = spec.validate_options()
    assert (defaults["dim"], defaults["heads"], defaults["n_learnable_prompts"]) == (512, 8, 16)
    assert defaults["logit_scale"] == 300.0 and defaults["position"] == "index"
    model = create_model("five-official", in_dim=24, questions=["Grade?"], dim=32, heads=4,
                         n_learnable_prompts=2)
    assert isinstance(model.aggregator, OfficialTFS)  # type: ignore[attr-defined]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.aggregator.modules())  # type: ignore[attr-defined]
    assert float(model.logit_scale) == pytest.approx(300.0)  # type: ignore[attr-defined]
