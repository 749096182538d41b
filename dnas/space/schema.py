"""Search-space / architecture schema (paper Tables III and IV; docs/method.md section 1).

One YAML schema serves both a search space and a derived architecture: in a space a
searchable field holds a list of options, in a derived architecture every field is a
scalar. A file looks like::

    name: fbnetv2                 # str
    input_size: [3, 256, 128]     # C, H, W
    num_classes: 1000             # optional (default 1000)
    stem: {out_chs: 16, stride: 2}
    stages:                       # the bottleneck rows of Table III/IV, in order
      - op: ir                    # a registered op name
        expansion: [0.75, 1.25]   # options (space) or a scalar (derived arch)
        channels: [16, 20, 24]    # options or a scalar
        n: 2                      # repeats; only the first block has the row's stride
        stride: 1
        dcs_after: true           # a DCS-Attention module after this row
        kernel_size: [3, 5]       # optional op keyword argument (dnas/space/op_specs.py):
                                  # a scalar, or options (a choice axis, here ``kernel``)
        blocks:                   # optional, one entry per repeat: per-block overrides
          - {expansion: 1.25, mid_chs: 24, kernel_size: 3}
    head: {out_chs: 1984}
    dcs: {tau_m: 1.0}             # optional DCS-Attention settings
    space: fbnetv2                # optional provenance of a derived arch
    bnneck: false                 # optional BN on the embedding before the classifier
    attention: dcs                # optional: none | self | dcs (modules at dcs_after rows)
    attention_form: linear        # optional: linear (non-local, 2 N C min(N, C)) | softmax
    use_dcs: true                 # legacy: true = attention dcs, false = attention none

Rows with the same ``channels`` option list that follow each other form one *width
group*: all their blocks share one width choice (residual adds need equal widths).
Every block has its own expansion choice, and its own choice of every op keyword
argument given as a list (:mod:`dnas.space.op_specs`). Validation is strict: an unknown key, an
unknown op, or a value of the wrong type or range raises :class:`SpaceError` naming the
file, the stage/block index and the key.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from dnas.errors import SpaceError, brief
from dnas.space.op_specs import OP_SPECS, OpSpec

TOP_KEYS = {"name", "input_size", "num_classes", "stem", "stages", "head", "dcs", "space", "bnneck", "use_dcs",
            "attention", "attention_form"}
REQUIRED_TOP = ("name", "input_size", "stem", "stages", "head")
STAGE_KEYS = {"op", "expansion", "channels", "n", "stride", "dcs_after", "blocks"}
REQUIRED_STAGE = ("op", "channels", "n", "stride", "dcs_after")
BLOCK_KEYS = {"expansion", "mid_chs"}
STEM_KEYS = {"out_chs", "stride", "kernel_size"}
HEAD_KEYS = {"out_chs"}
DCS_KEYS = {"tau_m"}
ATTENTIONS = ("none", "self", "dcs")  # no module | plain self-attention | DCS-Attention
ATTENTION_FORMS = ("linear", "softmax")
AFFINITY_ORDERS = ("channels", "tokens")


def affinity_order(chs: int, tokens: int) -> str:
    """The cheaper association of the linear affinity for C channels and N tokens
    (:func:`dnas.ops.dcs.linear_affinity_output`): ``channels`` (``K (K^T X) / N``, 2 C^2 N MACs) unless the tokens are fewer than the
    channels, then ``tokens`` (``(K K^T / N) X``, 2 N^2 C). Ties keep ``channels`` (the
    C x C intermediate). A function of the shapes only, so a latency key, which holds
    the width and the resolution, names the order too."""
    return "tokens" if tokens < chs else "channels"


def linear_affinity_macs(chs: int, tokens: int) -> int:
    """MACs of one image's linear affinity ``A X`` in the order :func:`affinity_order` runs."""
    return 2 * chs * tokens * min(chs, tokens)


MAX_CHANNELS = 16384
MAX_EXPANSION = 64.0


def resolve_attention(default: str, attention: str | bool | None = None) -> str:
    """The attention kind a builder uses: ``attention`` if given, else ``default``.

    A bool is the legacy ``use_dcs``: ``False`` is ``none``, ``True`` the default kind
    (``dcs`` when the default is ``none``).
    """
    if attention is None:
        return default
    if isinstance(attention, bool):
        return ("dcs" if default == "none" else default) if attention else "none"
    if attention not in ATTENTIONS:
        raise SpaceError(f"attention {attention!r}: expected one of {', '.join(ATTENTIONS)}")
    return attention


def attention_from_keys(attention: Any, use_dcs: Any, where: str) -> str | None:
    """Merge ``attention`` with the legacy ``use_dcs`` key (``None`` when neither is set).

    Raises:
        SpaceError: a value of the wrong kind, or the two keys disagree.
    """
    if attention is not None and attention not in ATTENTIONS:
        raise _fail(where, f"key 'attention': expected one of {', '.join(ATTENTIONS)}, got {brief(attention)}")
    if use_dcs is None:
        return attention
    if not isinstance(use_dcs, bool):
        raise _fail(where, f"key 'use_dcs': expected true or false, got {brief(use_dcs)}")
    if attention is not None and (attention != "none") != use_dcs:
        raise _fail(where, f"keys 'use_dcs: {str(use_dcs).lower()}' and 'attention: {attention}' disagree "
                           "(use_dcs is the legacy key; keep only attention)")
    return attention or ("dcs" if use_dcs else "none")


def _attention_keys(data: Mapping, source: str) -> tuple[str, str]:
    """``attention`` and ``attention_form`` of a file (``use_dcs`` read as the legacy key)."""
    attention = attention_from_keys(data.get("attention"), data.get("use_dcs"), source)
    form = data.get("attention_form", "linear")
    if form not in ATTENTION_FORMS:
        raise _fail(source, f"key 'attention_form': expected one of {', '.join(ATTENTION_FORMS)}, got {brief(form)}")
    return attention or "dcs", form


def _fail(where: str, msg: str) -> SpaceError:
    return SpaceError(f"{where}: {msg}")


def _check_keys(obj: Any, allowed: set[str], required: tuple[str, ...], where: str) -> None:
    if not isinstance(obj, Mapping):
        raise _fail(where, f"expected a mapping, got {type(obj).__name__}")
    for key in obj:
        if key not in allowed:
            raise _fail(where, f"unknown key {brief(key)} (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in obj:
            raise _fail(where, f"missing key {key!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (not a bool, not inf or nan)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_in(v: Any, lo: int, hi: int, where: str, key: str) -> int:
    if not _is_int(v) or not lo <= v <= hi:
        raise _fail(where, f"key {key!r}: expected an integer in [{lo}, {hi}], got {brief(v)}")
    return v


def _options(v: Any, where: str, key: str, check: Callable[[Any], bool], what: str) -> list:
    """A searchable field: a scalar or a non-empty list of distinct valid values."""
    values = v if isinstance(v, list) else [v]
    if not values:
        raise _fail(where, f"key {key!r}: empty option list")
    for x in values:
        if not check(x):
            raise _fail(where, f"key {key!r}: expected {what}, got {brief(x)}")
    if len(set(values)) != len(values):
        raise _fail(where, f"key {key!r}: duplicate options in {brief(values)}")
    return values


def _channel_ok(x: Any) -> bool:
    return _is_int(x) and 1 <= x <= MAX_CHANNELS


def _expansion_ok(x: Any) -> bool:
    return _is_number(x) and 0 < x <= MAX_EXPANSION


def _kwarg_names(ops: Mapping[str, OpSpec]) -> set[str]:
    return {k.name for spec in ops.values() for k in spec.kwargs}


def validate_space_dict(data: Any, source: str, ops: Mapping[str, OpSpec] | None = None) -> dict:
    """Validate a loaded space/arch mapping and return a normalised copy.

    The normalised form keeps the user's layout but makes every searchable field a
    list (a scalar ``x`` becomes ``[x]``) and fills defaults, so downstream code reads
    one shape. Each stage gains ``blocks``: a list of ``n`` dicts with ``expansion``
    (option list) and ``mid_chs`` (option list or ``None`` when not fixed by the file),
    and an option list under each op keyword argument the file sets for it (absent:
    the op's default).

    Args:
        data: the result of ``yaml.safe_load``.
        source: file name (or ``<dict>``) used in error messages.
        ops: the searchable ops (default: :data:`dnas.space.op_specs.OP_SPECS`).

    Returns:
        The normalised dict.

    Raises:
        SpaceError: on any schema violation, naming ``source``, stage/block and key.
    """
    _check_keys(data, TOP_KEYS, REQUIRED_TOP, source)
    out: dict[str, Any] = {}
    if not isinstance(data["name"], str) or not data["name"]:
        raise _fail(source, "key 'name': expected a non-empty string")
    out["name"] = data["name"]
    size = data["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(_is_int(s) and s > 0 for s in size)):
        raise _fail(source, f"key 'input_size': expected [C, H, W] positive integers, got {brief(size)}")
    if size[0] != 3:
        raise _fail(source, f"key 'input_size': expected 3 input channels, got {size[0]}")
    out["input_size"] = list(size)
    out["num_classes"] = _int_in(data.get("num_classes", 1000), 1, 10_000_000, source, "num_classes")
    out["bnneck"] = data.get("bnneck", False)
    if not isinstance(out["bnneck"], bool):
        raise _fail(source, f"key 'bnneck': expected true or false, got {brief(out['bnneck'])}")
    out["attention"], out["attention_form"] = _attention_keys(data, source)
    if "space" in data:
        if not isinstance(data["space"], str):
            raise _fail(source, "key 'space': expected a string")
        out["space"] = data["space"]

    where = f"{source}: stem"
    stem = data["stem"]
    _check_keys(stem, STEM_KEYS, ("out_chs", "stride"), where)
    out["stem"] = {
        "out_chs": _int_in(stem["out_chs"], 1, MAX_CHANNELS, where, "out_chs"),
        "stride": _int_in(stem["stride"], 1, 2, where, "stride"),
        "kernel_size": _int_in(stem.get("kernel_size", 3), 1, 7, where, "kernel_size"),
    }
    where = f"{source}: head"
    _check_keys(data["head"], HEAD_KEYS, ("out_chs",), where)
    out["head"] = {"out_chs": _int_in(data["head"]["out_chs"], 1, MAX_CHANNELS, where, "out_chs")}
    dcs = data.get("dcs", {}) or {}
    _check_keys(dcs, DCS_KEYS, (), f"{source}: dcs")
    tau_m = dcs.get("tau_m", 1.0)
    if not _is_number(tau_m) or tau_m <= 0:
        raise _fail(f"{source}: dcs", f"key 'tau_m': expected a finite positive number, got {brief(tau_m)}")
    out["dcs"] = {"tau_m": float(tau_m)}

    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise _fail(source, "key 'stages': expected a non-empty list of stages")
    ops = OP_SPECS if ops is None else ops
    out["stages"] = [_validate_stage(s, f"{source}: stage {i}", ops) for i, s in enumerate(stages)]
    return out


def _op_kwargs(obj: Mapping, spec: OpSpec, where: str, keys: set[str],
               inherited: Mapping[str, list] | None = None) -> dict:
    """The op keyword arguments ``obj`` sets (option lists) over ``inherited`` ones, in the op's order."""
    for key in sorted(keys & set(obj)):
        if spec.kwarg(key) is None:
            raise _fail(where, f"key {key!r}: op {spec.name!r} takes no such argument")
    out = {}
    for kw in spec.kwargs:
        if kw.name in obj:
            out[kw.name] = _options(obj[kw.name], where, kw.name, kw.check, kw.what)
        elif inherited and kw.name in inherited:
            out[kw.name] = list(inherited[kw.name])
    return out


def _validate_stage(stage: Any, where: str, ops: Mapping[str, OpSpec]) -> dict:
    kwarg_keys = _kwarg_names(ops)
    _check_keys(stage, STAGE_KEYS | kwarg_keys, REQUIRED_STAGE, where)
    if stage["op"] not in ops:
        raise _fail(where, f"key 'op': unknown op {stage['op']!r} (known: {', '.join(sorted(ops))})")
    spec = ops[stage["op"]]
    stage_kwargs = _op_kwargs(stage, spec, where, kwarg_keys)
    n = _int_in(stage["n"], 1, 1000, where, "n")
    stride = _int_in(stage["stride"], 1, 2, where, "stride")
    if not isinstance(stage["dcs_after"], bool):
        raise _fail(where, f"key 'dcs_after': expected true or false, got {brief(stage['dcs_after'])}")
    channels = _options(stage["channels"], where, "channels", _channel_ok, f"an integer in [1, {MAX_CHANNELS}]")
    if "expansion" not in stage and "blocks" not in stage:
        raise _fail(where, "missing key 'expansion' (or per-block 'blocks')")
    stage_exp = None
    if "expansion" in stage:
        stage_exp = _options(stage["expansion"], where, "expansion", _expansion_ok, f"a number in (0, {MAX_EXPANSION}]")
    blocks_in = stage.get("blocks")
    if blocks_in is not None and (not isinstance(blocks_in, list) or len(blocks_in) != n):
        raise _fail(where, f"key 'blocks': expected a list of n={n} block entries")
    blocks = []
    for j in range(n):
        bwhere = f"{where} block {j}"
        b = blocks_in[j] if blocks_in is not None else {}
        _check_keys(b, BLOCK_KEYS | kwarg_keys, (), bwhere)
        exp = b.get("expansion", stage_exp)
        if exp is None:
            raise _fail(bwhere, "missing key 'expansion'")
        exp = _options(exp, bwhere, "expansion", _expansion_ok, f"a number in (0, {MAX_EXPANSION}]")
        mid = b.get("mid_chs")
        if mid is not None:
            mid = _options(mid, bwhere, "mid_chs", _channel_ok, f"an integer in [1, {MAX_CHANNELS}]")
            if len(mid) != len(exp):
                raise _fail(bwhere, f"key 'mid_chs': expected one value per expansion option ({len(exp)}), got {len(mid)}")
        blocks.append({"expansion": [float(e) for e in exp], "mid_chs": mid,
                       **_op_kwargs(b, spec, bwhere, kwarg_keys, stage_kwargs)})
    return {
        "op": stage["op"],
        "channels": channels,
        "n": n,
        "stride": stride,
        "dcs_after": stage["dcs_after"],
        "blocks": blocks,
    }
