"""Few-shot recipes: how a classes run that starts from a report-pretrained run (``--init``) uses
its shots without forgetting what the reports taught.

- ``full``: every parameter trains (aggregator, text projection, prompts, logit scale) at
  ``TrainConfig.lr`` for ``epochs`` / ``min_steps``: fivewsi's behaviour before issue 11, and
  the recipe of every run that does not start from a text-aligned ``--init``.
- ``tip-adapter``: no training. The run keeps the starting weights and stores a cache of the
  shots' slide embeddings and labels (:mod:`fivewsi.runs.adapter`), which ``load_model`` adds
  to the zero-shot class scores (``alpha``, ``beta``, ``reduce``).
- ``partial``: only the TFS aggregator trains, at ``lr`` (low), for ``steps_per_shot × k``
  optimiser steps, with the text projection, prompts and logit scale frozen and an L2-SP
  penalty ``l2sp · Σ‖θ − θ₀‖²`` toward the starting weights (Li et al., 2018); ``wise_ft`` < 1
  then interpolates the trained weights with the start (``θ₀ + wise_ft · (θ − θ₀)``, WiSE-FT,
  Wortsman et al., 2022).
- ``auto`` (the default): :data:`DEFAULT_INIT_RECIPE` for a text-aligned model that starts
  from ``--init`` and trains on classes, ``full`` otherwise (:func:`resolve_recipe`).

The choice of the default was made on synthetic development cohorts, never on the test
benchmark (``benchmarks/bench_recipe.py``, ``docs/model.md`` "Few-shot recipe").

Example:
    >>> Recipe().name
    'auto'
    >>> resolve_recipe(Recipe(), text_aligned=True, init=True, stage="classes").name
    'partial'
    >>> resolve_recipe(Recipe(), text_aligned=False, init=False, stage="classes").name
    'full'
    >>> Recipe(name="partial", wise_ft=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Recipe
    ...
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    import torch

    from fivewsi.training.config import TrainConfig
    from fivewsi.training.plan import Plan

log = logging.getLogger(__name__)

RecipeName = Literal["auto", "full", "tip-adapter", "partial"]

#: What ``auto`` means for a text-aligned model fine-tuned on classes from ``--init``.
DEFAULT_INIT_RECIPE: RecipeName = "partial"

#: Parameters the ``partial`` recipe trains (name prefixes); everything else is frozen.
PARTIAL_TRAINABLE = ("aggregator.",)


class Recipe(BaseModel):
    """The few-shot recipe of a classes run and its settings (validated; stored in ``run.json``
    as ``config.recipe``)."""

    model_config = ConfigDict(extra="forbid")

    name: RecipeName = Field("auto", description="auto, full, tip-adapter or partial")
    # tip-adapter
    alpha: float = Field(1.0, ge=0, description="tip-adapter: weight of the shots' cache")
    beta: float = Field(5.5, gt=0, le=100, description="tip-adapter: sharpness of affinities")
    reduce: Literal["sum", "mean"] = Field(
        "sum", description="tip-adapter: a class's affinities summed or averaged over its shots"
    )
    # partial
    lr: float = Field(3e-5, gt=0, le=1.0, description="partial: learning rate of the aggregator")
    l2sp: float = Field(1e-2, ge=0, description="partial: weight of the pull to the start")
    steps_per_shot: int = Field(10, ge=1, le=10_000, description="partial: steps per shot (k)")
    wise_ft: float = Field(
        1.0, ge=0, le=1, description="partial: weight of the trained weights (1: no WiSE-FT)"
    )

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.wise_ft != 1.0 and self.name not in ("partial", "auto"):
            raise ValueError(f"wise_ft applies to the partial recipe, not {self.name!r}")
        return self


def resolve_recipe(recipe: Recipe, *, text_aligned: bool, init: bool, stage: str) -> Recipe:
    """``recipe`` with ``auto`` replaced by what it means for this run.

    Raises:
        ValueError: ``tip-adapter`` or ``partial`` for a run that is not a text-aligned model
            fine-tuned on classes from ``--init``.
    """
    eligible = text_aligned and init and stage == "classes"
    if recipe.name == "auto":
        return recipe.model_copy(update={"name": DEFAULT_INIT_RECIPE if eligible else "full"})
    if recipe.name != "full" and not eligible:
        raise ValueError(
            f"recipe {recipe.name!r} needs a text-aligned model (five) trained on classes from a "
            "report-pretrained run (--init); use recipe 'full'"
        )
    return recipe


def partial_start(model: torch.nn.Module, start: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Freeze every parameter of ``model`` but the aggregator's; the starting values (from
    ``start``, the ``--init`` weights) of the trainable ones, the L2-SP anchor."""
    starting = dict(start.named_parameters())
    anchor = {}
    for name, parameter in model.named_parameters():
        trainable = name.startswith(PARTIAL_TRAINABLE)
        parameter.requires_grad_(trainable)
        if trainable:
            anchor[name] = starting[name].detach().clone()
    if not anchor:
        raise ValueError(f"recipe 'partial': the model has no parameters named "
                         f"{', '.join(PARTIAL_TRAINABLE)}*")
    return anchor


def partial_config(config: TrainConfig, recipe: Recipe, plan: Plan) -> TrainConfig:
    """The training settings of a ``partial`` run: the recipe's rate, no warm-up, and
    ``steps_per_shot × k`` optimiser steps (k = shots per class), whatever ``epochs`` says."""
    n_classes = max(1, len(plan.classes))
    k = config.shots or max(1, -(-len(plan.train) // n_classes))
    updates: dict[str, Any] = {"lr": recipe.lr, "warmup_epochs": 0.0, "epochs": 1,
                               "min_steps": recipe.steps_per_shot * k}
    replaced = sorted(
        name for name in updates
        if name in config.model_fields_set and getattr(config, name) != updates[name]
    )
    if replaced:  # said out loud: a user's --lr must not vanish silently
        log.warning(
            "recipe 'partial' replaces %s (it trains the aggregator at lr %g for %d steps); "
            "set the recipe's own lr / steps_per_shot, or --recipe full to train with them",
            ", ".join(f"{n}={getattr(config, n)!r}" for n in replaced), recipe.lr,
            updates["min_steps"],
        )
    return config.model_copy(update=updates)


def l2sp_penalty(model: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """``Σ ‖θ − θ₀‖²`` over the anchored parameters (L2-SP).

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(2, 1)
        >>> anchor = {n: p.detach().clone() + 1 for n, p in layer.named_parameters()}
        >>> float(l2sp_penalty(layer, anchor).detach())
        3.0
    """
    import torch

    total = torch.zeros(())
    for name, parameter in model.named_parameters():
        if name in anchor:
            start = anchor[name].to(parameter.device, parameter.dtype)
            total = total.to(parameter.device) + (parameter - start).pow(2).sum()
    return total


def interpolate(model: torch.nn.Module, start: dict[str, torch.Tensor], weight: float) -> None:
    """WiSE-FT: anchored parameters become ``θ₀ + weight · (θ − θ₀)`` (in place)."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in start:
                begin = start[name].to(parameter.device, parameter.dtype)
                parameter.copy_(begin + weight * (parameter - begin))
