"""Choice axes: the kinds of architecture choice a space offers (docs/method.md section 1,
docs/architecture.md "Choice axes").

An axis has one *unit* per place that chooses (a width group, or a block) and, per unit,
a tuple of options. ``width`` (one choice per width group, Tables III/IV "channels") and
``expansion`` (one per block, the expansion rates) are every space's; each searchable op
keyword argument adds an axis when a space lists several options for it somewhere (the
``kernel`` axis of ``kernel_size``, :mod:`dnas.space.op_specs`). An architecture in
index form is ``{axis name: [option index per unit]}``; the supernet's choice is
``{axis name: [weights per unit]}``, in the same order. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from dnas.space.op_specs import kwarg_axes

CORE_AXES = ("width", "expansion")


@dataclass(frozen=True)
class ChoiceAxis:
    """One kind of choice.

    Attributes:
        name: ``width``, ``expansion`` or an op-kwarg axis (``kernel``).
        unit: ``group`` (one choice per width group) or ``block`` (one per block).
        options: per unit, the option values (channel counts, expansion rates, kernel sizes).
        sizes: per unit, what ``max``/``min`` architectures compare (the mid widths for
            ``expansion``, else the options).
        kwarg: the op keyword argument an op-kwarg axis sets (``kernel_size``), else ``None``.
    """

    name: str
    unit: str
    options: tuple[tuple, ...]
    sizes: tuple[tuple, ...]
    kwarg: str | None = None

    def __len__(self) -> int:
        return len(self.options)

    @property
    def num_choices(self) -> int:
        """Units with more than one option."""
        return sum(len(o) > 1 for o in self.options)


def build_axes(group_options, blocks) -> dict[str, ChoiceAxis]:
    """The axes of a space from its width-group options and :class:`BlockSpec` list."""
    axes = {
        "width": ChoiceAxis("width", "group", tuple(group_options), tuple(group_options)),
        "expansion": ChoiceAxis("expansion", "block", tuple(b.expansion for b in blocks),
                                tuple(b.mid_options for b in blocks)),
    }
    for name, kw in kwarg_axes().items():
        opts = tuple(b.kwarg_options(kw.name) or (None,) for b in blocks)
        if any(len(o) > 1 for o in opts):
            sizes = tuple(tuple(0 if v is None else v for v in o) for o in opts)
            axes[name] = ChoiceAxis(name, "block", opts, sizes, kw.name)
    return axes
