"""The LightningModule that trains every model: FiVE on reports or classes, baselines on labels.

One module, three objectives:

- ``reports`` (FiVE pretraining): slide ↔ fine-grained label contrastive loss with field
  dropping (:func:`fivewsi.training.losses.report_step`).
- ``classes``: cross-entropy over the model's class logits
  (:meth:`~fivewsi.model.interfaces.SlideModel.class_logits`: FiVE's similarities to the class
  descriptions, a baseline's head) plus the model's own auxiliary loss.

Optimiser: AdamW (betas 0.9, 0.98), LoRA weights at ``lr * text_lr_ratio``; biases, norms,
other 1-D parameters and the logit scale without weight decay (:func:`parameter_groups`);
learning rate warmed up linearly, then a cosine to zero, stepped per optimiser step. Validation logs
``val/loss``, ``val/acc`` and ``val/bacc`` (balanced accuracy), gathered over all processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fivewsi.cohort.labels import LabelPart
from fivewsi.model.interfaces import SlideModel, TextAlignedModel
from fivewsi.model.text import text_encoder_prefixes
from fivewsi.training.config import TrainError
from fivewsi.training.data import TrainingBatch
from fivewsi.training.losses import (
    IGNORE,
    class_loss,
    contrastive_loss,
    encode_step_texts,
    eval_report_texts,
    report_step,
)

log = logging.getLogger(__name__)


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from 1 to 0 at ``total``.

    Example:
        >>> [round(lr_factor(s, warmup=2, total=6), 2) for s in range(7)]
        [0.33, 0.67, 1.0, 0.85, 0.5, 0.15, 0.0]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def step_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, epoch, step, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class TrainingModule(L.LightningModule):
    """Wraps a model with its objective, optimiser and metrics.

    Args:
        model: a registered model; ``stage`` must be one of its ``objectives``.
        stage: ``"reports"`` or ``"classes"``.
        hparams: plain settings stored in checkpoints (JSON values only).
        labels: reports stage: the distinct parsed fine-grained labels.
        train_report_index / val_report_index: reports stage: per dataset item, its index
            into ``labels``.
        class_texts: FiVE classes stage: one description per class.
        question_keys: keys of the question prompts, in prompt order.
    """

    def __init__(
        self,
        model: SlideModel,
        *,
        stage: str,
        hparams: dict[str, Any],
        lr: float,
        text_lr_ratio: float = 0.1,
        weight_decay: float = 1e-3,
        warmup_epochs: float = 0.0,
        epochs: int = 1,
        seed: int = 0,
        negatives: str = "batch",
        max_drop_fraction: float = 0.5,
        labels: Sequence[Sequence[LabelPart]] = (),
        train_report_index: Sequence[int] = (),
        val_report_index: Sequence[int] = (),
        class_texts: Sequence[str] = (),
        question_keys: Sequence[str] = (),
        anchor: dict[str, Tensor] | None = None,
        l2sp: float = 0.0,
    ) -> None:
        super().__init__()
        if stage not in model.objectives:
            raise ValueError(f"{type(model).__name__} cannot learn from {stage!r}")
        if stage == "reports" and not isinstance(model, TextAlignedModel):
            raise ValueError("report pretraining needs a text-aligned model (FiVE)")
        self.save_hyperparameters(hparams)
        self.model = model
        self.stage = stage
        self.lr = lr
        self.text_lr_ratio = text_lr_ratio
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.epochs = epochs
        self.seed = seed
        self.negatives = negatives
        self.max_drop_fraction = max_drop_fraction
        self.labels = [list(parts) for parts in labels]
        self.train_report_index = list(train_report_index)
        self.class_texts = list(class_texts)
        self.question_keys = list(question_keys)
        # L2-SP (recipe "partial"): a pull of the trained parameters toward their start.
        self._anchor = {k: v.detach().clone() for k, v in (anchor or {}).items()}
        self.l2sp = float(l2sp)
        self.pool = [self.labels[i] for i in sorted(set(self.train_report_index))]
        val_labels = [self.labels[i] for i in val_report_index]
        self.val_texts, self.val_targets = eval_report_texts(val_labels)
        self._excluded = model.frozen_state_keys()
        prefixes = text_encoder_prefixes(model)
        # A frozen text encoder costs nothing per negative, so all texts train the projection.
        self._grad_negatives = not any(
            p.requires_grad
            for k, p in model.named_parameters()
            if any(k.startswith(x) for x in prefixes)
        )
        # Report texts: a frozen encoder caches each distinct string, so its texts keep their
        # canonical order (a small cache); a LoRA encoder has no cache, and every text, positive
        # or negative, gets its parts shuffled as in the released code (see losses.py).
        self.shuffle_parts = not self._grad_negatives
        self._val_outputs: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        # Frozen text-encoder weights are not in checkpoints (see on_save_checkpoint).
        self.strict_loading = False

    # -- forward passes -----------------------------------------------------------------------

    def _class_logits(self, batch: TrainingBatch, *, train: bool) -> tuple[Tensor, Tensor]:
        output = self.model(batch.bags, labels=batch.target if train else None)
        logits = self.model.class_logits(output, self.class_texts)
        loss = class_loss(output, logits, batch.target) if train else F.cross_entropy(
            logits.float(), batch.target, reduction="none"
        )
        return logits, loss

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> Tensor:
        # Dropout and any other global randomness restart from (seed, epoch, step, rank) at
        # every step, so a resumed run continues exactly as an uninterrupted one.
        torch.manual_seed(step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank, 7))
        size = batch.bags.size
        if self.stage == "classes":
            _, loss = self._class_logits(batch, train=True)
        else:
            rng = np.random.default_rng(
                step_seed(self.seed, self.current_epoch, batch_idx, self.global_rank)
            )
            labels = [self.labels[self.train_report_index[int(i)]] for i in batch.index]
            step = report_step(
                labels,
                self.question_keys,
                self.model.n_prompts,
                rng,
                negatives=self.negatives,
                pool=self.pool,
                max_drop_fraction=self.max_drop_fraction,
                shuffle=self.shuffle_parts,
            )
            output = self.model(batch.bags, prompt_mask=step.prompt_mask.to(self.device))
            texts = encode_step_texts(
                self.model, step.texts, step.n_positive, grad_rest=self._grad_negatives
            )
            logits = self.model.similarity(output.embedding, texts)
            loss = contrastive_loss(logits, step.targets.to(self.device))
        if self.l2sp > 0 and self._anchor:
            from fivewsi.training.recipes import l2sp_penalty

            loss = loss + self.l2sp * l2sp_penalty(self.model, self._anchor)
        if not bool(torch.isfinite(loss.detach())):
            self._stop_on_non_finite(loss, batch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def _stop_on_non_finite(self, loss: Tensor, batch: TrainingBatch, batch_idx: int) -> None:
        """A NaN or Inf loss would turn every weight into NaN: stop the run, unfinished."""
        shown = ", ".join(batch.bags.slide_ids[:5]) + (
            " ..." if len(batch.bags.slide_ids) > 5 else ""
        )
        raise TrainError(
            f"training loss is {float(loss.detach())} (not finite) at epoch "
            f"{self.current_epoch}, step {batch_idx} (slides {shown}); the run is left "
            "unfinished and no weights are saved: lower --lr (or check the features) and train "
            "again with --overwrite"
        )

    # -- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def validation_step(self, batch: TrainingBatch, batch_idx: int) -> None:
        if self.stage == "classes":
            logits, losses = self._class_logits(batch, train=False)
            targets = batch.target
        else:
            output = self.model(batch.bags)
            logits = self.model.similarity(
                output.embedding, self.model.encode_texts(self.val_texts)
            )
            targets = self.val_targets.to(self.device)[batch.index]
            losses = F.cross_entropy(logits.float(), targets, reduction="none",
                                     ignore_index=IGNORE)
        self._val_outputs.append(
            (batch.index, logits.argmax(1), targets, losses.detach().float())
        )

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        columns = zip(*self._val_outputs, strict=True)
        index, pred, target, loss = (torch.cat(parts) for parts in columns)
        if self.trainer.world_size > 1:
            index, pred, target, loss = (
                self.all_gather(t).reshape(-1) for t in (index, pred, target, loss)
            )
            # The sampler pads shares with repeated slides: count each slide once.
            order = torch.argsort(index, stable=True)
            index, pred, target, loss = index[order], pred[order], target[order], loss[order]
            first = torch.ones_like(index, dtype=torch.bool)
            first[1:] = index[1:] != index[:-1]
            index, pred, target, loss = index[first], pred[first], target[first], loss[first]
        valid = target != IGNORE
        metrics = {
            "val/loss": loss[valid].mean() if bool(valid.any()) else loss.sum() * 0.0,
            **accuracy_metrics(pred[valid], target[valid]),
        }
        for name, value in metrics.items():
            self.log(name, value, prog_bar=name == "val/loss", rank_zero_only=False)
        self._val_outputs = []

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        groups = parameter_groups(
            self.model, lr=self.lr, text_lr_ratio=self.text_lr_ratio,
            weight_decay=self.weight_decay,
        )
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.98))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = round(total * self.warmup_epochs / max(1, self.epochs))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, warmup=warmup, total=total)
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    # -- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        excluded = {f"model.{key}" for key in self._excluded}
        state = checkpoint["state_dict"]
        for key in [k for k in state if k in excluded]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = {k for k in self.state_dict() if k.removeprefix("model.") not in self._excluded}
        missing = sorted(expected - set(checkpoint["state_dict"]))
        unexpected = sorted(set(checkpoint["state_dict"]) - set(self.state_dict()))
        if missing or unexpected:
            raise RuntimeError(
                f"checkpoint does not fit this model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )


def no_weight_decay(name: str, parameter: Tensor) -> bool:
    """Whether a parameter is exempt from weight decay, as in the released optimiser: biases,
    every parameter of at most one dimension (norm weights and biases, scalars) and the logit
    scale. Weight matrices (Linear, attention projections, LoRA) and learnable prompts decay.

    Example:
        >>> no_weight_decay("head.bias", torch.zeros(3))
        True
        >>> no_weight_decay("head.weight", torch.zeros(3, 2))
        False
    """
    return parameter.ndim <= 1 or name.endswith("bias") or "logit_scale" in name


def parameter_groups(
    model: torch.nn.Module, *, lr: float, text_lr_ratio: float, weight_decay: float
) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``decay`` / ``no_decay`` at ``lr``, and ``text`` /
    ``text_no_decay`` (the trainable text encoder: LoRA) at ``lr * text_lr_ratio``.

    Only trainable parameters, in ``named_parameters`` order; empty groups are left out. Each
    group names itself (``group``) and its parameters (``names``: plain tensors go to the
    optimiser, since named parameters need torch ≥ 2.6).
    """
    prefixes = text_encoder_prefixes(model)
    found: dict[str, list[tuple[str, Tensor]]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        text = any(name.startswith(p) for p in prefixes)
        group = ("text" if text else "decay") if not no_weight_decay(name, parameter) else (
            "text_no_decay" if text else "no_decay"
        )
        found.setdefault(group, []).append((name, parameter))
    settings = {
        "decay": (lr, weight_decay),
        "no_decay": (lr, 0.0),
        "text": (lr * text_lr_ratio, weight_decay),
        "text_no_decay": (lr * text_lr_ratio, 0.0),
    }
    return [
        {
            "params": [p for _, p in found[g]], "names": [n for n, _ in found[g]], "group": g,
            "lr": rate, "weight_decay": decay,
        }
        for g, (rate, decay) in settings.items()
        if g in found
    ]


def accuracy_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Accuracy and balanced accuracy (mean recall over the classes present in ``target``).

    Example:
        >>> m = accuracy_metrics(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
        >>> round(float(m["val/acc"]), 3), round(float(m["val/bacc"]), 3)
        (0.75, 0.833)
    """
    if target.numel() == 0:
        zero = torch.zeros((), device=target.device)
        return {"val/acc": zero, "val/bacc": zero}
    correct = (pred == target).float()
    recalls = [correct[target == c].mean() for c in torch.unique(target)]
    return {"val/acc": correct.mean(), "val/bacc": torch.stack(recalls).mean()}
