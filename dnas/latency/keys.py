"""Latency-table keys: the ONE key function and the entries a space needs
(docs/architecture.md principle 4; paper section 3.4, the lookup table behind LAT in eq. 5).

The profiler measures exactly the entries :func:`space_entries` lists, and every
lookup (the differentiable cost, the sum for a derived architecture, validation) forms
its keys with :func:`latency_key` on concrete widths, so the two sides cannot drift
apart. A key names the kind of module and every value that shapes it, in the shared
vocabulary (``in_chs``, ``mid_chs``, ``out_chs``, ``kernel_size``, ``stride``) plus the
input resolution ``res`` (``HxW``)::

    stem/in_chs=3/out_chs=16/stride=2/kernel_size=3/res=256x128
    block/op=ir/in_chs=16/mid_chs=48/out_chs=24/stride=2/res=128x64
    block/op=ir/in_chs=16/mid_chs=48/out_chs=24/stride=2/kernel_size=5/res=128x64
    dcs/attention=dcs/form=linear/in_chs=24/res=64x32   # or attention=self; form=softmax
    head/in_chs=216/out_chs=1984/res=8x4          # conv1x1 + BN + ReLU + global pool
    classifier/in_chs=1984/out_chs=751/bnneck=0   # optional BNNeck + Linear

A block key carries the op's keyword arguments (:mod:`dnas.space.op_specs`, e.g. the
depthwise ``kernel_size``) after ``stride`` where they differ from the op's default, so
the keys of spaces that never set them are the keys they always had.

Kinds and entry counts: a block whose input and output belong to the same width group
has ``in_chs == out_chs`` in every architecture, so it is keyed on (width, mid) only
(``K * E`` entries); the first block of a group is keyed on (in, mid, out)
(``K_in * E * K_out``); every op-kwarg axis of the space multiplies a block's entries
by its option count. Blocks with identical keys (the repeats of a row) share entries.
DCS-Attention modules are keyed by their group's width, the head by the last group's
width. Nothing here imports torch.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

from dnas.errors import LatencyTableError
from dnas.space.op_specs import OP_SPECS
from dnas.space.schema import resolve_attention

KINDS = ("stem", "block", "dcs", "head", "classifier")
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "stem": ("in_chs", "out_chs", "stride", "kernel_size", "res"),
    "block": ("op", "in_chs", "mid_chs", "out_chs", "stride", "res"),
    "dcs": ("attention", "form", "in_chs", "res"),
    "head": ("in_chs", "out_chs", "res"),
    "classifier": ("in_chs", "out_chs", "bnneck"),
}
# op keyword arguments a block key may carry, in key order (after "stride"), when not the default
BLOCK_KWARG_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(k.name for spec in OP_SPECS.values() for k in spec.kwargs))
STRING_FIELDS = ("op", "attention", "form")
BLOCK_KERNEL = 3  # default depthwise kernel of a bottleneck (Tables III/IV); a key names any other


def _field_order(kind: str, present: Iterable[str]) -> tuple[str, ...]:
    """The fields of a key of ``kind`` in key order: the required ones and the optional present ones."""
    names = KIND_FIELDS[kind]
    if kind != "block":
        return names
    extra = tuple(n for n in BLOCK_KWARG_FIELDS if n in set(present))
    return names[:-1] + extra + names[-1:]  # op kwargs between stride and res


def _drop_defaults(kind: str, fields: dict) -> dict:
    """Block fields without the op keyword arguments that equal the op's default."""
    if kind != "block" or fields.get("op") not in OP_SPECS:
        return fields
    spec = OP_SPECS[fields["op"]]
    return {n: v for n, v in fields.items()
            if n not in BLOCK_KWARG_FIELDS or spec.kwarg(n) is None or v != spec.kwarg(n).default}


def block_op_kwargs(fields: dict) -> dict:
    """The op keyword arguments of a block key's fields (``mid_chs`` and those the key carries)."""
    return {"mid_chs": fields["mid_chs"], **{n: fields[n] for n in BLOCK_KWARG_FIELDS if n in fields}}


def _fmt(name: str, value: object) -> str:
    if name == "res":
        h, w = value  # type: ignore[misc]
        return f"{int(h)}x{int(w)}"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, str):
        if not value or any(c in value for c in "/= ,"):
            raise ValueError(f"latency key field {name}={value!r}: empty or contains '/', '=', ',' or a space")
        return value
    if isinstance(value, int):
        return str(value)
    raise ValueError(f"latency key field {name}={value!r}: expected int, bool, str or (H, W)")


def latency_key(kind: str, **fields: object) -> str:
    """The table key of one module (the only place keys are formed).

    Args:
        kind: one of :data:`KINDS`.
        **fields: exactly the fields :data:`KIND_FIELDS` lists for ``kind`` (a block
            may add op keyword arguments of :data:`BLOCK_KWARG_FIELDS`; one equal to the
            op's default is left out); ``res`` is an ``(H, W)`` pair (the module's input
            resolution).

    Returns:
        ``kind/name=value/...`` with the fields in their fixed order.
    """
    if kind not in KIND_FIELDS:
        raise ValueError(f"latency key kind {kind!r}: expected one of {', '.join(KINDS)}")
    names = KIND_FIELDS[kind]
    optional = set(BLOCK_KWARG_FIELDS) if kind == "block" else set()
    if not set(names) <= set(fields) <= set(names) | optional:
        raise ValueError(f"latency key {kind}: fields {sorted(fields)}, expected {list(names)}")
    fields = _drop_defaults(kind, fields)
    return "/".join([kind] + [f"{n}={_fmt(n, fields[n])}" for n in _field_order(kind, fields)])


def parse_key(key: str) -> tuple[str, dict[str, object]]:
    """Inverse of :func:`latency_key`: ``(kind, fields)`` (``res`` as a tuple)."""
    kind, *parts = key.split("/")
    if kind not in KIND_FIELDS:
        raise LatencyTableError(f"latency key {key!r}: unknown kind {kind!r}")
    fields: dict[str, object] = {}
    for part in parts:
        name, sep, text = part.partition("=")
        if not sep:
            raise LatencyTableError(f"latency key {key!r}: part {part!r} is not name=value")
        if name == "res":
            h, _, w = text.partition("x")
            fields[name] = (int(h), int(w))
        elif name in STRING_FIELDS:
            fields[name] = text
        else:
            fields[name] = int(text)
    if tuple(fields) != _field_order(kind, fields) or _drop_defaults(kind, fields) != fields:
        raise LatencyTableError(f"latency key {key!r}: fields {list(fields)}, expected {list(KIND_FIELDS[kind])}")
    return kind, fields


@dataclass(frozen=True)
class Entry:
    """One table entry: a module to measure, its key and its input shape.

    Attributes:
        kind: one of :data:`KINDS`.
        fields: the key fields as ``(name, value)`` pairs in key order.
        input_shape: per-sample input shape, ``(C, H, W)`` or ``(C,)`` (classifier).
    """

    kind: str
    fields: tuple[tuple[str, object], ...]
    input_shape: tuple[int, ...]

    @property
    def key(self) -> str:
        return latency_key(self.kind, **dict(self.fields))

    def get(self, name: str) -> object:
        return dict(self.fields)[name]


def make_entry(kind: str, input_shape: Sequence[int], **fields: object) -> Entry:
    """An :class:`Entry` with its fields in key order (validated by :func:`latency_key`;
    op keyword arguments equal to the op's default left out)."""
    latency_key(kind, **fields)
    fields = _drop_defaults(kind, fields)
    return Entry(kind, tuple((n, fields[n]) for n in _field_order(kind, fields)), tuple(int(v) for v in input_shape))


def conv_out(size: int, kernel_size: int, stride: int) -> int:
    """Output size of a convolution with padding ``kernel_size // 2``."""
    return (size + 2 * (kernel_size // 2) - kernel_size) // stride + 1


@dataclass(frozen=True)
class ModuleSlot:
    """One module of the network and the entries it may take, by option index.

    Attributes:
        kind: entry kind.
        name: ``stem``, ``blocks.i``, ``dcs.<row>``, ``head`` or ``classifier``.
        axes: what each option axis indexes: ``("width", g)`` (a width group),
            ``("expansion", b)`` (a block's mid options), ``("kernel", b)`` (a block's
            options of an op-kwarg axis), ``("fixed", 0)`` (a single option: the stem
            width); empty for fixed modules. No ``(axis, unit)`` pair appears twice.
        entries: nested by axes: ``entries[i][j]...`` is an :class:`Entry`.
    """

    kind: str
    name: str
    axes: tuple[tuple[str, int], ...]
    entries: object


def _grid(dims: Sequence[Sequence], make, chosen: tuple = ()) -> object:
    """Nested lists over the option lists ``dims``: ``make(*options)`` at the leaves."""
    if len(chosen) == len(dims):
        return make(*chosen)
    return [_grid(dims, make, chosen + (v,)) for v in dims[len(chosen)]]


def _block_slot(b, res: tuple[int, int], stem_chs: int, kwarg_axes: Sequence[tuple[str, str]]) -> ModuleSlot:
    """Slot of a block: (width, mid, *kwargs) when in/out share a group, else (in, mid, *kwargs, out).

    ``kwarg_axes``: the space's op-kwarg axes as ``(axis, kwarg)``; other op keyword
    arguments of the block take their single option.
    """
    h, w = res
    searched = [(axis, kw) for axis, kw in kwarg_axes if b.kwarg_options(kw) is not None]
    fixed = {k: opts[0] for k, opts in b.op_kwargs if k not in {kw for _, kw in searched}}
    kw_dims = [b.kwarg_options(kw) for _, kw in searched]
    kw_axes = tuple((axis, b.index) for axis, _ in searched)

    def entry(i: int, m: int, o: int, *kw_values) -> Entry:
        kwargs = {**fixed, **{kw: v for (_, kw), v in zip(searched, kw_values)}}
        return make_entry("block", (i, h, w), op=b.op, in_chs=i, mid_chs=m, out_chs=o, stride=b.stride, res=res,
                          **kwargs)

    if b.in_group is not None and b.in_group == b.out_group:
        grid = _grid([b.out_options, b.mid_options, *kw_dims], lambda c, m, *k: entry(c, m, c, *k))
        axes = (("width", b.out_group), ("expansion", b.index), *kw_axes)
        return ModuleSlot("block", f"blocks.{b.index}", axes, grid)
    ins = b.in_options if b.in_group is not None else (stem_chs,)
    grid = _grid([ins, b.mid_options, *kw_dims, b.out_options], lambda i, m, *rest: entry(i, m, rest[-1], *rest[:-1]))
    axes = (("width", b.in_group) if b.in_group is not None else ("fixed", 0), ("expansion", b.index), *kw_axes,
            ("width", b.out_group))
    return ModuleSlot("block", f"blocks.{b.index}", axes, grid)


def module_slots(space, attention: str | bool | None = None, num_classes: int | None = None,
                 bnneck: bool | None = None) -> list[ModuleSlot]:
    """Every module of the network built from ``space`` with the entries it may take.

    Args:
        space: a :class:`dnas.space.SearchSpace` (a search space or a derived arch).
        attention: ``none``, ``self`` or ``dcs`` (default: the space's; a bool is the
            legacy ``use_dcs``).
        num_classes: classifier outputs (default: the space's); ``0`` leaves the
            classifier out.
        bnneck: BNNeck before the classifier (default: the space's).

    Returns:
        Slots in forward order: stem, blocks (with DCS modules after their rows), head,
        classifier. An axis ``("fixed", 0)`` has a single option (the stem width).
    """
    attention = resolve_attention(space.attention, attention)
    num_classes = space.num_classes if num_classes is None else num_classes
    bnneck = space.bnneck if bnneck is None else bnneck
    c, h, w = space.input_size
    st = space.stem
    stem = make_entry("stem", (c, h, w), in_chs=c, out_chs=st["out_chs"], stride=st["stride"],
                      kernel_size=st["kernel_size"], res=(h, w))
    slots = [ModuleSlot("stem", "stem", (), stem)]
    h, w = conv_out(h, st["kernel_size"], st["stride"]), conv_out(w, st["kernel_size"], st["stride"])
    last = {s: max(b.index for b in space.blocks if b.stage == s) for s in range(len(space.stages))}
    dcs_after = {last[s]: s for s in space.dcs_stages}
    kwarg_axes = [(a.name, a.kwarg) for a in space.axes.values() if a.kwarg]
    for b in space.blocks:
        slots.append(_block_slot(b, (h, w), st["out_chs"], kwarg_axes))
        k = max(b.kwarg_options("kernel_size") or (BLOCK_KERNEL,))  # odd sizes: the same output size for each
        h, w = conv_out(h, k, b.stride), conv_out(w, k, b.stride)
        if attention != "none" and b.index in dcs_after:
            grid = [make_entry("dcs", (k, h, w), attention=attention, form=space.attention_form, in_chs=k, res=(h, w))
                    for k in b.out_options]
            slots.append(ModuleSlot("dcs", f"dcs.{dcs_after[b.index]}", (("width", b.out_group),), grid))
    last_b = space.blocks[-1]
    head_out = space.head["out_chs"]
    grid = [make_entry("head", (k, h, w), in_chs=k, out_chs=head_out, res=(h, w)) for k in last_b.out_options]
    slots.append(ModuleSlot("head", "head", (("width", last_b.out_group),), grid))
    if num_classes:
        slots.append(ModuleSlot("classifier", "classifier", (), make_entry(
            "classifier", (head_out,), in_chs=head_out, out_chs=int(num_classes), bnneck=bool(bnneck))))
    return slots


def flatten_entries(nested: object) -> Iterable[Entry]:
    """All :class:`Entry` objects of a (nested list of) slot entries."""
    if isinstance(nested, Entry):
        yield nested
    else:
        for item in nested:  # type: ignore[union-attr]
            yield from flatten_entries(item)


def space_entries(space, num_classes: Sequence[int] | None = None,
                  bnneck: Sequence[bool] = (False, True),
                  attentions: Sequence[str] = ("dcs", "self")) -> list[Entry]:
    """Every distinct entry a space can produce (what ``dnas-latency profile`` measures).

    Args:
        space: a :class:`dnas.space.SearchSpace`.
        num_classes: classifier sizes to cover (default: the space's ``num_classes``).
        bnneck: BNNeck settings to cover for the classifier.
        attentions: attention kinds to cover (a table with ``dcs`` and ``self``
            serves every ablation variant: ``none`` needs no entry).

    Returns:
        Entries, first occurrence order, no duplicate keys.
    """
    sizes = list(num_classes) if num_classes else [space.num_classes]
    seen: dict[str, Entry] = {}
    for n, neck, att in itertools.product(sizes, bnneck, list(attentions) or ["none"]):
        for slot in module_slots(space, attention=att, num_classes=n, bnneck=neck):
            for e in flatten_entries(slot.entries):
                seen.setdefault(e.key, e)
    return list(seen.values())


def derived_entries(arch, attention: str | bool | None = None, num_classes: int | None = None,
                    bnneck: bool | None = None) -> list[Entry]:
    """The entries of a derived architecture, one per module (repeats included).

    Args:
        arch: a derived :class:`dnas.space.SearchSpace` (``arch.is_derived``).
        attention, num_classes, bnneck: as in :func:`module_slots`.

    Returns:
        Entries in forward order; the table sum over them predicts the net's latency.
    """
    out = []
    for slot in module_slots(arch, attention, num_classes, bnneck):
        found = list(flatten_entries(slot.entries))
        if len(found) != 1:
            raise LatencyTableError(f"{arch.source}: module {slot.name} has {len(found)} options; "
                                    "expected a derived architecture (every choice a scalar)")
        out.append(found[0])
    return out


def count_by_kind(entries: Iterable[Entry]) -> dict[str, int]:
    """Number of entries per kind, in :data:`KINDS` order (zeros included)."""
    counts = dict.fromkeys(KINDS, 0)
    for e in entries:
        counts[e.kind] += 1
    return counts
