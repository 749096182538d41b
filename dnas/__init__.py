"""dnas: DCS-DNAS, differentiable architecture search with DCS-Attention for person Re-ID.

Public API for users:
    dnas.load_space(name_or_path)          -> SearchSpace (``tiny``, ``fbnetv2``, ``large``, ``xlarge`` or a YAML path)
    dnas.build_model(arch, num_classes=..) -> a fresh plain nn.Module of a derived arch (YAML path or dict),
                                              or of a fixed backbone with attention (DCS-FB: ``resnet50``, ...)
    dnas.load_derived(dir)                 -> the plain nn.Module of a ``dnas-derive`` output, in eval mode
"""
from __future__ import annotations

from dnas.space import load_space
from dnas.version import __version__


def build_model(arch, num_classes: int | None = None, attention: str | bool | None = None,
                pretrained: bool = False, pretrained_file: str | None = None):
    """Build a fresh network from a derived arch (YAML path, directory or dict) or a
    fixed-backbone arch (a DCS-FB short name: ``mobilenetv2``, ``mobilenetv2_200``,
    ``resnet50``, ``hrnet_w32``, ``osnet_x1_0``, ``transreid``, or its YAML).

    ``attention`` (``none``, ``self`` or ``dcs``) overrides the arch's; a bool is the
    legacy ``use_dcs``. Fixed backbones only: ``pretrained`` (timm's weights) or
    ``pretrained_file`` (a local checkpoint of the plain backbone, loaded strictly).
    """
    # imported on use: every command imports this package, and --help must not load torch
    from dnas.architectures import build_model as _build

    return _build(arch, num_classes=num_classes, attention=attention, pretrained=pretrained,
                  pretrained_file=pretrained_file)


def load_derived(directory):
    """Load a ``dnas-derive`` output directory: the plain network with its weights, in eval mode."""
    from dnas.architectures import load_derived as _load  # on use, as above

    return _load(directory)


__all__ = ["__version__", "load_space", "build_model", "load_derived"]
