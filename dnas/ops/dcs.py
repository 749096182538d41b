"""DCS-Attention: differentiable channel selection for the attention weights
(paper section 3.2; FORMULAS.md section 3).

For tokens ``X`` (N x C) of a feature map: sampling logits ``pi = X W_pi + b_pi``;
in training a binary mask ``M = [sigmoid((pi + G1 - G2) / tau_m) > 0.5]`` with a
straight-through gradient, in inference ``M = [pi > 0]``; affinity
``A = softmax((X*M)(X*M)^T / sqrt(C))``; output ``x + BN(Conv1x1(A X))``.

The same module serves the supernet (with a width mask and the expected width, so that
a one-hot width choice equals the derived module exactly) and the derived network.

NOTE: the residual projection ``BN(Conv1x1(.))`` with BN weight 0 at init (the module
starts as the identity) and the ``1/sqrt(C)`` scale are our choices (non-local block
conventions); the paper does not give them. ``tau_m`` defaults to 1.0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnas.ops.registry import PLAIN_OPS


def gumbel_like(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like ``t``: ``-log(E)`` with ``E ~ Exp(1)``."""
    e = torch.empty_like(t).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(t.dtype).tiny).log()


@PLAIN_OPS.register("dcs")
class DCSAttention(nn.Module):
    """DCS-Attention on a (B, C, H, W) map; ``in_chs == out_chs``, ``stride == 1``.

    Args:
        in_chs, out_chs, stride: registry signature (must be C, C, 1).
        tau_m: temperature of the binary Gumbel-sigmoid mask.
    """

    def __init__(self, in_chs: int, out_chs: int | None = None, stride: int = 1, tau_m: float = 1.0):
        super().__init__()
        out_chs = in_chs if out_chs is None else out_chs
        if out_chs != in_chs or stride != 1:
            raise ValueError("DCSAttention keeps its shape: in_chs == out_chs and stride == 1")
        self.chs, self.tau_m = in_chs, tau_m
        self.pi = nn.Linear(in_chs, in_chs)  # sampling logits, arch parameters in the search
        self.proj = nn.Conv2d(in_chs, in_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(in_chs)
        nn.init.zeros_(self.bn.weight)

    def channel_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Binary channel-selection mask M (B, N, C); straight-through in training."""
        logits = self.pi(tokens)  # (B, N, C)
        if not self.training:
            return (logits > 0).to(tokens.dtype)
        soft = torch.sigmoid((logits + gumbel_like(logits) - gumbel_like(logits)) / self.tau_m)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())  # exactly binary forward, identity gradient

    def forward(self, x: torch.Tensor, width_mask: torch.Tensor | None = None,
                eff_width: torch.Tensor | float | None = None) -> torch.Tensor:
        """Args:
            x: (B, C, H, W).
            width_mask: (C,) supernet width mask applied to the residual branch.
            eff_width: expected number of active channels for the 1/sqrt(C) scale.
        """
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        k = (tokens * self.channel_mask(tokens)).unsqueeze(1)  # (B, 1, N, C) selected channels only
        width = float(c) if eff_width is None else eff_width
        if torch.is_tensor(width):  # supernet: expected width is a function of the arch logits
            q, scale = k * width.rsqrt().to(k.dtype), 1.0
        else:
            q, scale = k, 1.0 / math.sqrt(width)
        y = F.scaled_dot_product_attention(q, k, tokens.unsqueeze(1), scale=scale)
        y = y.squeeze(1).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W) = A X
        out = self.bn(self.proj(y))
        if width_mask is not None:
            out = out * width_mask.view(1, -1, 1, 1).to(out.dtype)
        return x + out
