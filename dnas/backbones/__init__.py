"""DCS-FB: DCS-Attention in fixed backbones (paper section 3.3, Table I).

``build_backbone_model(arch)`` builds a :class:`BackboneArch` (the ``backbone`` form of
an arch file, :mod:`dnas.backbones.arch`) as a CNN with attention after its stages
(:class:`BackboneNet`: timm's MobileNetV2, ResNet, HRNet, the project's OSNet x1.0) or
as TransReID with DCS-Attention in every block (:class:`TransReIDNet`). Shipped arch
files: ``backbones/*.yaml``, by short name (:data:`SHORT_NAMES`).
"""
from __future__ import annotations

from dnas.backbones.arch import SHORT_NAMES, STAGES, BackboneArch, backbone_arch_path, is_backbone_arch


def build_backbone_model(arch: BackboneArch, num_classes: int | None = None, attention=None,
                         pretrained: bool = False, pretrained_file: str | None = None):
    """A fresh DCS-FB network.

    Args:
        arch: the validated arch.
        num_classes: classifier outputs (default: the arch's).
        attention: ``none``, ``self`` or ``dcs`` (default: the arch's).
        pretrained: timm's own ImageNet weights for the backbone (a download).
        pretrained_file: a local checkpoint of the plain backbone, loaded strictly
            (:func:`dnas.backbones.weights.load_backbone_weights`); the report is kept as
            ``model.pretrained_report``.
    """
    if arch.family == "vit":
        from dnas.backbones.vit import TransReIDNet as cls
    else:
        from dnas.backbones.model import BackboneNet as cls
    model = cls(arch, num_classes=num_classes, attention=attention, pretrained=pretrained)
    model.pretrained_report = None
    if pretrained and hasattr(model, "init_jpm_from_last_block"):
        model.init_jpm_from_last_block()
    if pretrained_file:
        from dnas.backbones.weights import load_backbone_weights

        model.pretrained_report = load_backbone_weights(model, pretrained_file)
    elif pretrained:
        model.pretrained_report = {"source": f"timm:{arch.backbone}", "loaded": len(model.backbone.state_dict()),
                                   "new": sorted(k for k in model.state_dict() if not k.startswith("backbone.")),
                                   "copied": []}
    return model


__all__ = ["BackboneArch", "SHORT_NAMES", "STAGES", "backbone_arch_path", "build_backbone_model",
           "is_backbone_arch"]
