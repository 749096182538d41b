"""Super-ops: one op at the largest widths whose channels are masked by a Gumbel-softmax
mixture over width options (FBNetV2 channel masking with weight sharing; docs/method.md
section 2): ``y = b(x) * sum_i g_i 1_{k_i}``.

A super-op shares parameter names with its plain twin, so the plain op's weights are
the leading slices of the super-op's (see :func:`dnas.models.derive.slice_state_dict`).
With a one-hot choice the super-op and the plain op compute the same function.
"""
from __future__ import annotations

import torch
from torch import nn

from dnas.ops.blocks import InvertedResidual
from dnas.ops.registry import SUPER_OPS


def option_masks(options: tuple[int, ...], max_chs: int) -> torch.Tensor:
    """(K, max_chs) float matrix whose row i has ones on the first ``options[i]`` channels."""
    k = torch.tensor(options).unsqueeze(1)
    return (torch.arange(max_chs).unsqueeze(0) < k).float()


def match_channels(x: torch.Tensor, chs: int) -> torch.Tensor:
    """Zero-pad or cut the channel dim of (B, C, H, W) to ``chs`` (for residual adds)."""
    c = x.shape[1]
    if c == chs:
        return x
    if c > chs:
        return x[:, :chs]
    return nn.functional.pad(x, (0, 0, 0, 0, 0, chs - c))


@SUPER_OPS.register("ir")
class SuperInvertedResidual(InvertedResidual):
    """Inverted residual at max widths with masked mid and output channels.

    The layers are the plain :class:`InvertedResidual`'s (so parameter names match its
    plain twin); only ``forward`` differs. The residual is decided per call.

    Args:
        in_chs: largest input width (the input arrives already masked).
        out_chs: largest output width.
        stride: 1 or 2.
        mid_chs: largest mid width.
        kernel_size: depthwise kernel.
    """

    def forward(self, x: torch.Tensor, mid_mask: torch.Tensor, out_mask: torch.Tensor,
                residual_weight: torch.Tensor | float | None) -> torch.Tensor:
        """Args:
            x: (B, in_chs, H, W), already masked by the previous width choice.
            mid_mask: (mid_chs,) mixture mask of the expansion choice.
            out_mask: (out_chs,) mixture mask of the width choice.
            residual_weight: ``None`` (no residual), 1.0 (input and output share a
                width choice) or the probability that the two widths are equal.
        """
        h = self.act(self.bn1(self.pw(x)))  # (B, M, H, W)
        h = self.act(self.bn2(self.dw(h)))  # (B, M, H/s, W/s); depthwise: one mask suffices
        h = h * mid_mask.view(1, -1, 1, 1).to(h.dtype)
        y = self.bn3(self.pwl(h)) * out_mask.view(1, -1, 1, 1).to(h.dtype)  # (B, O, H/s, W/s)
        if residual_weight is None:
            return y
        return y + residual_weight * match_channels(x, self.out_chs)
