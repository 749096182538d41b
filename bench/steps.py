"""One training or inference step of each kind, as closures over a model, its
optimizer and one fixed batch (no host synchronisation inside a step, apart from what
the library code itself does).

- the supernet **weight step** (:meth:`dnas.engine.Engine.train_step` of the
  :class:`dnas.search.loop.Searcher`, phase ``weights``): Gumbel-softmax mixture choice, forward with features, CE (label
  smoothing 0.1) + batch-hard triplet (0.3) + 0.1 * IBB (tracker warmed by one epoch
  on the batch), backward, gradient clipping at 5, Nesterov SGD on the weights;
- the supernet **architecture step** (phase ``arch``): the same forward with the IB
  bound, the expected latency (:class:`dnas.latency.cost.LatencyModel`) combined by
  :class:`dnas.latency.loss.LatencyLoss` (multiplicative, the recipes' default),
  backward, clipping, Adam on the architecture parameters; the variant
  ``arch_grad_only`` asks autograd for the architecture gradients alone (a proposal:
  the loop's ``loss.backward()`` also computes every weight gradient and drops it);
- the **plain Re-ID step** of a derived / static net (``dnas-retrain``'s loss: CE +
  triplet + IBB) with SGD on every parameter;
- the **CE step** and **inference step** (for the timm comparison).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bench.common import BenchSettings
from dnas.engine import build_optimizer
from dnas.losses import ReIDLoss, cross_entropy_smooth

TAU = 5.0  # the recipes' tau0: the first epochs of a search
IB_ETA = 0.1
CLIP = 5.0


def warm_loss(forward: Callable[[], dict], labels: torch.Tensor, num_classes: int) -> ReIDLoss:
    """The loops' Re-ID loss (:class:`dnas.losses.ReIDLoss`, eta 0.1) with an IB tracker whose
    centroids and Q come from one epoch made of one batch."""
    loss = ReIDLoss(num_classes, ib_eta=IB_ETA)
    with torch.no_grad():
        out = forward()
        loss.ib.update(out["global_feat"].float(), out["ib_input"].float(), labels)
    loss.ib.end_epoch(all_reduce=None)
    return loss


def sgd(params) -> torch.optim.Optimizer:
    """The search's weight optimizer (lr 0.1 per 256 images, momentum 0.9, Nesterov, the
    engine's weight-decay rule)."""
    return build_optimizer("sgd", params, 0.1, 4e-5, momentum=0.9, nesterov=True)


@dataclass
class SearchSteps:
    """The supernet's step closures (``arch`` ones are ``None`` without a latency model)."""

    net: nn.Module
    weights: Callable[[], None]
    arch: Callable[[], None] | None
    arch_grad_only: Callable[[], None] | None


def build_search_steps(net: nn.Module, settings: BenchSettings, x: torch.Tensor, labels: torch.Tensor,
                       latency=None, latency_loss=None, forward_model: nn.Module | None = None,
                       seed: int = 0) -> SearchSteps:
    """Step closures of a :class:`dnas.models.Supernet` already on the device.

    Args:
        net: the supernet (parameters partitioned by ``arch_parameters()``).
        settings: autocast and device.
        x, labels: the batch.
        latency: a :class:`LatencyModel` (``None``: no architecture step).
        latency_loss: a :class:`LatencyLoss`.
        forward_model: what to call for the forward (a compiled ``net``; default ``net``).
        seed: of the CPU generator of the Gumbel noise (as the loop's).
    """
    model = forward_model if forward_model is not None else net
    w_params, a_params = list(net.weight_parameters()), list(net.arch_parameters())
    w_opt = sgd(w_params)
    a_opt = torch.optim.Adam(a_params, lr=0.01, betas=(0.9, 0.999), weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed + 7919)

    def forward(choice, module: nn.Module = model) -> dict:
        with settings.autocast():
            return module(x, choice, return_features=True)

    # eager warm-up of the IB tracker (a compiled model would otherwise compile a no-grad graph too)
    reid = warm_loss(lambda: forward(net.sample_choice(TAU, generator=gen), net), labels, settings.num_classes)

    def weights() -> None:
        choice = net.sample_choice(TAU, generator=gen)
        loss, _ = reid(forward(choice), labels, labels, accumulate=True)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(w_params, CLIP)
        w_opt.step()

    def arch_loss() -> torch.Tensor:
        choice = net.sample_choice(TAU, generator=gen)
        task, _ = reid(forward(choice), labels, labels, accumulate=False)
        return latency_loss(task, latency.expected_ms(choice))

    def arch() -> None:
        loss = arch_loss()
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(a_params, CLIP)
        a_opt.step()

    def arch_grad_only() -> None:
        loss = arch_loss()
        grads = torch.autograd.grad(loss, a_params, allow_unused=True)
        for p, g in zip(a_params, grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(a_params, CLIP)
        a_opt.step()

    has_arch = latency is not None
    return SearchSteps(net, weights, arch if has_arch else None, arch_grad_only if has_arch else None)


def build_plain_step(net: nn.Module, settings: BenchSettings, x: torch.Tensor, labels: torch.Tensor,
                     forward_model: nn.Module | None = None) -> Callable[[], None]:
    """Re-ID training step of a :class:`dnas.models.PlainNet` (CE + triplet + IBB, SGD)."""
    model = forward_model if forward_model is not None else net
    params = [p for p in net.parameters() if p.requires_grad]
    opt = sgd(params)

    def forward() -> dict:
        with settings.autocast():
            return model(x, return_features=True)

    reid = warm_loss(forward, labels, settings.num_classes)

    def step() -> None:
        loss, _ = reid(forward(), labels, labels, accumulate=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()

    return step


def build_ce_step(model: nn.Module, settings: BenchSettings, x: torch.Tensor,
                  labels: torch.Tensor) -> Callable[[], None]:
    """Plain classification step (logits only, CE with label smoothing, SGD)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = sgd(params)

    def step() -> None:
        with settings.autocast():
            logits = model(x)
        loss = cross_entropy_smooth(logits.float(), labels, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def build_infer_step(model: nn.Module, settings: BenchSettings, x: torch.Tensor) -> Callable[[], None]:
    """Inference forward (eval mode, ``torch.inference_mode``, autocast as configured)."""
    model.eval()

    def step() -> None:
        with torch.inference_mode(), settings.autocast():
            model(x)

    return step
