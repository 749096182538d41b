"""DCS-FB: DCS-Attention in fixed backbones (paper section 3.3, Table I).

``build_backbone_model(arch)`` builds a :class:`BackboneArch` (the ``backbone`` form of
an arch file, :mod:`dnas.backbones.arch`) as a CNN with attention after its stages
(:class:`BackboneNet`: timm's MobileNetV2, ResNet, HRNet, the project's OSNet x1.0) or
as TransReID with DCS-Attention in every block (:class:`TransReIDNet`). Shipped arch
files: ``backbones/*.yaml``, by short name (:data:`dnas.resources.SHORT_NAMES`); the
one reader of arch files is :func:`dnas.architectures.read_arch`.
"""
from __future__ import annotations

from dnas.backbones.arch import STAGES, BackboneArch, is_backbone_arch
from dnas.backbones.model import BackboneNet
from dnas.backbones.vit import TransReIDNet


def build_backbone_model(arch: BackboneArch, num_classes: int | None = None, attention=None,
                         pretrained: bool = False, pretrained_file: str | None = None):
    """A fresh DCS-FB network.

    Args:
        arch: the validated arch.
        num_classes: classifier outputs (default: the arch's).
        attention: ``none``, ``self`` or ``dcs`` (default: the arch's).
        pretrained: timm's own ImageNet weights for the backbone (a download).
        pretrained_file: a local checkpoint of the plain backbone, loaded strictly
            (:func:`dnas.backbones.weights.load_backbone_weights`); the network keeps the
            report as ``pretrained_report``.
    """
    cls = TransReIDNet if arch.family == "vit" else BackboneNet
    return cls(arch, num_classes=num_classes, attention=attention, pretrained=pretrained,
               pretrained_file=pretrained_file)


__all__ = ["BackboneArch", "BackboneNet", "STAGES", "TransReIDNet", "build_backbone_model", "is_backbone_arch"]
