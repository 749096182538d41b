"""The front door for models: reading an architecture and building its network (paper
sections 3.2-3.3: a derived FBNetV2 arch, or a fixed backbone with DCS-Attention).

:func:`read_arch` is the one reader of architectures: a path (an ``arch.yaml``, a
``dnas-derive`` directory), a short name of :data:`dnas.resources.SHORT_NAMES` (a
DCS-FB backbone, ``resnet50``, ...), a space name or path (refused unless derived), or a
dict. :func:`build_model` builds either form (:class:`~dnas.models.plain.PlainNet` or a
:mod:`dnas.backbones` network); :func:`load_derived` loads a ``dnas-derive`` directory
with its weights and :func:`load_run_model` a training run's checkpoint. Exporting
(ONNX, the derived directory) is :mod:`dnas.export`; loading weights :mod:`dnas.weights`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from dnas.backbones import BackboneArch, build_backbone_model, is_backbone_arch
from dnas.errors import CheckpointError, DnasError, SpaceError
from dnas.io import safe_torch_load
from dnas.models.plain import PlainNet
from dnas.resources import short_name_path, short_names
from dnas.space import SearchSpace, resolve_space_path
from dnas.strict_yaml import read_yaml
from dnas.weights import load_run_weights, load_weights


def read_arch(arch: Any, **changes) -> dict:
    """The validated arch dict of a derived or fixed-backbone arch.

    Args:
        arch: an ``arch.yaml`` path, a ``dnas-derive`` directory, a backbone short name
            (``resnet50``, ... : the shipped ``backbones/NAME.yaml``), a dict, a
            :class:`SearchSpace` or a :class:`BackboneArch`.
        changes: keys to replace before validation (``None`` values are ignored).

    Raises:
        SpaceError: not found, unreadable, invalid, or a space that still lists options.
    """
    if isinstance(arch, SearchSpace):
        data, source = copy.deepcopy(arch.data), arch.source
    elif isinstance(arch, BackboneArch):
        data, source = arch.to_dict(), arch.source
    elif isinstance(arch, Mapping):
        data, source = copy.deepcopy(dict(arch)), "<arch dict>"
    else:
        path = None if Path(str(arch)).exists() else short_name_path(str(arch), "backbones")  # a local path first
        if path is None:
            try:
                path = resolve_space_path(arch)
            except SpaceError:
                raise SpaceError(f"{arch}: architecture file not found (nor a backbone short name: "
                                 f"{', '.join(short_names('backbones'))})") from None
        data = read_yaml(path, SpaceError, "an arch file")
        if not isinstance(data, dict):
            raise SpaceError(f"{path}: expected a mapping at the top level")
        source = str(path)
    data.update({k: v for k, v in changes.items() if v is not None})
    if is_backbone_arch(data):
        return BackboneArch(data, source).to_dict()
    if not SearchSpace.from_dict(data, source).is_derived:
        raise SpaceError(f"{source}: not a derived architecture (some field still lists several options); "
                         "run dnas-derive first")
    return data


def arch_spec(arch: Any) -> SearchSpace | BackboneArch:
    """A :class:`SearchSpace` (derived FBNetV2 arch) or a :class:`BackboneArch`."""
    if isinstance(arch, (SearchSpace, BackboneArch)):
        if not arch.is_derived:
            raise SpaceError(f"{arch.source}: not a derived architecture (some field still lists several options)")
        return arch
    source = "<arch dict>" if isinstance(arch, Mapping) else str(arch)
    data = read_arch(arch)
    return BackboneArch(data, source) if is_backbone_arch(data) else SearchSpace.from_dict(data, source)


def build_model(arch: Any, num_classes: int | None = None, attention: str | bool | None = None,
                pretrained: bool = False, pretrained_file: str | None = None) -> nn.Module:
    """A fresh network of a derived or fixed-backbone arch.

    Args:
        arch: anything :func:`read_arch` takes.
        num_classes: classifier outputs (default: the arch's).
        attention: ``none``, ``self`` or ``dcs`` (default: the arch's; a bool is the
            legacy ``use_dcs``).
        pretrained, pretrained_file: fixed backbones only: timm's ImageNet weights, or a
            local checkpoint of the plain backbone (loaded strictly; the network keeps
            the report as ``pretrained_report``).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise DnasError(f"num_classes {num_classes!r}: expected a positive integer")
    spec = arch_spec(arch)
    if isinstance(spec, SearchSpace):
        if pretrained or pretrained_file:
            raise DnasError(f"{spec.source}: pretrained weights apply to fixed backbones; "
                            "a derived FBNetV2 net takes --pretrained in dnas-retrain")
        return PlainNet(spec, num_classes=num_classes, attention=attention)
    return build_backbone_model(spec, num_classes=num_classes, attention=attention, pretrained=pretrained,
                                pretrained_file=pretrained_file)


def load_derived(directory: str | Path) -> nn.Module:
    """The plain network of a ``dnas-derive`` directory with its weights, in eval mode."""
    directory = Path(directory)
    model = build_model(directory)
    state = safe_torch_load(directory / "model.pt")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{directory / 'model.pt'}: expected a state dict")
    load_weights(model, state, str(directory / "model.pt"))
    return model.eval()


def load_run_model(run: str | Path, which: str = "last", ema: bool = True,
                   kind: str | None = None) -> tuple[nn.Module, str]:
    """The network of a training run's checkpoint (:func:`dnas.weights.load_run_weights`),
    built from the run's ``arch.yaml``.

    Args:
        run: a run directory or a checkpoint file in one.
        which, ema, kind: as :func:`dnas.weights.load_run_weights`.

    Returns:
        ``(model, description of the weights read)``; the model is in training mode.
    """
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    state, source = load_run_weights(run, which, ema, kind)
    model = build_model(run_dir / "arch.yaml")
    load_weights(model, state, source)
    return model, source
