"""Ops: the registry, plain ops, their super-op twins and DCS-Attention."""
from dnas.ops import blocks, dcs, super_blocks  # noqa: F401  (register the built-in ops)
from dnas.ops.blocks import ConvBNReLU, InvertedResidual
from dnas.ops.dcs import DCSAttention
from dnas.ops.registry import PLAIN_OPS, SEARCHABLE_OPS, SUPER_OPS, OpRegistry
from dnas.ops.super_blocks import SuperInvertedResidual

__all__ = ["PLAIN_OPS", "SUPER_OPS", "SEARCHABLE_OPS", "OpRegistry", "ConvBNReLU", "InvertedResidual",
           "DCSAttention", "SuperInvertedResidual"]
