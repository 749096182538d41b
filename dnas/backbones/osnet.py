"""OSNet x1.0, written from its paper: Zhou, Yang, Cavallaro, Xiang, "Omni-Scale Feature
Learning for Person Re-Identification", ICCV 2019 (Table 1 and section 3).

Layout at 256x128 (the paper's Table 1): ``conv1`` 7x7/2 conv (64) + 3x3/2 max pool ->
``conv2`` 2 OS bottlenecks (256) + transition (1x1 conv, 2x2/2 average pool) -> ``conv3``
2 bottlenecks (384) + transition -> ``conv4`` 2 bottlenecks (512) -> ``conv5`` 1x1 conv
(512) -> global average pool -> fc 512 (linear + BN + ReLU): 2.2 M parameters without the
classifier, as the paper reports (tests/test_backbones.py checks it).

An OS bottleneck: 1x1 conv to a quarter of the output width, T = 4 streams where stream
t stacks t Lite 3x3 layers (pointwise 1x1 conv, then depthwise 3x3 conv, BN, ReLU: a
receptive field of 2t + 1), a unified aggregation gate (global pooling, FC to C/16,
ReLU, FC, sigmoid; one set of weights shared by the four streams) that weighs each
stream channel-wise before they are summed, a 1x1 conv back to the output width with
BN, and a residual connection (1x1 projection where the width changes), then ReLU.

The stages are separate attributes so attention modules can go after any of them
(:data:`dnas.backbones.arch.STAGES`).
"""
from __future__ import annotations

import torch
from torch import nn

STREAMS = 4
GATE_REDUCTION = 16


def conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, relu: bool = True,
            groups: int = 1) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU)."""
    layers = [nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_chs)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class LiteConv3x3(nn.Module):
    """Pointwise 1x1 conv, depthwise 3x3 conv, BN, ReLU (the paper's Fig. 3b)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.pointwise = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.depthwise = nn.Conv2d(out_chs, out_chs, 3, padding=1, groups=out_chs, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.depthwise(self.pointwise(x))))


class AggregationGate(nn.Module):
    """Channel-wise weights in (0, 1) from a stream's pooled features (shared by all streams)."""

    def __init__(self, chs: int, reduction: int = GATE_REDUCTION):
        super().__init__()
        hidden = max(chs // reduction, 1)
        self.fc1 = nn.Conv2d(chs, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(g))))


class OSBottleneck(nn.Module):
    """The omni-scale residual bottleneck (the paper's Fig. 4)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        mid = out_chs // 4
        self.reduce = conv_bn(in_chs, mid)
        self.streams = nn.ModuleList(
            nn.Sequential(*(LiteConv3x3(mid, mid) for _ in range(t))) for t in range(1, STREAMS + 1))
        self.gate = AggregationGate(mid)
        self.expand = conv_bn(mid, out_chs, relu=False)
        self.shortcut = conv_bn(in_chs, out_chs, relu=False) if in_chs != out_chs else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)  # (B, mid, H, W)
        y = sum(self.gate(stream(y)) for stream in self.streams)
        return self.act(self.expand(y) + self.shortcut(x))


def _stage(in_chs: int, out_chs: int, blocks: int, transition: bool) -> nn.Sequential:
    layers = [OSBottleneck(in_chs if i == 0 else out_chs, out_chs) for i in range(blocks)]
    if transition:  # 1x1 conv + 2x2 average pooling with stride 2
        layers += [conv_bn(out_chs, out_chs), nn.AvgPool2d(2, stride=2)]
    return nn.Sequential(*layers)


class OSNet(nn.Module):
    """OSNet trunk and its fc embedding; ``widths`` (64, 256, 384, 512) is x1.0.

    Attributes:
        num_features: the embedding width (the fc's output, 512).
    """

    def __init__(self, widths: tuple[int, int, int, int] = (64, 256, 384, 512), blocks: tuple[int, int, int] = (2, 2, 2),
                 feature_dim: int = 512):
        super().__init__()
        c1, c2, c3, c4 = widths
        self.conv1 = nn.Sequential(conv_bn(3, c1, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1))
        self.conv2 = _stage(c1, c2, blocks[0], transition=True)
        self.conv3 = _stage(c2, c3, blocks[1], transition=True)
        self.conv4 = _stage(c3, c4, blocks[2], transition=False)
        self.conv5 = conv_bn(c4, c4)
        self.fc = nn.Sequential(nn.Linear(c4, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True))
        self.num_features = feature_dim
        self.stage_channels = {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4, "conv5": c4}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The convolution stages in order, by name."""
        return [(n, getattr(self, n)) for n in ("conv1", "conv2", "conv3", "conv4", "conv5")]

    def pool_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pooling and the fc embedding: (B, C, H, W) -> (B, 512)."""
        return self.fc(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, stage in self.stages():
            x = stage(x)
        return self.pool_embed(x)


def osnet_x1_0() -> OSNet:
    """OSNet x1.0 (the paper's Table 1)."""
    return OSNet()
