"""SearchSpace: a validated space (or derived architecture) and its pure helpers.

Implements the layout rules of docs/method.md section 1: width groups (consecutive rows
sharing a channel range share one width choice), per-block expansion choices, per-block
choices of op keyword arguments given as lists (the ``kernel`` axis), and mid-width
options ``make_divisible(expansion * max(in_chs options), 8)``. Architectures in index
form are ``{axis: [index per unit]}`` over :attr:`SearchSpace.axes`
(:mod:`dnas.space.axes`). Nothing here imports torch (ops are validated against the
torch-free :mod:`dnas.space.op_specs`), so spaces can be inspected and tested without it.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from dnas.errors import SpaceError
from dnas.resources import data_root, find_data_file, short_name_path, short_names  # noqa: F401 (data_root: re-exported)
from dnas.space.axes import ChoiceAxis, build_axes
from dnas.space.op_specs import OP_SPECS
from dnas.space.schema import resolve_attention, validate_space_dict

# Bumped whenever an op computes differently, so latency tables of the old ops are refused:
# 2 = DCS-Attention in the linear (non-local) form with a depthwise output transform.
OPS_VERSION = 2

def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` without dropping more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block of the flattened space.

    Attributes:
        index: position among all blocks (0-based).
        stage: row index in ``stages``; ``block`` the repeat index within the row.
        in_group / out_group: width-group index of the input (``None``: the stem) and
            of the output.
        in_options / out_options: channel options of input and output.
        expansion: expansion options; ``mid_options`` the matching mid widths.
        stride: 1 or 2.
        op: the op name; ``op_kwargs`` its keyword arguments as ``(name, options)``
            pairs in the op's order (a single default option where the file sets none).
    """

    index: int
    stage: int
    block: int
    in_group: int | None
    out_group: int
    in_options: tuple[int, ...]
    out_options: tuple[int, ...]
    expansion: tuple[float, ...]
    mid_options: tuple[int, ...]
    stride: int
    op: str
    op_kwargs: tuple[tuple[str, tuple], ...] = ()

    def kwarg_options(self, name: str) -> tuple | None:
        """Options of the op keyword argument ``name`` (``None``: the op takes none)."""
        return dict(self.op_kwargs).get(name)

    def op_kwargs_at(self, index: dict[str, int] | None = None) -> dict:
        """The keyword arguments for option indices ``{kwarg name: index}`` (default: 0)."""
        return {k: opts[(index or {}).get(k, 0)] for k, opts in self.op_kwargs}


def resolve_space_path(name_or_path: str | Path) -> Path:
    """Map a short name (``xlarge``) or a path to a space YAML file.

    Raises:
        SpaceError: neither a known name nor an existing file.
    """
    text = str(name_or_path)
    short = short_name_path(text, "supernets")  # dnas.resources.SHORT_NAMES
    if short is not None:
        return short
    path = find_data_file(text)  # a shipped space also as supernets/NAME.yaml from anywhere
    if path.is_file():
        return path
    if path.is_dir() and (path / "arch.yaml").is_file():
        return path / "arch.yaml"
    raise SpaceError(
        f"{text}: not a known space ({', '.join(sorted(short_names('supernets')))}) nor an existing YAML file"
    )


class SearchSpace:
    """A validated search space or derived architecture (all option lists of length 1).

    Args:
        data: the normalised dict from :func:`validate_space_dict`.
        source: where it came from (for messages).
    """

    def __init__(self, data: dict, source: str = "<dict>"):
        self.data = data
        self.source = source
        self.name: str = data["name"]
        self.input_size: list[int] = data["input_size"]
        self.num_classes: int = data["num_classes"]
        self.stem: dict = data["stem"]
        self.head: dict = data["head"]
        self.stages: list[dict] = data["stages"]
        self.tau_m: float = data["dcs"]["tau_m"]
        self.bnneck: bool = data["bnneck"]
        self.attention: str = data["attention"]
        self.attention_form: str = data["attention_form"]
        self.group_options, self.stage_group = self._width_groups()
        self.blocks = self._flatten()
        self.axes: dict[str, ChoiceAxis] = build_axes(self.group_options, self.blocks)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "SearchSpace":
        return cls(validate_space_dict(data, source), source)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "SearchSpace":
        path = resolve_space_path(name_or_path)
        from dnas.strict_yaml import read_yaml

        return cls.from_dict(read_yaml(path, SpaceError, "a space"), str(path))

    def _width_groups(self) -> tuple[list[tuple[int, ...]], list[int]]:
        options: list[tuple[int, ...]] = []
        stage_group: list[int] = []
        for i, st in enumerate(self.stages):
            opts = tuple(st["channels"])
            if i > 0 and opts == options[-1]:
                stage_group.append(len(options) - 1)
            else:
                options.append(opts)
                stage_group.append(len(options) - 1)
        return options, stage_group

    def _flatten(self) -> list[BlockSpec]:
        blocks: list[BlockSpec] = []
        prev_group: int | None = None
        prev_opts: tuple[int, ...] = (self.stem["out_chs"],)
        for s, st in enumerate(self.stages):
            g = self.stage_group[s]
            out_opts = self.group_options[g]
            for j, b in enumerate(st["blocks"]):
                in_group, in_opts = (prev_group, prev_opts)
                if b["mid_chs"] is not None:
                    mids = tuple(b["mid_chs"])
                else:
                    mids = tuple(make_divisible(e * max(in_opts)) for e in b["expansion"])
                blocks.append(BlockSpec(
                    index=len(blocks), stage=s, block=j, in_group=in_group, out_group=g,
                    in_options=in_opts, out_options=out_opts, expansion=tuple(b["expansion"]),
                    mid_options=mids, stride=st["stride"] if j == 0 else 1, op=st["op"],
                    op_kwargs=tuple((kw.name, tuple(b.get(kw.name, [kw.default]))) for kw in OP_SPECS[st["op"]].kwargs),
                ))
                prev_group, prev_opts = g, out_opts
        return blocks

    # -- properties ---------------------------------------------------------------
    @property
    def is_derived(self) -> bool:
        """True when every choice is fixed (a derived architecture)."""
        return all(len(o) == 1 for axis in self.axes.values() for o in axis.options)

    @property
    def dcs_stages(self) -> list[int]:
        return [i for i, st in enumerate(self.stages) if st["dcs_after"]]

    @property
    def log10_num_archs(self) -> float:
        return sum(sum(math.log10(len(o)) for o in axis.options) for axis in self.axes.values())

    def with_attention(self, attention: str | bool | None = None, form: str | None = None) -> "SearchSpace":
        """This space (or arch) with another ``attention`` / ``attention_form`` (``None`` keeps it)."""
        if attention is None and form is None:
            return self
        data = {k: v for k, v in self.data.items() if k != "use_dcs"}
        data["attention"] = resolve_attention(self.attention, attention)
        data["attention_form"] = form or self.attention_form
        return SearchSpace.from_dict(data, self.source)

    @property
    def use_dcs(self) -> bool:
        """Whether attention modules are built at the ``dcs_after`` rows (``attention != none``)."""
        return self.attention != "none"

    def structure_hash(self) -> str:
        """SHA-256 of everything that shapes the ops (not the name or class count).

        Includes :data:`OPS_VERSION`, so tables profiled before an op's computation
        changed are refused. An op keyword argument set to its default alone (``kernel_size:
        3``) is the same op as one left out, and hashes the same.
        """
        keys = ("input_size", "stem", "head")
        stages = [{**st, "blocks": [self._without_defaults(st["op"], b) for b in st["blocks"]]} for st in self.stages]
        canon = json.dumps({"ops_version": OPS_VERSION, "stages": stages, **{k: self.data[k] for k in keys}},
                           sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def stage_out_options(self, stage: int) -> tuple[int, ...]:
        return self.group_options[self.stage_group[stage]]

    # -- architectures as index choices ----------------------------------------------
    def sample_indices(self, mode: str = "random", seed: int | None = None) -> dict:
        """Pick an architecture without search.

        Args:
            mode: ``max`` (widest, largest expansion), ``min`` or ``random`` (uniform).
            seed: for ``random``.

        Returns:
            ``{"width": [index per width group], "expansion": [index per block], ...}``:
            one list per axis of :attr:`axes` (``max``/``min`` by width, mid width and
            kernel size).
        """
        if mode not in ("max", "min", "random"):
            raise SpaceError(f"sample mode {mode!r}: expected max, min or random")
        rng = random.Random(seed)

        def pick(values: Sequence[float]) -> int:
            if mode == "random":
                return rng.randrange(len(values))
            best = max(values) if mode == "max" else min(values)
            return list(values).index(best)

        return {name: [pick(sizes) for sizes in axis.sizes] for name, axis in self.axes.items()}

    def arch_from_indices(self, indices: dict, num_classes: int | None = None, name: str | None = None,
                          attention: str | bool | None = None, bnneck: bool | None = None) -> dict:
        """The derived-architecture dict (every choice a scalar) for index choices."""
        widths = [self.group_options[g][i] for g, i in enumerate(indices["width"])]
        kwarg_axes = [(a.kwarg, indices[a.name]) for a in self.axes.values() if a.kwarg]
        stages = []
        for s, st in enumerate(self.stages):
            blocks = []
            for b in self.blocks:
                if b.stage != s:
                    continue
                e = indices["expansion"][b.index]
                chosen = b.op_kwargs_at({k: idx[b.index] for k, idx in kwarg_axes})
                declared = st["blocks"][b.block]  # op kwargs the space sets are written, defaults are not
                blocks.append({"expansion": b.expansion[e], "mid_chs": b.mid_options[e],
                               **{k: v for k, v in chosen.items() if k in declared}})
            stages.append({"op": st["op"], "channels": widths[self.stage_group[s]], "n": st["n"],
                           "stride": st["stride"], "dcs_after": st["dcs_after"], "blocks": blocks})
        return {
            "name": name or f"{self.name}-derived",
            "space": self.name,
            "input_size": list(self.input_size),
            "num_classes": int(num_classes if num_classes is not None else self.num_classes),
            "bnneck": self.bnneck if bnneck is None else bool(bnneck),
            "attention": resolve_attention(self.attention, attention),
            "attention_form": self.attention_form,
            "stem": dict(self.stem),
            "stages": stages,
            "head": dict(self.head),
            "dcs": {"tau_m": self.tau_m},
        }

    def indices_from_arch(self, arch: "SearchSpace") -> dict:
        """The index choices of a derived arch in this space.

        Raises:
            SpaceError: the arch does not fit (naming the stage/block and key).
        """
        where = f"{arch.source}: does not fit space {self.name!r}"
        if len(arch.stages) != len(self.stages):
            raise SpaceError(f"{where}: {len(arch.stages)} stages, the space has {len(self.stages)}")
        for key in ("input_size", "stem", "head"):
            if arch.data[key] != self.data[key]:
                raise SpaceError(f"{where}: key {key!r} is {arch.data[key]!r}, the space has {self.data[key]!r}")
        width = [None] * len(self.group_options)
        for s, (sa, ss) in enumerate(zip(arch.stages, self.stages)):
            for key in ("op", "n", "stride", "dcs_after"):
                if sa[key] != ss[key]:
                    raise SpaceError(f"{where}: stage {s} key {key!r} is {sa[key]!r}, the space has {ss[key]!r}")
            (w,) = sa["channels"] if len(sa["channels"]) == 1 else (None,)
            opts = self.stage_out_options(s)
            if w is None or w not in opts:
                raise SpaceError(f"{where}: stage {s} key 'channels' is {sa['channels']!r}, expected one of {list(opts)}")
            g = self.stage_group[s]
            if width[g] is not None and opts[width[g]] != w:
                raise SpaceError(f"{where}: stage {s} key 'channels' is {w}, but its width group has {opts[width[g]]}")
            width[g] = opts.index(w)
        expansion = []
        for bs, ba in zip(self.blocks, arch.blocks):
            bwhere = f"{where}: stage {bs.stage} block {bs.block}"
            if len(ba.expansion) != 1:
                raise SpaceError(f"{bwhere}: key 'expansion' must be a single value in a derived arch")
            e, m = ba.expansion[0], ba.mid_options[0]
            if m not in bs.mid_options:
                raise SpaceError(f"{bwhere}: key 'mid_chs' is {m}, expected one of {list(bs.mid_options)}")
            matches = [i for i, (eo, mo) in enumerate(zip(bs.expansion, bs.mid_options)) if mo == m and math.isclose(eo, e)]
            if not matches:
                raise SpaceError(f"{bwhere}: key 'expansion' is {e} with mid_chs {m}, expected one of "
                                 f"{[(eo, mo) for eo, mo in zip(bs.expansion, bs.mid_options)]}")
            expansion.append(matches[0])
        out = {"width": width, "expansion": expansion}
        for bs, ba in zip(self.blocks, arch.blocks):
            for (name, opts), (_, (value, *more)) in zip(bs.op_kwargs, ba.op_kwargs):
                if more or value not in opts:
                    raise SpaceError(f"{where}: stage {bs.stage} block {bs.block}: key {name!r} is "
                                     f"{[value, *more]!r}, expected one of {list(opts)}")
        for axis in self.axes.values():
            if axis.kwarg:
                out[axis.name] = [bs.kwarg_options(axis.kwarg).index(ba.kwarg_options(axis.kwarg)[0])
                                  for bs, ba in zip(self.blocks, arch.blocks)]
        return out

    # -- views --------------------------------------------------------------------
    def to_json(self) -> dict:
        """The stable JSON view (``dnas-search --describe --json``)."""
        return {
            "name": self.name,
            "input_size": list(self.input_size),
            "stem": {"out_chs": self.stem["out_chs"], "stride": self.stem["stride"]},
            "head": {"out_chs": self.head["out_chs"]},
            "stages": [
                {"op": st["op"], "expansion": list(st["blocks"][0]["expansion"]),
                 "channels": list(st["channels"]), "n": st["n"], "stride": st["stride"],
                 "dcs_after": st["dcs_after"], **self._declared_kwargs(st)}
                for st in self.stages
            ],
            "attention": self.attention,
            "attention_form": self.attention_form,
            "num_blocks": len(self.blocks),
            "num_width_groups": len(self.group_options),
            "log10_num_archs": round(self.log10_num_archs, 3),
            "structure_hash": self.structure_hash(),
        }

    @staticmethod
    def _without_defaults(op: str, block: dict) -> dict:
        defaults = {kw.name: [kw.default] for kw in OP_SPECS[op].kwargs}
        return {k: v for k, v in block.items() if k not in defaults or v != defaults[k]}

    @staticmethod
    def _declared_kwargs(stage: dict) -> dict:
        """Op keyword arguments the file sets for a row, as its first block has them."""
        first = stage["blocks"][0]
        return {k: list(v) for k, v in first.items() if k not in ("expansion", "mid_chs")}

    def describe(self) -> str:
        """A readable table of the space."""
        def fmt(opts: Sequence[float]) -> str:
            if len(opts) == 1:
                return f"{opts[0]:g}"
            steps = {round(b - a, 6) for a, b in zip(opts, opts[1:])}
            if len(steps) == 1 and len(opts) > 2:
                return f"{opts[0]:g}..{opts[-1]:g} step {steps.pop():g} ({len(opts)})"
            return "{" + ", ".join(f"{o:g}" for o in opts) + "}"

        c, h, w = self.input_size
        lines = [f"space {self.name}  ({self.source})", f"input {c}x{h}x{w}", ""]
        header = f"{'#':>3}  {'op':<10} {'expansion':<26} {'channels':<26} {'n':>3} {'s':>2}  {'group':>5}  dcs"
        lines += [header, "-" * len(header)]
        lines.append(f"{0:>3}  {'conv3x3':<10} {'-':<26} {self.stem['out_chs']:<26} {1:>3} {self.stem['stride']:>2}")
        for i, st in enumerate(self.stages, 1):
            exp = fmt(st["blocks"][0]["expansion"])
            lines.append(f"{i:>3}  {st['op']:<10} {exp:<26} {fmt(st['channels']):<26} {st['n']:>3} "
                         f"{st['stride']:>2}  {self.stage_group[i - 1]:>5}  "
                         + f"{'DCS' if st['dcs_after'] else '':<{3 if self._declared_kwargs(st) else 0}}"
                         + "".join(f"  {k} {fmt(v)}" for k, v in self._declared_kwargs(st).items()))
        lines.append(f"{len(self.stages) + 1:>3}  {'conv1x1':<10} {'-':<26} {self.head['out_chs']:<26} {1:>3} {1:>2}")
        lines.append(f"{len(self.stages) + 2:>3}  avgpool + fc -> {self.num_classes} classes")
        kind = {"dcs": "DCS-Attention", "self": "self-attention", "none": "no attention"}[self.attention]
        lines += ["", f"blocks: {len(self.blocks)}   width groups: {len(self.group_options)}   "
                      f"{kind} ({self.attention_form} form) after rows: "
                      f"{', '.join(str(i + 1) for i in self.dcs_stages) or 'none'}",
                  f"architectures in the space: 10^{self.log10_num_archs:.1f}"]
        return "\n".join(lines)


def load_space(name_or_path: str | Path) -> SearchSpace:
    """Load and validate a space or arch by short name (:data:`dnas.resources.SHORT_NAMES`) or path."""
    return SearchSpace.load(name_or_path)
