"""Plain ops of derived networks: conv-BN-ReLU and the inverted residual (paper Tables
III/IV "bottleneck": 1x1 expand, 3x3 depthwise, 1x1 project, BN, ReLU).

NOTE: the 1x1 expansion conv is always present, also for expansion 1 (MobileNetV2 drops
it there); keeping it gives every block the same structure in the supernet and in the
derived net, at the cost of one 16x16 1x1 conv in row 1.

NOTE: FBNetV2 uses h-swish in its later stages; every block here uses ReLU (the
measured tables and equivalences are for ReLU; docs/method.md section 1).
"""
from __future__ import annotations

import torch
from torch import nn

from dnas.ops.registry import PLAIN_OPS


@PLAIN_OPS.register("conv_bn_relu")
class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, kernel_size: int = 3,
                 groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        if act:
            self.act = nn.ReLU(inplace=True)


@PLAIN_OPS.register("ir")
class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual; residual add when ``stride == 1`` and ``in == out``.

    Args:
        in_chs, out_chs, stride: the registry signature.
        mid_chs: width of the expanded (depthwise) part.
        kernel_size: depthwise kernel.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, mid_chs: int, kernel_size: int = 3):
        super().__init__()
        self.in_chs, self.out_chs, self.mid_chs, self.stride = in_chs, out_chs, mid_chs, stride
        self.has_residual = stride == 1 and in_chs == out_chs
        self.pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.dw = nn.Conv2d(mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.pw(x)))  # (B, mid, H, W)
        h = self.act(self.bn2(self.dw(h)))  # (B, mid, H/s, W/s)
        y = self.bn3(self.pwl(h))  # (B, out, H/s, W/s)
        return y + x if self.has_residual else y
