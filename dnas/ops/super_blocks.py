"""Super-ops: one op at the largest widths whose channels are masked by a Gumbel-softmax
mixture over width options (FBNetV2 channel masking with weight sharing; docs/method.md
section 2): ``y = b(x) * sum_i g_i 1_{k_i}``.

Op keyword arguments searched as a choice axis are masked the same way on the weight:
the depthwise kernel of a block with kernel options {3, 5} is one 5x5 weight multiplied
by ``sum_i g_i 1_{k_i x k_i centre}`` (:func:`kernel_masks`), so the 3x3 choice is the
centre of the 5x5 weight, zero-padded (a weight-shared kernel as in OFA's elastic
kernel, without OFA's kernel transformation matrices; NOTE in docs/method.md section 2).

A super-op shares parameter names with its plain twin, so the plain op's weights are
the leading slices (channels) and centre crops (kernels) of the super-op's (see
:func:`dnas.models.derive.slice_state_dict`). With a one-hot choice the super-op and the
plain op compute the same function.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dnas.ops.blocks import InvertedResidual
from dnas.ops.registry import SUPER_OPS


def option_masks(options: tuple[int, ...], max_chs: int) -> torch.Tensor:
    """(K, max_chs) float matrix whose row i has ones on the first ``options[i]`` channels."""
    k = torch.tensor(options).unsqueeze(1)
    return (torch.arange(max_chs).unsqueeze(0) < k).float()


def kernel_masks(options: tuple[int, ...], max_size: int) -> torch.Tensor:
    """(K, max_size, max_size) float masks: row i is one on the centre ``options[i]`` square.

    Odd sizes only (validated by the space), so every square is centred exactly.
    """
    pos = (torch.arange(max_size) - max_size // 2).abs()  # distance from the centre
    half = torch.tensor(options).view(-1, 1) // 2  # (K, 1)
    inside = (pos.unsqueeze(0) <= half).float()  # (K, max_size)
    return inside.unsqueeze(2) * inside.unsqueeze(1)


# op keyword argument -> the masks of its options (K, ...), for the super-op's weights
KWARG_MASKS = {"kernel_size": kernel_masks}


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
        kernel_size: largest depthwise kernel.
    """

    def forward(self, x: torch.Tensor, mid_mask: torch.Tensor, out_mask: torch.Tensor,
                residual_weight: torch.Tensor | float | None,
                kwarg_masks: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Args:
            x: (B, in_chs, H, W), already masked by the previous width choice.
            mid_mask: (mid_chs,) mixture mask of the expansion choice.
            out_mask: (out_chs,) mixture mask of the width choice.
            residual_weight: ``None`` (no residual), 1.0 (input and output share a
                width choice) or the probability that the two widths are equal.
            kwarg_masks: mixture masks of searched keyword arguments:
                ``kernel_size``: (k, k) weights of the depthwise kernel's taps.
        """
        h = self.act(self.bn1(self.pw(x)))  # (B, M, H, W)
        kernel_mask = (kwarg_masks or {}).get("kernel_size")
        if kernel_mask is None:
            h = self.dw(h)
        else:  # (M, 1, k, k) weight times the (k, k) mixture of centred squares
            dw = self.dw
            h = F.conv2d(h, dw.weight * kernel_mask.to(dw.weight.dtype), None, dw.stride, dw.padding, dw.dilation,
                         dw.groups)
        h = self.act(self.bn2(h))  # (B, M, H/s, W/s); depthwise: one mask suffices
        h = h * mid_mask.view(1, -1, 1, 1).to(h.dtype)
        y = self.bn3(self.pwl(h)) * out_mask.view(1, -1, 1, 1).to(h.dtype)  # (B, O, H/s, W/s)
        if residual_weight is None:
            return y
        return y + residual_weight * match_channels(x, self.out_chs)
