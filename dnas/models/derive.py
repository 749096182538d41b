"""Deriving a plain network from the supernet (FBNetV2 weight sharing, docs/method.md
section 2): the plain op's tensors are the leading slices of the super-op's tensors
(first ``out`` output channels, first ``in`` input channels, first ``mid`` depthwise
channels, ...), because the masks keep the first ``k`` channels of each width.
"""
from __future__ import annotations

from typing import Mapping

import torch

from dnas.errors import CheckpointError
from dnas.models.plain import PlainNet
from dnas.models.supernet import Supernet
from dnas.space import SearchSpace


def slice_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leading slices of ``source`` tensors shaped like the ``target`` tensors of the same name.

    Raises:
        CheckpointError: a target key is missing in ``source`` or is larger in some dim.
    """
    out = {}
    for key, t in target.items():
        if key not in source:
            raise CheckpointError(f"weights lack key {key!r}")
        s = source[key]
        if s.dim() != t.dim() or any(a < b for a, b in zip(s.shape, t.shape)):
            raise CheckpointError(f"key {key!r}: source shape {tuple(s.shape)} cannot be sliced to {tuple(t.shape)}")
        out[key] = s[tuple(slice(0, n) for n in t.shape)].clone()
    return out


def derive_arch(supernet: Supernet, indices: dict | None = None, name: str | None = None) -> dict:
    """The derived-arch dict for ``indices`` (default: argmax of the logits)."""
    indices = supernet.argmax_indices() if indices is None else indices
    return supernet.space.arch_from_indices(indices, num_classes=supernet.num_classes, name=name,
                                            attention=supernet.attention, bnneck=supernet.bnneck)


def derive_plain(supernet: Supernet, indices: dict | None = None, name: str | None = None) -> tuple[dict, PlainNet]:
    """Build the plain net of ``indices`` with weights sliced from ``supernet``.

    Returns:
        ``(arch_dict, plain_net)``; the plain net is in the supernet's train/eval mode.
    """
    arch = derive_arch(supernet, indices, name)
    plain = PlainNet(SearchSpace.from_dict(arch, f"<derived from {supernet.space.name}>"))
    plain.load_state_dict(slice_state_dict(supernet.state_dict(), plain.state_dict()))
    plain.train(supernet.training)
    return arch, plain
