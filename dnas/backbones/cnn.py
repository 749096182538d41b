"""Convolutional backbones of DCS-FB (paper section 3.3, Table I): timm's MobileNetV2,
ResNet and HRNet, and the project's OSNet, each cut into its convolution stages so that
attention modules can follow any of them.

``stage_runners(family, net)`` lists ``(stage name, callable)`` in order; a stage maps
a feature map to the next (HRNet's stages map lists of branch maps). The runners are
built on each call from the network's own submodules, so a copy of the model (EMA,
``deepcopy``) runs its own weights.

HRNet is timm's trunk without its ImageNet classification head (``head=""``: no incre
modules, downsampling or 2048-wide final layer) and the representation head of HRNetV2
(Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition",
TPAMI 2020) as the Re-ID head: every branch upsampled bilinearly to the highest
resolution and concatenated (32 + 64 + 128 + 256 = 480 channels at 1/4 for W32), then
the network's global pooling.

NOTE: the paper names HRNet-W32 without its Re-ID head; the parameter-free HRNetV2 head
is ours (docs/method.md section 9: what it gives against the paper's 32.1 M / 9.9 G).

``last_stride: 1`` (the Re-ID convention) sets the stride of the last stride-2 stage to 1:
ResNet's ``layer4`` (its first block's 3x3 conv and its projection), MobileNetV2's
160-channel stage (its first block's depthwise conv).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dnas.backbones.osnet import osnet_x1_0
from dnas.errors import SpaceError

MOBILENETV2_DEF = (("ds", 3, 1, 1, 16), ("ir", 3, 2, 6, 24), ("ir", 3, 2, 6, 32), ("ir", 3, 2, 6, 64),
                   ("ir", 3, 1, 6, 96), ("ir", 3, 2, 6, 160), ("ir", 3, 1, 6, 320))  # (type, k, stride, e, c)
MOBILENETV2_REPEATS = (1, 2, 3, 4, 3, 3, 1)


def mobilenetv2_deeper(block_repeats: list[int], **kwargs) -> nn.Module:
    """MobileNetV2 (width 1.0) with other block repeats, through timm's EfficientNet builder.

    ``block_repeats`` [1, 3, 21, 19, 18, 3, 1] is the MobileNetV2-200 of DCS-FB.
    """
    # timm on use (here and below): seconds of start-up for commands that build no fixed backbone
    from timm.layers import get_act_layer
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    arch_def = []
    for (kind, k, s, e, c), r in zip(MOBILENETV2_DEF, block_repeats):
        arch_def.append([f"{kind}_r{r}_k{k}_s{s}" + (f"_e{e}" if kind == "ir" else "") + f"_c{c}"])
    return EfficientNet(block_args=decode_arch_def(arch_def), num_features=1280, stem_size=32,
                        round_chs_fn=partial(round_channels, multiplier=1.0), norm_layer=nn.BatchNorm2d,
                        act_layer=get_act_layer("relu6"), **kwargs)


def create_cnn(backbone: str, block_repeats: list[int] | None, timm_kwargs: dict, pretrained: bool) -> nn.Module:
    """The bare network (no classifier, no pooling): timm's, or the project's OSNet.

    Args:
        backbone: timm model name or ``osnet_x1_0``.
        block_repeats: MobileNetV2 stage repeats (``None``: timm's own network).
        timm_kwargs: more arguments of ``timm.create_model``.
        pretrained: timm's own ImageNet weights (downloaded by timm).
    """
    if backbone == "osnet_x1_0":
        if pretrained:
            raise SpaceError("osnet_x1_0: timm has no weights for it; give --pretrained-file PATH")
        return osnet_x1_0()
    if backbone.startswith("osnet"):
        raise SpaceError(f"backbone {backbone!r}: only osnet_x1_0 is built in")
    import timm

    kwargs = dict(num_classes=0, global_pool="", **timm_kwargs)
    if backbone.startswith("hrnet"):
        kwargs.setdefault("head", "")  # the trunk: the Re-ID head is ours (hrnet_representation)
    if block_repeats is not None and list(block_repeats) != list(MOBILENETV2_REPEATS):
        if backbone != "mobilenetv2_100":
            raise SpaceError(f"block_repeats: applies to mobilenetv2_100 (width 1.0), not {backbone!r}")
        if pretrained:
            raise SpaceError("block_repeats: timm has no weights for a deeper MobileNetV2; give --pretrained-file")
        return mobilenetv2_deeper(block_repeats, **kwargs)
    try:
        return timm.create_model(backbone, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model (...)"
        raise SpaceError(f"backbone {backbone!r}: {str(exc).splitlines()[0]}") from None


def set_last_stride(family: str, net: nn.Module, stride: int) -> None:
    """Set the stride of the last downsampling stage (``last_stride``), in place."""
    if family == "resnet":
        block = net.layer4[0]
        conv = getattr(block, "conv2", None)
        if conv is None or conv.stride == (1, 1):  # BasicBlock: conv1 carries the stride
            conv = block.conv1
        conv.stride = (stride, stride)
        if block.downsample is not None:
            first = block.downsample[0]
            if isinstance(first, nn.Conv2d):
                first.stride = (stride, stride)
            else:  # avg-down projection: the pooling carries the stride
                first.stride = stride if stride > 1 else 1
                if stride == 1:
                    block.downsample[0] = nn.Identity()
    elif family == "mobilenetv2":
        last = [b[0] for b in net.blocks if b[0].conv_dw.stride == (2, 2)][-1]
        last.conv_dw.stride = (stride, stride)
    else:
        raise SpaceError(f"last_stride: {family} has no last-stride option")


def _hrnet_transition(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t(ys[-1]) if not isinstance(t, nn.Identity) else ys[i] for i, t in enumerate(transition)]


def hrnet_representation(ys: list[torch.Tensor]) -> torch.Tensor:
    """HRNetV2's head: every branch upsampled (bilinear) to the first's size, concatenated."""
    size = ys[0].shape[-2:]
    return torch.cat([ys[0]] + [F.interpolate(y, size=size, mode="bilinear", align_corners=False) for y in ys[1:]],
                     dim=1)


def stage_runners(family: str, net: nn.Module) -> list[tuple[str, Callable]]:
    """The network's stages in order (names as in :data:`dnas.backbones.arch.STAGES`)."""
    if family == "osnet":
        return net.stages()
    if family == "resnet":
        stem = lambda x: net.maxpool(net.act1(net.bn1(net.conv1(x))))  # noqa: E731
        return [("stem", stem)] + [(f"layer{i}", getattr(net, f"layer{i}")) for i in range(1, 5)]
    if family == "mobilenetv2":
        stem = lambda x: net.bn1(net.conv_stem(x))  # noqa: E731 - timm's bn1 carries the activation
        head = lambda x: net.bn2(net.conv_head(x))  # noqa: E731
        return [("stem", stem)] + [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)] + [("head", head)]
    if family == "hrnet":
        def stem(x):
            x = net.act1(net.bn1(net.conv1(x)))
            return net.act2(net.bn2(net.conv2(x)))

        return [("stem", stem), ("layer1", net.layer1),
                ("stage2", lambda x: net.stage2([t(x) for t in net.transition1])),
                ("stage3", lambda ys: net.stage3(_hrnet_transition(net.transition2, ys))),
                ("stage4", lambda ys: net.stage4(_hrnet_transition(net.transition3, ys))),
                ("head", hrnet_representation)]
    raise SpaceError(f"{family}: not a convolutional family")
