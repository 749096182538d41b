"""Prototypes of proposed performance changes, patched in for an A/B measurement only.

Nothing here changes the package on disk: :func:`patched` swaps methods on the
classes for the duration of a ``with`` block, so the benchmark can time the current
code and the proposal side by side in one run. :func:`check_equivalent` measures how
far a patched supernet's outputs are from the current one's.

1. **Masks folded into BatchNorm** (:func:`folded_ir_forward`, :func:`fast_dcs_forward`).
   ``bn(z) * m == batch_norm(z, weight * m, bias * m)`` for a per-channel ``m``, and
   ``relu(bn(z)) * m == relu(batch_norm(z, weight * m, bias * m))`` because the mixture
   masks are ``>= 0``. The current forward multiplies the full (B, C, H, W) activations by
   the masks after ``bn2``/``act`` and after ``bn3`` (and after the DCS ``bn``): each is a
   full-size elementwise kernel forward and backward plus one more saved activation per
   block. Folded, the masks cost a (C,)-sized multiply. The residual of a width group
   (weight 1.0) is added without the ``1.0 * x`` copy.
2. **Faster DCS-Attention** (:func:`fast_dcs_forward`): the width mask folded into the
   module's BN as in 1; in the softmax form, channels padded to a multiple of 8 for the
   fused attention kernels. (One logistic draw per mask instead of two Gumbel draws, the
   earlier part of this proposal, is now the module's own sampling.)
3. **Gumbel noise without device round trips** (:func:`batched_sample_choice`).
   ``Supernet.sample_choice(generator=...)`` calls ``logit.detach().float().cpu()`` (a
   device-to-host copy: a synchronisation) and ``.to(device)`` (a pageable host-to-device
   copy: another) for every logit, ~2 x (groups + blocks) synchronisations per step. The
   prototype draws all noise from the same CPU generator into one pinned buffer and
   copies it once with ``non_blocking=True``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dnas.models.supernet import ArchChoice, Supernet
from dnas.ops.dcs import DCSAttention, gumbel_like, linear_affinity_output
from dnas.ops.super_blocks import SuperInvertedResidual, match_channels

PROPOSALS = ("fold_masks", "dcs_fast", "batched_noise")


def masked_bn(bn: nn.BatchNorm2d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``bn(x) * mask`` computed as one batch norm with the mask folded into its affine."""
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
    momentum = 0.0 if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or not bn.track_running_stats
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight * mask, bn.bias * mask,
                        use_batch_stats, momentum, bn.eps)


def folded_ir_forward(self: SuperInvertedResidual, x: torch.Tensor, mid_mask: torch.Tensor, out_mask: torch.Tensor,
                      residual_weight, kwarg_masks=None) -> torch.Tensor:
    """:meth:`SuperInvertedResidual.forward` with the masks folded into ``bn2``/``bn3``
    (a searched kernel size, ``kwarg_masks["kernel_size"]``, weights the depthwise taps
    as the current forward does)."""
    h = self.act(self.bn1(self.pw(x)))  # (B, M, H, W)
    kernel_mask = (kwarg_masks or {}).get("kernel_size")
    if kernel_mask is None:
        h = self.dw(h)
    else:
        dw = self.dw
        h = F.conv2d(h, dw.weight * kernel_mask.to(dw.weight.dtype), None, dw.stride, dw.padding, dw.dilation,
                     dw.groups)
    h = self.act(masked_bn(self.bn2, h, mid_mask))  # relu(m * z) == m * relu(z), m >= 0
    y = masked_bn(self.bn3, self.pwl(h), out_mask)  # (B, O, H/s, W/s)
    if residual_weight is None:
        return y
    skip = match_channels(x, self.out_chs)
    if isinstance(residual_weight, float) and residual_weight == 1.0:
        return y + skip
    return y + residual_weight * skip


def fast_dcs_forward(self: DCSAttention, x: torch.Tensor, width_mask: torch.Tensor | None = None,
                     eff_width=None) -> torch.Tensor:
    """:meth:`DCSAttention.forward` with the width mask folded into ``bn``; in the softmax
    form the attention's channels are also zero-padded to a multiple of 8 (zero channels
    add nothing to ``q k^T``; the padded output channels are cut), so that the fused SDPA
    kernels (flash / memory-efficient) accept widths such as 12, 20 or 28."""
    b, c, h, w = x.shape
    k = x * self.channel_mask(x) if self.select else x  # (B, C, H, W)
    if self.form == "linear":
        y = linear_affinity_output(k.flatten(2), x.flatten(2)).view(b, c, h, w)
    else:
        k = k.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C)
        width = float(c) if eff_width is None else eff_width
        if torch.is_tensor(width):
            q, scale = k * width.rsqrt().to(k.dtype), 1.0
        else:
            q, scale = k, 1.0 / math.sqrt(width)
        v = x.flatten(2).transpose(1, 2).unsqueeze(1)
        pad = -c % 8
        if pad:
            q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=scale)[..., :c].squeeze(1)  # (B, N, C)
        y = y.transpose(1, 2).reshape(b, c, h, w)
    out = self.bn(self.proj(y)) if width_mask is None else masked_bn(self.bn, self.proj(y), width_mask)
    return x + out


def batched_sample_choice(self: Supernet, tau: float, hard: bool = False,
                          generator: torch.Generator | None = None) -> ArchChoice:
    """:meth:`Supernet.sample_choice` with one noise draw and at most one host-to-device copy."""
    by_axis = _logits_by_axis(self)
    logits = [t for ts in by_axis.values() for t in ts]
    sizes = [t.numel() for t in logits]
    dev = logits[0].device
    if generator is None:
        noise = gumbel_like(torch.empty(sum(sizes), device=dev))
    else:
        cpu = gumbel_like(torch.empty(sum(sizes)), generator)
        if dev.type == "cuda":
            noise = cpu.pin_memory().to(dev, non_blocking=True)
        else:
            noise = cpu
    out = []
    for logit, g in zip(logits, noise.split(sizes)):
        soft = torch.softmax((logit + g.to(logit.dtype)) / tau, dim=0)
        if hard:
            onehot = torch.zeros_like(soft).scatter_(0, soft.argmax().view(1), 1.0)
            soft = onehot + (soft - soft.detach())
        out.append(soft)
    it = iter(out)
    return _choice({axis: [next(it) for _ in ts] for axis, ts in by_axis.items()})


def _logits_by_axis(net: Supernet) -> dict[str, list[torch.Tensor]]:
    """``{axis: [logits]}`` (``Supernet.logits()``; ``_logits()`` of the width/expansion-only supernet)."""
    if callable(getattr(net, "logits", None)):
        return net.logits()
    w, e = net._logits()
    return {"width": w, "expansion": e}


def _choice(by_axis: dict[str, list[torch.Tensor]]) -> ArchChoice:
    """An :class:`ArchChoice` of ``{axis: weights}`` (a dict, or the width/expansion pair)."""
    if issubclass(ArchChoice, dict):
        return ArchChoice(by_axis)
    return ArchChoice(by_axis["width"], by_axis["expansion"])


_PATCHES = {
    "fold_masks": [(SuperInvertedResidual, "forward", folded_ir_forward)],
    "dcs_fast": [(DCSAttention, "forward", fast_dcs_forward)],
    "batched_noise": [(Supernet, "sample_choice", batched_sample_choice)],
}


@contextlib.contextmanager
def patched(names=PROPOSALS) -> Iterator[None]:
    """Swap in the named proposals for the duration of the block."""
    saved = []
    try:
        for name in names:
            for cls, attr, fn in _PATCHES[name]:
                saved.append((cls, attr, cls.__dict__[attr]))
                setattr(cls, attr, fn)
        yield
    finally:
        for cls, attr, old in reversed(saved):
            setattr(cls, attr, old)


def check_equivalent(net: Supernet, x: torch.Tensor) -> float:
    """Max difference, relative to the output scale, between the current supernet and the
    patched one (eval mode, fp32, one fixed choice): ~1e-6 when they agree."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            choice = net.sample_choice(1.0, generator=torch.Generator().manual_seed(0))
            ref = net(x, choice, return_features=True)["embedding"].float()
            with patched():
                new = net(x, choice, return_features=True)["embedding"].float()
    finally:
        net.train(was_training)
    return float((new - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
