"""Deriving a plain network from the supernet (FBNetV2 weight sharing, docs/method.md
section 2): the plain op's tensors are the leading slices of the super-op's tensors in
the channel dims (first ``out`` output channels, first ``in`` input channels, first
``mid`` depthwise channels, ...), because the masks keep the first ``k`` channels of
each width, and the centre crops in the kernel dims of a convolution weight (a 3x3
choice is the centre of the supernet's 5x5 depthwise weight, the square its kernel mask
keeps).
"""
from __future__ import annotations

from typing import Mapping

import torch

from dnas.errors import CheckpointError
from dnas.models.plain import PlainNet
from dnas.models.supernet import Supernet
from dnas.space import SearchSpace


CHANNEL_DIMS = 2  # (out, in) of a conv weight; the dims after them are kernel dims


def slice_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` tensors cut to the shapes of the ``target`` tensors of the same name.

    Channel dims (the first two) keep their leading entries; the kernel dims of a 4-D
    convolution weight keep their centre (the size difference must be even).

    Raises:
        CheckpointError: a target key is missing in ``source``, is larger in some dim,
            or a kernel dim cannot be cut around its centre.
    """
    out = {}
    for key, t in target.items():
        if key not in source:
            raise CheckpointError(f"weights lack key {key!r}")
        s = source[key]
        if s.dim() != t.dim() or any(a < b for a, b in zip(s.shape, t.shape)):
            raise CheckpointError(f"key {key!r}: source shape {tuple(s.shape)} cannot be sliced to {tuple(t.shape)}")
        cut = []
        for d, (a, n) in enumerate(zip(s.shape, t.shape)):
            if d < CHANNEL_DIMS or s.dim() != 4:
                cut.append(slice(0, n))
            elif (a - n) % 2:
                raise CheckpointError(f"key {key!r}: kernel dim {d} of size {a} has no centre of size {n}")
            else:
                cut.append(slice((a - n) // 2, (a - n) // 2 + n))
        out[key] = s[tuple(cut)].clone()
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
