"""The ``backbone`` form of an architecture file: a fixed backbone with attention
modules (paper section 3.3, "DCS-FB": DCS-Attention in fixed backbones; Table I).

A derived FBNetV2 arch lists stages and blocks; a fixed-backbone arch names the network
instead and says where attention goes::

    name: dcs_fb_mobilenetv2
    backbone: mobilenetv2_100      # a timm model name, osnet_x1_0, or a vit_* for TransReID
    attention: dcs                 # none | self | dcs (the ablation options)
    attention_form: linear         # linear | softmax (CNN modules; ViT blocks are softmax)
    attention_after: [blocks.1, blocks.2, blocks.3, blocks.6]   # stage names, see STAGES
    last_stride: 1                 # Re-ID convention (null: the network's own)
    input_size: [3, 256, 128]
    num_classes: 751
    bnneck: true

``selection_rank`` sets the rank r of DCS-Attention's selection layer, ``pi = (X A) B + b``
(A: C x r, B: r x C; :class:`dnas.ops.dcs.FactorisedSelection`): ``null`` (default) is
the full C x C layer, an integer a fixed rank, a string ``"C/32"`` or ``"3C/8"`` a
fraction of each position's channels (rounded down, at least 1); a position whose rank
would reach its channels takes the full layer. On a ViT, ``null`` keeps the per-head
selectors of the queries and keys and a rank gives one selector per block from the
block's tokens to the query and key channels of every head (a fraction is of the
embedding width). The shipped files' rule per family: docs/method.md section 9.

Optional keys: ``block_repeats`` (MobileNetV2 only: repeats of its seven stages, the
deeper MobileNetV2-200), ``timm_kwargs`` (more arguments of ``timm.create_model``, e.g. a
tiny ViT for tests), ``tau_m`` (mask temperature), ``transreid`` (patch stride, SIE,
JPM; ViT only). Short names (``resnet50``, ...) name the shipped files in
``backbones/`` (:data:`dnas.resources.SHORT_NAMES`). Nothing here imports torch.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Mapping

from dnas.errors import SpaceError, brief
from dnas.space.schema import ATTENTION_FORMS, attention_from_keys

#: the stage names after which a CNN family can take an attention module, in order
STAGES = {
    "mobilenetv2": ("stem",) + tuple(f"blocks.{i}" for i in range(7)) + ("head",),
    "resnet": ("stem", "layer1", "layer2", "layer3", "layer4"),
    "hrnet": ("stem", "layer1", "stage2", "stage3", "stage4", "head"),
    "osnet": ("conv1", "conv2", "conv3", "conv4", "conv5"),
    "vit": (),  # attention replaces the attention of every block
}

TRANSREID_DEFAULTS = {"patch_stride": 12, "sie_cameras": 6, "sie_coefficient": 3.0, "jpm": True,
                      "jpm_groups": 4, "shift_num": 5, "shuffle_groups": 2}
REQUIRED = ("name", "backbone", "input_size", "num_classes")
OPTIONAL = ("attention", "attention_form", "attention_after", "last_stride", "bnneck", "tau_m", "block_repeats",
            "timm_kwargs", "transreid", "space", "use_dcs", "selection_rank")
RANK_FRACTION = re.compile(r"^(\d*)C/(\d+)$")


def parse_selection_rank(value: Any) -> None | int | tuple[int, int]:
    """``None`` (full rank), a rank, or ``(num, den)`` for ``"numC/den"``; ``ValueError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    m = RANK_FRACTION.match(value.replace(" ", "")) if isinstance(value, str) else None
    if m:
        num, den = int(m.group(1) or 1), int(m.group(2))
        if 1 <= num < den:
            return num, den
    raise ValueError(value)


def rank_for(rule: None | int | tuple[int, int], chs: int) -> int | None:
    """The selection rank at a position of ``chs`` channels (``None``: full rank)."""
    if rule is None:
        return None
    r = rule if isinstance(rule, int) else max(1, rule[0] * chs // rule[1])
    return r if r < chs else None


def family_of(backbone: str) -> str:
    """``mobilenetv2``, ``resnet``, ``hrnet``, ``osnet`` or ``vit`` for a backbone name.

    Raises:
        SpaceError: a name of no supported family.
    """
    for prefix, fam in (("mobilenetv2", "mobilenetv2"), ("resnet", "resnet"), ("hrnet", "hrnet"),
                        ("osnet", "osnet"), ("vit_", "vit")):
        if backbone.startswith(prefix):
            return fam
    raise SpaceError(f"backbone {backbone!r}: expected a timm mobilenetv2*, resnet*, hrnet* or vit_* name, "
                     "or osnet_x1_0")


def is_backbone_arch(data: Any) -> bool:
    """Whether a loaded arch mapping is of the ``backbone`` form."""
    return isinstance(data, Mapping) and "backbone" in data


def _fail(source: str, msg: str) -> SpaceError:
    return SpaceError(f"{source}: {msg}")


class BackboneArch:
    """A validated fixed-backbone architecture.

    Args:
        data: the arch mapping (see the module docstring).
        source: where it came from (for messages).

    Raises:
        SpaceError: an unknown key, a value of the wrong kind, an unknown stage name.
    """

    is_derived = True  # every field is a scalar: nothing left to search

    def __init__(self, data: Mapping, source: str = "<arch dict>"):
        self.source = source
        self.data = self._validate(dict(copy.deepcopy(dict(data))), source)
        d = self.data
        self.name: str = d["name"]
        self.backbone: str = d["backbone"]
        self.family = family_of(self.backbone)
        self.input_size: list[int] = list(d["input_size"])
        self.num_classes: int = d["num_classes"]
        self.attention: str = d["attention"]
        self.attention_form: str = d["attention_form"]
        self.attention_after: list[str] = list(d["attention_after"])
        self.last_stride = d["last_stride"]
        self.bnneck: bool = d["bnneck"]
        self.tau_m: float = d["tau_m"]
        self.block_repeats = d["block_repeats"]
        self.timm_kwargs: dict = dict(d["timm_kwargs"])
        self.transreid: dict = dict(d["transreid"]) if self.family == "vit" else {}
        self.selection_rank = d["selection_rank"]
        self._rank_rule = parse_selection_rank(self.selection_rank)

    def rank_for(self, chs: int) -> int | None:
        """The selection rank of a DCS module at ``chs`` channels (``None``: full rank)."""
        return rank_for(self._rank_rule, chs)

    @staticmethod
    def _validate(d: dict, source: str) -> dict:
        unknown = sorted(set(d) - set(REQUIRED) - set(OPTIONAL))
        if unknown:
            raise _fail(source, f"unknown key {brief(unknown[0])} "
                                f"(a backbone arch takes {', '.join(REQUIRED + OPTIONAL)})")
        for key in REQUIRED:
            if key not in d:
                raise _fail(source, f"missing key {key!r}")
        if not isinstance(d["name"], str) or not d["name"]:
            raise _fail(source, f"key 'name': expected a non-empty string, got {brief(d['name'])}")
        if not isinstance(d["backbone"], str):
            raise _fail(source, f"key 'backbone': expected a string, got {brief(d['backbone'])}")
        try:
            fam = family_of(d["backbone"])
        except SpaceError as exc:
            raise _fail(source, f"key 'backbone': {exc}") from None
        size = d["input_size"]
        if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in size) and size[0] == 3
                and size[1] >= 16 and size[2] >= 8):
            raise _fail(source, f"key 'input_size': expected [3, H, W] with H >= 16, W >= 8, got {brief(size)}")
        n = d["num_classes"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _fail(source, f"key 'num_classes': expected a positive integer, got {brief(n)}")
        d["attention"] = attention_from_keys(d.get("attention"), d.pop("use_dcs", None), source) or "dcs"
        d.setdefault("attention_form", "linear")
        if d["attention_form"] not in ATTENTION_FORMS:
            raise _fail(source, f"key 'attention_form': expected one of {', '.join(ATTENTION_FORMS)}, "
                                f"got {brief(d['attention_form'])}")
        after = d.setdefault("attention_after", [])
        if not isinstance(after, list) or not all(isinstance(s, str) for s in after):
            raise _fail(source, f"key 'attention_after': expected a list of stage names, got {brief(after)}")
        if fam == "vit" and after:
            raise _fail(source, "key 'attention_after': a ViT takes attention in every block (leave it out)")
        for s in after:
            if s not in STAGES[fam]:
                raise _fail(source, f"key 'attention_after': stage {s!r} is not a {fam} stage "
                                    f"(expected some of {', '.join(STAGES[fam])})")
        if len(set(after)) != len(after):
            raise _fail(source, f"key 'attention_after': a stage is listed twice in {after!r}")
        if fam != "vit" and d["attention"] != "none" and not after:
            raise _fail(source, f"key 'attention_after': attention {d['attention']!r} needs at least one stage")
        ls = d.setdefault("last_stride", None)
        if ls not in (None, 1, 2) or isinstance(ls, bool):
            raise _fail(source, f"key 'last_stride': expected 1, 2 or null, got {brief(ls)}")
        if ls is not None and fam not in ("mobilenetv2", "resnet"):
            raise _fail(source, f"key 'last_stride': {fam} has no last-stride option (leave it null)")
        if not isinstance(d.setdefault("bnneck", True), bool):
            raise _fail(source, f"key 'bnneck': expected true or false, got {brief(d['bnneck'])}")
        tau = d.setdefault("tau_m", 1.0)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
            raise _fail(source, f"key 'tau_m': expected a positive number, got {brief(tau)}")
        try:
            parse_selection_rank(d.setdefault("selection_rank", None))
        except ValueError:
            raise _fail(source, "key 'selection_rank': expected null (full rank), a positive integer or a "
                                f"fraction of the channels such as 'C/32' or '3C/8', got {brief(d['selection_rank'])}"
                        ) from None
        reps = d.setdefault("block_repeats", None)
        if reps is not None and (fam != "mobilenetv2" or not isinstance(reps, list) or len(reps) != 7
                                 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in reps)):
            raise _fail(source, f"key 'block_repeats': expected 7 positive integers for a mobilenetv2, "
                                f"got {brief(reps)}")
        if not isinstance(d.setdefault("timm_kwargs", {}), dict):
            raise _fail(source, f"key 'timm_kwargs': expected a mapping, got {brief(d['timm_kwargs'])}")
        tr = d.setdefault("transreid", {})
        if not isinstance(tr, dict) or (tr and fam != "vit"):
            raise _fail(source, f"key 'transreid': expected a mapping, on a vit_* backbone only, got {brief(tr)}")
        bad = sorted(set(tr) - set(TRANSREID_DEFAULTS))
        if bad:
            raise _fail(source, f"key 'transreid.{bad[0]}': unknown (expected some of {', '.join(TRANSREID_DEFAULTS)})")
        if fam == "vit":
            d["transreid"] = {**TRANSREID_DEFAULTS, **tr}
            for key in ("patch_stride", "sie_cameras", "jpm_groups", "shift_num", "shuffle_groups"):
                v = d["transreid"][key]
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key in ("sie_cameras", "shift_num")
                                                                         else 1):
                    raise _fail(source, f"key 'transreid.{key}': expected an integer >= 1 (0 allowed for "
                                        f"sie_cameras and shift_num), got {brief(v)}")
            if not isinstance(d["transreid"]["jpm"], bool):
                raise _fail(source, "key 'transreid.jpm': expected true or false, "
                                    f"got {brief(d['transreid']['jpm'])}")
        return d

    def to_dict(self) -> dict:
        """The arch mapping (a copy), as written to ``arch.yaml``."""
        return copy.deepcopy(self.data)

    def with_changes(self, **changes) -> "BackboneArch":
        """A copy with keys replaced (``None`` values are ignored)."""
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return BackboneArch(d, self.source)
