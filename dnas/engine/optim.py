"""Optimizers and learning-rate schedules of the search (paper section 3.4: SGD on the
weights, Adam on the architecture parameters) and of retraining (section 4.2).

One parameter-group rule for every optimizer: weight decay on tensors with two or more
dimensions (conv and linear weights), none on biases and normalisation parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn


def param_groups(params: nn.Module | Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two groups by one rule: weight decay on tensors with >= 2 dims (conv/linear
    weights), none on biases and norm parameters; frozen tensors are left out.

    Args:
        params: a module (all its parameters) or an iterable of parameters.
        weight_decay: the decay of the first group.
    """
    if isinstance(params, nn.Module):
        params = params.parameters()
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, params: nn.Module | Iterable[nn.Parameter], lr: float, weight_decay: float, *,
                    momentum: float = 0.9, nesterov: bool = True, betas: Sequence[float] = (0.9, 0.999),
                    rmsprop_alpha: float = 0.9, rmsprop_eps: float = 1e-3) -> torch.optim.Optimizer:
    """``sgd`` (momentum, nesterov), ``rmsprop``, ``adam`` or ``adamw`` over :func:`param_groups`."""
    groups = param_groups(params, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=rmsprop_alpha, eps=rmsprop_eps, momentum=momentum)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=lr, betas=tuple(betas))
    raise ValueError(f"optimizer {name!r}: expected sgd, rmsprop, adam or adamw")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate at a fractional epoch: ``base``, an optional linear warm-up from
    ``warmup_factor * base`` over ``warmup_epochs``, then ``cosine`` (from the end of the
    warm-up to ``epochs``, down to ``min_lr_ratio * base``), ``step`` (x ``gamma`` at each
    of ``milestones``) or ``constant``.

    With ``warmup_factor = 1`` the warm-up is a flat start (the architecture optimizer's
    cosine that begins after the search's warm-up epochs).
    """

    base: float
    kind: str = "constant"
    epochs: float = 1.0
    warmup_epochs: float = 0.0
    warmup_factor: float = 1.0
    milestones: Sequence[float] = field(default_factory=tuple)
    gamma: float = 0.1
    min_lr_ratio: float = 0.0

    def at(self, epoch: float) -> float:
        """The learning rate of a step taken ``epoch`` epochs into the run."""
        if self.kind == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-9)
            t = min(max(epoch - self.warmup_epochs, 0.0) / span, 1.0)
            lr = self.base * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        elif self.kind == "step":
            lr = self.base * self.gamma ** sum(epoch >= m for m in self.milestones)
        elif self.kind == "constant":
            lr = self.base
        else:
            raise ValueError(f"schedule {self.kind!r}: expected cosine, step or constant")
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            lr *= self.warmup_factor + (1 - self.warmup_factor) * epoch / self.warmup_epochs
        return lr
