"""The searchable ops as data: their names and keyword arguments (docs/architecture.md
principle 3; paper Tables III/IV, the "bottleneck" rows).

The schema validates a space against this catalogue, so loading and checking a space
never imports torch; the torch modules register under the same names on the ops side
(:mod:`dnas.ops.registry`), and a test checks that the two sides list the same ops.

An op's constructor is ``cls(in_chs, out_chs, stride, mid_chs=..., **kwargs)``. Each
:class:`OpKwarg` is a keyword argument a space may set per row or per block, as a scalar
or as a list of options; a list makes it a *choice axis* (its :attr:`OpKwarg.axis`
name, e.g. ``kernel``) that the supernet searches, the latency table keys and the
derived architecture fixes. A value equal to the default is left out of latency keys and
derived architectures, so spaces that never name the argument keep their keys, their
structure hash and their outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class OpKwarg:
    """A searchable keyword argument of an op.

    Attributes:
        name: the constructor keyword and the YAML key (``kernel_size``).
        axis: the choice-axis name when a space lists several options (``kernel``).
        default: the value when a space does not set it.
        check: whether a value is valid; ``what`` describes valid values for messages.
    """

    name: str
    axis: str
    default: Any
    check: Callable[[Any], bool]
    what: str


@dataclass(frozen=True)
class OpSpec:
    """A searchable op: its name and its keyword arguments besides ``mid_chs``."""

    name: str
    kwargs: tuple[OpKwarg, ...] = ()

    def kwarg(self, name: str) -> OpKwarg | None:
        return next((k for k in self.kwargs if k.name == name), None)


def _odd_kernel(v: Any) -> bool:
    # odd sizes only: with padding k // 2 every option keeps the resolution, and a smaller
    # kernel is the centre of a larger one
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 9 and v % 2 == 1


KERNEL_SIZE = OpKwarg("kernel_size", "kernel", 3, _odd_kernel, "an odd integer in [1, 9]")

OP_SPECS: dict[str, OpSpec] = {}


def register_op_spec(spec: OpSpec) -> OpSpec:
    """Declare a searchable op (its torch modules register in :mod:`dnas.ops.registry`).

    Raises:
        ValueError: the name is already declared, two kwargs share a name or an axis, or
            an axis already stands for another keyword argument.
    """
    if spec.name in OP_SPECS:
        raise ValueError(f"op spec {spec.name!r} is already declared")
    names = [k.name for k in spec.kwargs]
    axes = [k.axis for k in spec.kwargs]
    if len(set(names)) != len(names) or len(set(axes)) != len(axes):
        raise ValueError(f"op spec {spec.name!r}: keyword arguments or axes repeat ({names}, {axes})")
    if {"width", "expansion"} & set(axes):
        raise ValueError(f"op spec {spec.name!r}: axes 'width' and 'expansion' are the space's own")
    for k in spec.kwargs:  # one axis, one keyword argument, across ops
        other = kwarg_axes().get(k.axis)
        if other is not None and other.name != k.name:
            raise ValueError(f"op spec {spec.name!r}: axis {k.axis!r} already names keyword argument {other.name!r}")
    OP_SPECS[spec.name] = spec
    return spec


def kwarg_axes() -> dict[str, OpKwarg]:
    """Every op-kwarg axis of the declared ops, by axis name, in declaration order."""
    out: dict[str, OpKwarg] = {}
    for spec in OP_SPECS.values():
        for k in spec.kwargs:
            out.setdefault(k.axis, k)
    return out


# the inverted residual (1x1 expand, k x k depthwise, 1x1 project): Tables III/IV use k = 3
register_op_spec(OpSpec("ir", (KERNEL_SIZE,)))
