"""Every registered patch encoder keeps the registry's contract, tested by being registered.

Parametrised over :func:`~fivewsi.features.registry.list_encoders` (timm's ``test_models.py``
pattern): a complete spec; encoders without weights build and embed patches with the declared
``dim``; encoders that need weights and get none fail with the clear missing-weights error
(network blocked, empty Hugging Face cache). Encoders of the ``[models]`` extra are marked
``models`` and skipped where that extra is not installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import torch

from fivewsi.errors import FeatureStageError
from fivewsi.features.registry import EncoderSpec, PatchEncoder, create_encoder, list_encoders

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

#: One member of each prefix family (``timm:<model>``, ``hf:<path>``), named without weights.
FAMILY_MEMBER = {"timm:": "timm:resnet18", "hf:": "hf:nobody/nothing"}

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


def optional_dependencies() -> dict[str, list[str]]:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)["project"]["optional-dependencies"]


def encoder_params(needs_weights: bool | None = None) -> list[object]:
    return [
        pytest.param(name, id=name, marks=[pytest.mark.models] if spec.extra == "models" else [])
        for name, spec in sorted(list_encoders().items())
        if needs_weights is None or spec.needs_weights == needs_weights
    ]


def skip_without_extra(spec: EncoderSpec) -> None:
    """Skip when the encoder's pip extra is not installed (e.g. timm in the core venv)."""
    for requirement in optional_dependencies().get(spec.extra or "", []):
        distribution = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        try:
            importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"needs the [{spec.extra}] extra ({distribution} is not installed)")


def patches(n: int = 3, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, size, size, 3), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize("name", encoder_params())
def test_spec_is_complete(name: str) -> None:
    spec = list_encoders()[name]
    assert spec.name == name
    assert callable(spec.factory)
    assert isinstance(spec.description, str) and len(spec.description) > 10
    assert isinstance(spec.needs_weights, bool)
    assert spec.extra is None or spec.extra in optional_dependencies(), spec.extra
    if name.endswith(":"):  # a family: the dim depends on the member, known once built
        assert spec.dim is None
        assert name in FAMILY_MEMBER, f"add a member of the {name} family to FAMILY_MEMBER"
    else:
        assert isinstance(spec.dim, int) and spec.dim > 0


@pytest.mark.parametrize("name", encoder_params(needs_weights=False))
def test_builds_and_embeds_without_weights(name: str) -> None:
    spec = list_encoders()[name]
    skip_without_extra(spec)
    encoder = create_encoder(FAMILY_MEMBER.get(name, name))
    assert isinstance(encoder, PatchEncoder)
    assert not encoder.training
    assert not any(param.requires_grad for param in encoder.parameters())
    assert encoder.dim == spec.dim and encoder.describe()["encoder_dim"] == spec.dim
    features = encoder(patches())
    assert features.shape == (3, spec.dim) and features.dtype == torch.float32
    assert features.isfinite().all()


@pytest.mark.parametrize("name", encoder_params(needs_weights=True))
def test_missing_weights_is_clear(name: str) -> None:
    skip_without_extra(list_encoders()[name])
    with pytest.raises(FeatureStageError, match="--weights") as info:
        create_encoder(FAMILY_MEMBER.get(name, name))
    assert isinstance(info.value, FileNotFoundError)
