"""Plain derived networks: a derived architecture (every choice a scalar) built from
plain ops, with DCS-Attention modules after the rows that the arch marks.

Module names mirror :class:`dnas.models.supernet.Supernet` (``stem``, ``blocks.i``,
``dcs.<row>``, ``head``), so weights inherited from a supernet are leading slices of its
tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from dnas.errors import SpaceError
from dnas.ib import input_representation
from dnas.memory import check_build
from dnas.models.head import ClassifierHead
from dnas.ops.blocks import ConvBNReLU
from dnas.ops.dcs import DCSAttention
from dnas.ops.registry import PLAIN_OPS
from dnas.space import SearchSpace
from dnas.space.schema import resolve_attention


def stage_ends(space: SearchSpace) -> dict[int, int]:
    """Map the index of each row's last block to the row index."""
    return {max(b.index for b in space.blocks if b.stage == s): s for s in range(len(space.stages))}


class PlainNet(nn.Module):
    """A derived network.

    Args:
        arch: a derived :class:`SearchSpace` (``arch.is_derived``).
        num_classes: classifier outputs (default: the arch's ``num_classes``).
        attention: ``none``, ``self`` or ``dcs`` modules at the rows the arch marks
            (default: the arch's ``attention``; a bool is the legacy ``use_dcs``).
        bnneck: BN on the embedding before the classifier (default: the arch's).
    """

    def __init__(self, arch: SearchSpace, num_classes: int | None = None, attention: str | bool | None = None,
                 bnneck: bool | None = None):
        super().__init__()
        if not arch.is_derived:
            raise SpaceError(f"{arch.source}: not a derived architecture (some field still lists several options)")
        self.arch = arch
        self.attention = resolve_attention(arch.attention, attention)
        self.num_classes = int(num_classes or arch.num_classes)
        check_build(arch, self.num_classes, self.attention, "network")  # before any tensor is made
        stem = arch.stem
        self.stem = ConvBNReLU(3, stem["out_chs"], stem["stride"], kernel_size=stem["kernel_size"])
        self.blocks = nn.ModuleList(
            PLAIN_OPS.build(b.op, b.in_options[0], b.out_options[0], b.stride, mid_chs=b.mid_options[0],
                            **b.op_kwargs_at())
            for b in arch.blocks
        )
        self._ends = stage_ends(arch)
        self.dcs = nn.ModuleDict({
            str(s): DCSAttention(arch.stage_out_options(s)[0], tau_m=arch.tau_m, form=arch.attention_form,
                                 select=self.attention == "dcs") for s in arch.dcs_stages
        }) if self.use_dcs else nn.ModuleDict()
        self.embedding_dim = int(arch.head["out_chs"])  # width of ``global_feat`` and ``embedding``
        self.head = ClassifierHead(arch.stage_out_options(len(arch.stages) - 1)[0], arch.head["out_chs"],
                                   self.num_classes, arch.bnneck if bnneck is None else bnneck)

    @property
    def use_dcs(self) -> bool:
        """Whether attention modules (``self`` or ``dcs``) are built."""
        return self.attention != "none"

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Args:
            x: (B, 3, H, W) images.
            return_features: return the feature dict (``logits``, ``embedding``,
                ``global_feat``, ``ib_input``: the fixed input feature of the IB
                bound, :func:`dnas.ib.input_representation`) instead of the logits.
        """
        images = x  # (B, 3, H, W)
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            s = self._ends.get(i)
            if s is not None and self.arch.stages[s]["dcs_after"]:
                if self.use_dcs:
                    x = self.dcs[str(s)](x)
        out = self.head(x)
        if not return_features:
            return out["logits"]
        out["ib_input"] = input_representation(images)  # the fixed input feature X of the IB bound
        return out
