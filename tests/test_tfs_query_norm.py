"""The TFS prompt branch's optional query LayerNorm (issue 11, item 10): off by default, so
FiVE's numerics and saved weights are unchanged; on, the queries' scale no longer matters."""

from __future__ import annotations

import torch

from fivewsi.model.outputs import BagBatch
from fivewsi.model.registry import create_model, get_model_spec
from fivewsi.model.tfs import TFSAggregator


def test_default_has_no_query_norm() -> None:
    assert get_model_spec("five").validate_options()["query_norm"] is False
    model = TFSAggregator(8, dim=16, heads=2)
    assert model.query_norm is None
    assert not any(k.startswith("query_norm") for k in model.state_dict())


def test_query_norm_makes_attention_independent_of_the_prompt_scale() -> None:
    torch.manual_seed(0)
    batch = BagBatch.from_bags([torch.randn(30, 8)])
    prompts = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    on = TFSAggregator(8, dim=16, heads=2, attention="full", query_norm=True).eval()
    off = TFSAggregator(8, dim=16, heads=2, attention="full", query_norm=False).eval()
    assert "query_norm.weight" in on.state_dict()
    with torch.no_grad():
        a = on(batch, prompts).prompt_attention
        b = on(batch, 5 * prompts).prompt_attention
        c = off(batch, prompts).prompt_attention
        d = off(batch, 5 * prompts).prompt_attention
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(c, d, atol=1e-5)
    # FiVE's option, stored with the run's model arguments, builds it
    five = create_model("five", in_dim=8, questions=["Q?"], query_norm=True, dim=16, heads=2,
                        lazy=True)
    assert five.aggregator.query_norm is not None
