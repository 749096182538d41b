"""Tests of the search-space schema and helpers (dnas.space; docs/method.md section 1).

The paper tables (III and IV) are written out independently below and compared row by
row with the shipped space files; validation errors are checked for naming the file,
the stage/block index and the key; index choices round-trip through derived archs.
No torch needed here.
"""
from __future__ import annotations

import copy
import json
import math
from functools import lru_cache

import pytest
import yaml

from dnas.errors import SpaceError
from dnas.resources import SHORT_NAMES
from dnas.space import SearchSpace, load_space, make_divisible, resolve_space_path

# -- the paper tables, independently of the YAML files --------------------------------


def frange(lo: float, hi: float, step: float) -> list[float]:
    """min, min+step, ..., max inclusive (the (min, max, step) notation of the tables)."""
    count = int(round((hi - lo) / step)) + 1
    return [round(lo + i * step, 6) for i in range(count)]


A = frange(0.75, 3.25, 0.5)
B = frange(0.75, 4.5, 0.75)
A_XL = frange(0.75, 6.25, 0.5)
B_XL = frange(0.75, 7.5, 0.75)

# (expansion kind, channels (min, max, step), stride, dcs_after)
TABLE_ROWS = [
    ("one", (12, 16, 4), 1, False),
    ("A", (16, 28, 4), 2, False),
    ("A", (16, 28, 4), 1, True),
    ("A", (16, 40, 8), 2, False),
    ("A", (16, 40, 8), 1, True),
    ("A", (48, 96, 8), 2, False),
    ("A", (48, 96, 8), 1, False),
    ("B", (72, 128, 8), 1, True),
    ("B", (112, 216, 8), 2, False),
    ("B", (112, 216, 8), 1, True),
]
REPEATS = {
    "fbnetv2": [1, 1, 2, 1, 2, 1, 2, 4, 1, 3],
    "large": [1, 1, 6, 3, 6, 3, 6, 12, 3, 3],
    "xlarge": [1, 1, 12, 6, 12, 6, 12, 24, 6, 6],
}
EXPANSIONS = {
    "fbnetv2": {"one": [1.0], "A": A, "B": B},
    "large": {"one": [1.0], "A": A, "B": B},
    "xlarge": {"one": [1.0], "A": A_XL, "B": B_XL},
}
PAPER_SPACES = ["fbnetv2", "large", "xlarge"]
# width group of each row: rows 2-3, 4-5, 6-7, 9-10 share; rows 1 and 8 alone
PAPER_GROUPS = [0, 1, 1, 2, 2, 3, 3, 4, 5, 5]


def ref_make_divisible(v: float, divisor: int = 8) -> int:
    """The MobileNet rounding: nearest multiple of ``divisor``, never more than 10% down."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@lru_cache(maxsize=None)
def space(name: str) -> SearchSpace:
    return load_space(name)


def random_indices(sp: SearchSpace, seed: int) -> dict:
    return sp.sample_indices("random", seed=seed)


# -- the shipped space files -----------------------------------------------------------

def test_table_helpers_are_what_the_paper_says():
    assert A == [0.75, 1.25, 1.75, 2.25, 2.75, 3.25]
    assert B == [0.75, 1.5, 2.25, 3.0, 3.75, 4.5]
    assert A_XL[-1] == 6.25 and len(A_XL) == 12
    assert B_XL[-1] == 7.5 and len(B_XL) == 10
    assert frange(16, 28, 4) == [16, 20, 24, 28]


@pytest.mark.parametrize("name", PAPER_SPACES)
def test_paper_space_rows_match_table(name):
    sp = space(name)
    assert len(sp.stages) == len(TABLE_ROWS)
    for i, (st, (kind, ch, stride, dcs)) in enumerate(zip(sp.stages, TABLE_ROWS)):
        row = f"row {i + 1}"
        assert st["op"] == "ir", row
        assert st["channels"] == [int(c) for c in frange(*ch)], row
        assert st["n"] == REPEATS[name][i], row
        assert st["stride"] == stride, row
        assert st["dcs_after"] is dcs, row
        assert len(st["blocks"]) == st["n"], row
        for b in st["blocks"]:
            assert b["expansion"] == pytest.approx(EXPANSIONS[name][kind]), row
            assert b["mid_chs"] is None, row


@pytest.mark.parametrize("name", PAPER_SPACES)
def test_paper_space_stem_head_input(name):
    sp = space(name)
    assert sp.stem["out_chs"] == 16 and sp.stem["stride"] == 2
    assert sp.head == {"out_chs": 1984}
    assert sp.input_size == [3, 256, 128]
    assert sp.dcs_stages == [2, 4, 7, 9]  # after rows 3, 5, 8, 10 (1-based)
    assert sp.use_dcs is True and sp.bnneck is False
    assert sp.attention == "dcs" and sp.attention_form == "linear"
    assert sp.tau_m == 1.0


@pytest.mark.parametrize("name", PAPER_SPACES)
def test_paper_space_width_groups(name):
    sp = space(name)
    assert sp.stage_group == PAPER_GROUPS
    expected = [tuple(int(c) for c in frange(*TABLE_ROWS[i][1])) for i in (0, 1, 3, 5, 7, 8)]
    assert sp.group_options == expected


@pytest.mark.parametrize("name", PAPER_SPACES + ["tiny"])
def test_block_specs(name):
    sp = space(name)
    assert len(sp.blocks) == sum(st["n"] for st in sp.stages)
    prev_opts = (sp.stem["out_chs"],)
    prev_group = None
    k = 0
    for s, st in enumerate(sp.stages):
        for j in range(st["n"]):
            b = sp.blocks[k]
            assert (b.index, b.stage, b.block) == (k, s, j)
            assert b.in_options == prev_opts
            assert b.in_group == prev_group
            assert b.out_group == sp.stage_group[s]
            assert b.out_options == tuple(st["channels"])
            assert b.stride == (st["stride"] if j == 0 else 1)
            assert b.expansion == pytest.approx(tuple(st["blocks"][j]["expansion"]))
            assert b.mid_options == tuple(ref_make_divisible(e * max(prev_opts)) for e in b.expansion)
            assert all(m % 8 == 0 for m in b.mid_options)
            assert b.op == "ir"
            prev_opts, prev_group = b.out_options, b.out_group
            k += 1


def test_block_spec_hand_values_fbnetv2():
    sp = space("fbnetv2")
    # row 1: expansion 1 on the 16-channel stem
    assert sp.blocks[0].mid_options == (16,)
    assert sp.blocks[0].in_options == (16,) and sp.blocks[0].in_group is None
    # row 2: in options (12, 16), max 16: 12, 20, 28, 36, 44, 52 rounded to 8
    assert sp.blocks[1].mid_options == (16, 24, 32, 40, 48, 56)
    # row 3: in max 28: 21, 35, 49, 63, 77, 91
    assert sp.blocks[2].mid_options == (24, 32, 48, 64, 80, 88)
    assert sp.blocks[2].stride == 1 and sp.blocks[3].stride == 1 and sp.blocks[1].stride == 2
    # row 8 first block: input from row 7 (max 96), B options
    row8 = [b for b in sp.blocks if b.stage == 7]
    assert len(row8) == 4
    assert row8[0].in_options == tuple(range(48, 97, 8))
    assert row8[0].mid_options == tuple(ref_make_divisible(e * 96) for e in B)
    assert row8[1].mid_options == tuple(ref_make_divisible(e * 128) for e in B)


def test_make_divisible_values():
    assert make_divisible(12) == 16
    assert make_divisible(35) == 32
    assert make_divisible(91) == 88
    assert make_divisible(3) == 8
    assert make_divisible(20, 4) == 20
    for v in [1.0, 7.9, 21.0, 63.0, 100.5, 333.3, 960.0]:
        m = make_divisible(v)
        assert m % 8 == 0 and m >= 0.9 * v and m == ref_make_divisible(v)


def test_tiny_space_layout():
    sp = space("tiny")
    assert sp.input_size == [3, 64, 32]
    assert sp.stem["out_chs"] == 16
    assert sp.stages[0]["channels"] == [8, 16] and sp.stages[0]["stride"] == 1
    assert sp.group_options == [(8, 16), (16, 24, 32), (32, 48, 64)]
    assert sp.stage_group == [0, 1, 1, 2, 2]
    assert sp.dcs_stages == [2, 4]
    assert not sp.is_derived


# -- loading by name and path --------------------------------------------------------

@pytest.mark.parametrize("short, full", [("fbnetv2", "fbnetv2"), ("large", "fbnetv2_large"),
                                         ("fbnetv2_large", "fbnetv2_large"), ("xlarge", "fbnetv2_xlarge"),
                                         ("fbnetv2_xlarge", "fbnetv2_xlarge"), ("tiny", "tiny")])
def test_short_names_resolve(short, full, monkeypatch):
    monkeypatch.delenv("DNAS_HOME", raising=False)
    path = resolve_space_path(short)
    assert path.name == f"{full}.yaml" and path.is_file()
    assert load_space(short).name == full
    assert short in SHORT_NAMES


def test_user_yaml_path_and_arch_directory(tmp_path):
    data = yaml.safe_load(resolve_space_path("tiny").read_text())
    data["name"] = "mine"
    f = tmp_path / "my_space.yaml"
    f.write_text(yaml.safe_dump(data))
    sp = load_space(str(f))
    assert sp.name == "mine" and sp.source == str(f)
    assert load_space(f).name == "mine"
    d = tmp_path / "derived"
    d.mkdir()
    arch = space("tiny").arch_from_indices(space("tiny").sample_indices("max"), name="d1")
    (d / "arch.yaml").write_text(yaml.safe_dump(arch))
    assert resolve_space_path(d) == d / "arch.yaml"
    loaded = load_space(d)
    assert loaded.name == "d1" and loaded.is_derived


def test_unknown_name_or_missing_path(tmp_path):
    with pytest.raises(SpaceError, match="tiny"):
        load_space("no_such_space")
    with pytest.raises(SpaceError, match="nope.yaml"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError):  # a directory without arch.yaml
        load_space(tmp_path)


# -- strict validation ------------------------------------------------------------------

BASE = {
    "name": "mini",
    "input_size": [3, 32, 16],
    "stem": {"out_chs": 8, "stride": 2},
    "stages": [
        {"op": "ir", "expansion": [1.0], "channels": [4, 8], "n": 1, "stride": 1, "dcs_after": False},
        {"op": "ir", "expansion": [1.0, 2.0], "channels": [8, 12], "n": 1, "stride": 2, "dcs_after": False},
        {"op": "ir", "expansion": [1.0, 2.0], "channels": [8, 12], "n": 2, "stride": 1, "dcs_after": True},
    ],
    "head": {"out_chs": 32},
}


def write_yaml(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _set_stage(key, value, stage=2):
    def f(d):
        d["stages"][stage][key] = value
    return f


def _del_stage(key, stage=2):
    def f(d):
        del d["stages"][stage][key]
    return f


def _set_top(key, value):
    def f(d):
        d[key] = value
    return f


def _del_top(key):
    def f(d):
        del d[key]
    return f


def _blocks(blocks, drop_expansion=False):
    def f(d):
        d["stages"][2]["blocks"] = blocks
        if drop_expansion:
            del d["stages"][2]["expansion"]
    return f


S2 = "stage 2"
B1 = "stage 2 block 1"
INVALID = [
    ("top_unknown_key", _set_top("colour", 1), ["'colour'"]),
    ("top_missing_name", _del_top("name"), ["'name'"]),
    ("top_missing_stem", _del_top("stem"), ["'stem'"]),
    ("top_missing_stages", _del_top("stages"), ["'stages'"]),
    ("top_missing_head", _del_top("head"), ["'head'"]),
    ("top_missing_input_size", _del_top("input_size"), ["'input_size'"]),
    ("input_size_short", _set_top("input_size", [3, 32]), ["'input_size'"]),
    ("input_size_long", _set_top("input_size", [3, 32, 16, 1]), ["'input_size'"]),
    ("input_size_strings", _set_top("input_size", ["3", "32", "16"]), ["'input_size'"]),
    ("bnneck_not_bool", _set_top("bnneck", "no"), ["'bnneck'"]),
    ("use_dcs_not_bool", _set_top("use_dcs", 1), ["'use_dcs'"]),
    ("attention_unknown", _set_top("attention", "cross"), ["'attention'", "none, self, dcs"]),
    ("attention_form_unknown", _set_top("attention_form", "quadratic"), ["'attention_form'", "linear, softmax"]),
    ("stages_empty", _set_top("stages", []), ["'stages'"]),
    ("stem_stride_3", _set_top("stem", {"out_chs": 8, "stride": 3}), ["stem", "'stride'"]),
    ("stem_unknown_key", _set_top("stem", {"out_chs": 8, "stride": 2, "pad": 1}), ["stem", "'pad'"]),
    ("head_unknown_key", _set_top("head", {"out_chs": 32, "dropout": 0.1}), ["head", "'dropout'"]),
    ("head_negative", _set_top("head", {"out_chs": -32}), ["head", "'out_chs'"]),
    ("tau_m_negative", _set_top("dcs", {"tau_m": -1.0}), ["dcs", "'tau_m'"]),
    ("stage_unknown_key", _set_stage("kernel", 5), [S2, "'kernel'"]),
    ("stage_unknown_op", _set_stage("op", "conv9"), [S2, "'op'", "conv9"]),
    ("stage_missing_op", _del_stage("op"), [S2, "'op'"]),
    ("stage_missing_channels", _del_stage("channels"), [S2, "'channels'"]),
    ("stage_missing_n", _del_stage("n"), [S2, "'n'"]),
    ("stage_missing_stride", _del_stage("stride"), [S2, "'stride'"]),
    ("stage_missing_dcs_after", _del_stage("dcs_after"), [S2, "'dcs_after'"]),
    ("stage_missing_expansion", _del_stage("expansion"), [S2, "'expansion'"]),
    ("channels_string", _set_stage("channels", "12"), [S2, "'channels'"]),
    ("channels_string_in_list", _set_stage("channels", [8, "12"]), [S2, "'channels'"]),
    ("channels_negative", _set_stage("channels", [-8, 12]), [S2, "'channels'"]),
    ("channels_float", _set_stage("channels", [8.0, 12]), [S2, "'channels'"]),
    ("channels_empty", _set_stage("channels", []), [S2, "'channels'", "empty"]),
    ("channels_duplicate", _set_stage("channels", [8, 8]), [S2, "'channels'", "duplicate"]),
    ("expansion_empty", _set_stage("expansion", []), [S2, "'expansion'"]),
    ("expansion_duplicate", _set_stage("expansion", [1.0, 1.0]), [S2, "'expansion'"]),
    ("expansion_zero", _set_stage("expansion", [0, 1.0]), [S2, "'expansion'"]),
    ("expansion_string", _set_stage("expansion", "big"), [S2, "'expansion'"]),
    ("n_bool", _set_stage("n", True), [S2, "'n'"]),
    ("n_float", _set_stage("n", 2.0), [S2, "'n'"]),
    ("n_zero", _set_stage("n", 0), [S2, "'n'"]),
    ("stride_3", _set_stage("stride", 3), [S2, "'stride'"]),
    ("stride_string", _set_stage("stride", "1"), [S2, "'stride'"]),
    ("dcs_after_string", _set_stage("dcs_after", "yes"), [S2, "'dcs_after'"]),
    ("dcs_after_int", _set_stage("dcs_after", 1), [S2, "'dcs_after'"]),
    ("stage_not_mapping", lambda d: d["stages"].__setitem__(2, [1, 2]), [S2]),
    ("blocks_wrong_length", _blocks([{}]), [S2, "'blocks'"]),
    ("blocks_not_list", _blocks({"expansion": 1.0}), [S2, "'blocks'"]),
    ("block_unknown_key", _blocks([{}, {"expansion": 1.0, "kernel": 5}]), [B1, "'kernel'"]),
    ("block_bad_expansion", _blocks([{}, {"expansion": -1.0}]), [B1, "'expansion'"]),
    ("block_missing_expansion", _blocks([{"expansion": 1.0}, {}], drop_expansion=True), [B1, "'expansion'"]),
    ("block_mid_chs_count", _blocks([{}, {"mid_chs": [8]}]), [B1, "'mid_chs'"]),
    ("block_mid_chs_bad", _blocks([{}, {"mid_chs": [8, "16"]}]), [B1, "'mid_chs'"]),
]


def test_base_dict_is_valid(tmp_path):
    sp = load_space(write_yaml(tmp_path, BASE))
    assert sp.name == "mini" and len(sp.blocks) == 4


@pytest.mark.parametrize("case, mutate, fragments", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_file_raises_naming_file_stage_key(tmp_path, case, mutate, fragments):
    data = copy.deepcopy(BASE)
    mutate(data)
    path = write_yaml(tmp_path, data, f"{case}.yaml")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    msg = str(info.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_block_overrides_are_accepted(tmp_path):
    data = copy.deepcopy(BASE)
    data["stages"][2]["blocks"] = [{"expansion": [1.0, 3.0]}, {"mid_chs": [40, 48]}]
    sp = load_space(write_yaml(tmp_path, data))
    b0, b1 = [b for b in sp.blocks if b.stage == 2]
    assert b0.expansion == (1.0, 3.0) and b0.mid_options == (16, 40)  # in max 12 (then 12, 36 -> 16, 40)
    assert b1.expansion == (1.0, 2.0) and b1.mid_options == (40, 48)


def test_invalid_yaml_syntax_and_non_mapping(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\nstages: {\n")
    with pytest.raises(SpaceError, match="broken.yaml"):
        load_space(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(SpaceError, match="list.yaml"):
        load_space(lst)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(SpaceError, match="empty.yaml"):
        load_space(empty)


def test_from_dict_names_source():
    data = copy.deepcopy(BASE)
    data["stages"][1]["n"] = -1
    with pytest.raises(SpaceError, match=r"<dict>: stage 1.*'n'"):
        SearchSpace.from_dict(data)


# -- sampling and derived architectures -------------------------------------------------

@pytest.mark.parametrize("name", PAPER_SPACES + ["tiny"])
def test_sample_max_min(name):
    sp = space(name)
    for mode, pick in (("max", max), ("min", min)):
        idx = sp.sample_indices(mode)
        assert len(idx["width"]) == len(sp.group_options)
        assert len(idx["expansion"]) == len(sp.blocks)
        for g, i in enumerate(idx["width"]):
            assert sp.group_options[g][i] == pick(sp.group_options[g])
        for b, i in zip(sp.blocks, idx["expansion"]):
            assert b.mid_options[i] == pick(b.mid_options)


def test_sample_random_seeded():
    sp = space("fbnetv2")
    a, b = sp.sample_indices("random", seed=3), sp.sample_indices("random", seed=3)
    assert a == b
    assert sp.sample_indices("random", seed=4) != a
    for seed in range(5):
        idx = sp.sample_indices("random", seed=seed)
        assert all(0 <= i < len(o) for i, o in zip(idx["width"], sp.group_options))
        assert all(0 <= i < len(b.mid_options) for i, b in zip(idx["expansion"], sp.blocks))
    tiny = space("tiny")
    assert len({json.dumps(tiny.sample_indices("random", seed=s)) for s in range(10)}) > 1
    with pytest.raises(SpaceError, match="widest"):
        sp.sample_indices("widest")


@pytest.mark.parametrize("name", PAPER_SPACES + ["tiny"])
def test_arch_from_indices_round_trip(name):
    sp = space(name)
    choices = [sp.sample_indices("max"), sp.sample_indices("min")] + [random_indices(sp, s) for s in range(3)]
    for idx in choices:
        arch_dict = sp.arch_from_indices(idx)
        arch = SearchSpace.from_dict(arch_dict)
        assert arch.is_derived
        assert arch_dict["space"] == sp.name
        for s, st in enumerate(arch_dict["stages"]):
            w = sp.group_options[sp.stage_group[s]][idx["width"][sp.stage_group[s]]]
            assert st["channels"] == w
            assert len(st["blocks"]) == st["n"] == sp.stages[s]["n"]
        for bs, ba, i in zip(sp.blocks, arch.blocks, idx["expansion"]):
            assert ba.mid_options == (bs.mid_options[i],)
            assert ba.expansion == pytest.approx((bs.expansion[i],))
            assert ba.stride == bs.stride
        # the derived blocks chain the chosen widths
        assert arch.blocks[0].in_options == (sp.stem["out_chs"],)
        for prev, cur in zip(arch.blocks, arch.blocks[1:]):
            assert cur.in_options == prev.out_options
        assert sp.indices_from_arch(arch) == idx
        # and through YAML text
        again = SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump(arch_dict)), "again.yaml")
        assert sp.indices_from_arch(again) == idx


def test_arch_from_indices_overrides():
    sp = space("tiny")
    d = sp.arch_from_indices(sp.sample_indices("min"), num_classes=751, name="x", attention=False, bnneck=True)
    arch = SearchSpace.from_dict(d)
    assert arch.num_classes == 751 and arch.name == "x" and arch.use_dcs is False and arch.bnneck is True
    default = SearchSpace.from_dict(sp.arch_from_indices(sp.sample_indices("min")))
    assert default.num_classes == sp.num_classes == 10
    assert default.use_dcs is True and default.bnneck is False
    assert default.name == "tiny-derived"
    selfatt = SearchSpace.from_dict(sp.arch_from_indices(sp.sample_indices("min"), attention="self"))
    assert selfatt.attention == "self" and selfatt.use_dcs is True


@pytest.mark.parametrize("use_dcs, attention, expected", [
    (True, None, "dcs"), (False, None, "none"), (None, "self", "self"), (True, "self", "self"),
    (False, "none", "none"), (None, None, "dcs")])
def test_attention_key_and_legacy_use_dcs(use_dcs, attention, expected):
    data = yaml.safe_load(resolve_space_path("tiny").read_text())
    for key, value in (("use_dcs", use_dcs), ("attention", attention)):
        if value is not None:
            data[key] = value
    assert SearchSpace.from_dict(data).attention == expected


@pytest.mark.parametrize("use_dcs, attention", [(True, "none"), (False, "dcs"), (False, "self")])
def test_attention_and_use_dcs_that_disagree_are_refused(use_dcs, attention):
    data = yaml.safe_load(resolve_space_path("tiny").read_text())
    data.update(use_dcs=use_dcs, attention=attention)
    with pytest.raises(SpaceError, match="disagree"):
        SearchSpace.from_dict(data)


def test_with_attention_changes_only_the_attention():
    sp = space("tiny")
    other = sp.with_attention("self", "softmax")
    assert (other.attention, other.attention_form) == ("self", "softmax")
    assert (sp.attention, sp.attention_form) == ("dcs", "linear")
    assert other.group_options == sp.group_options and other.structure_hash() == sp.structure_hash()


def _tiny_arch_dict() -> dict:
    sp = space("tiny")
    return sp.arch_from_indices({"width": [1, 1, 0], "expansion": [0, 1, 0, 1, 0, 1]})


def _mut_channels(stage, value):
    def f(d):
        d["stages"][stage]["channels"] = value
    return f


def _mut_stage(stage, key, value):
    def f(d):
        d["stages"][stage][key] = value
    return f


def _mut_n(stage):
    def f(d):
        st = d["stages"][stage]
        st["n"] = st["n"] + 1
        st["blocks"] = st["blocks"] + [dict(st["blocks"][-1])]
    return f


def _mut_mid(stage, block, value):
    def f(d):
        d["stages"][stage]["blocks"][block]["mid_chs"] = value
    return f


MISFITS = [
    ("channel_not_option", _mut_channels(1, 10), ["stage 1", "'channels'"]),
    ("group_widths_differ", _mut_channels(2, 16), ["stage 2", "'channels'"]),
    ("wrong_n", _mut_n(3), ["stage 3", "'n'"]),
    ("wrong_stride", _mut_stage(4, "stride", 2), ["stage 4", "'stride'"]),
    ("wrong_dcs_after", _mut_stage(0, "dcs_after", True), ["stage 0", "'dcs_after'"]),
    ("mid_not_option", _mut_mid(2, 1, 24), ["stage 2 block 1", "'mid_chs'"]),
    ("expansion_mid_mismatch", lambda d: d["stages"][1]["blocks"][0].update(expansion=1.0, mid_chs=32),
     ["stage 1 block 0", "'expansion'"]),
    ("stem_differs", lambda d: d.__setitem__("stem", {"out_chs": 4, "stride": 2}), ["'stem'"]),
    ("too_few_stages", lambda d: d["stages"].pop(), ["stages"]),
]


def test_tiny_arch_dict_fits():
    sp = space("tiny")
    arch = SearchSpace.from_dict(_tiny_arch_dict())
    assert sp.indices_from_arch(arch) == {"width": [1, 1, 0], "expansion": [0, 1, 0, 1, 0, 1]}


@pytest.mark.parametrize("case, mutate, fragments", MISFITS, ids=[c[0] for c in MISFITS])
def test_arch_that_does_not_fit(case, mutate, fragments):
    d = _tiny_arch_dict()
    mutate(d)
    arch = SearchSpace.from_dict(d, f"{case}.yaml")  # valid as a file, but not of this space
    with pytest.raises(SpaceError) as info:
        space("tiny").indices_from_arch(arch)
    msg = str(info.value)
    assert f"{case}.yaml" in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


# -- summaries -----------------------------------------------------------------------------

def test_log10_num_archs_tiny_independent_count():
    # widths: row 1 {8, 16}, rows 2-3 {16, 24, 32}, rows 4-5 {32, 48, 64}
    # expansions: row 1 one option; rows 2-3 three blocks x 2; rows 4-5 two blocks x 2
    count = 2 * 3 * 3 * 1 * 2 ** 3 * 2 ** 2
    assert space("tiny").log10_num_archs == pytest.approx(math.log10(count))


@pytest.mark.parametrize("name", PAPER_SPACES)
def test_log10_num_archs_paper(name):
    widths = [len(frange(*TABLE_ROWS[i][1])) for i in (0, 1, 3, 5, 7, 8)]
    exp = sum(REPEATS[name][i] * math.log10(len(EXPANSIONS[name][TABLE_ROWS[i][0]])) for i in range(10))
    assert space(name).log10_num_archs == pytest.approx(sum(math.log10(w) for w in widths) + exp)


def test_structure_hash():
    data = yaml.safe_load(resolve_space_path("tiny").read_text())
    h = SearchSpace.from_dict(copy.deepcopy(data)).structure_hash()
    assert len(h) == 64 and int(h, 16) >= 0
    assert h == space("tiny").structure_hash()
    renamed = copy.deepcopy(data)
    renamed["name"] = "other"
    renamed["num_classes"] = 3
    assert SearchSpace.from_dict(renamed).structure_hash() == h
    for key, value in (("channels", [8, 12]), ("n", 3), ("stride", 2), ("expansion", [1.0, 4.0])):
        changed = copy.deepcopy(data)
        changed["stages"][2][key] = value
        assert SearchSpace.from_dict(changed).structure_hash() != h, key
    changed = copy.deepcopy(data)
    changed["head"]["out_chs"] = 32
    assert SearchSpace.from_dict(changed).structure_hash() != h
    assert space("fbnetv2").structure_hash() != space("large").structure_hash()


@pytest.mark.parametrize("name", ["tiny", "fbnetv2", "xlarge"])
def test_to_json(name):
    sp = space(name)
    j = sp.to_json()
    json.dumps(j)  # serialisable
    assert {"name", "input_size", "stem", "head", "stages"} <= set(j)
    assert j["name"] == sp.name and j["input_size"] == sp.input_size
    assert j["stem"] == {"out_chs": sp.stem["out_chs"], "stride": sp.stem["stride"]}
    assert j["head"] == {"out_chs": sp.head["out_chs"]}
    assert len(j["stages"]) == len(sp.stages)
    for entry, st in zip(j["stages"], sp.stages):
        assert set(entry) == {"op", "expansion", "channels", "n", "stride", "dcs_after"}
        assert entry["channels"] == st["channels"] and entry["n"] == st["n"]
        assert entry["stride"] == st["stride"] and entry["dcs_after"] == st["dcs_after"]
        assert entry["expansion"] == pytest.approx(st["blocks"][0]["expansion"])


def test_describe_mentions_every_row():
    text = space("fbnetv2").describe()
    assert "fbnetv2" in text and "1984" in text
    assert "3, 5, 8, 10" in text  # DCS rows, 1-based
    assert "0.75..3.25 step 0.5" in text


def test_spaces_load_without_torch():
    """dnas.space validates against the torch-free op specs: loading, describing and keying a
    space imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from dnas.space import load_space; from dnas.latency.keys import space_entries\n"
            "for n in ('tiny', 'fbnetv2', 'supernets/tiny_kernel.yaml'):\n"
            "    sp = load_space(n); sp.describe(); sp.to_json(); space_entries(sp)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_shipped_space_hashes_are_unchanged():
    """The structure hashes the shipped latency tables and runs were made with (OPS_VERSION 2)."""
    assert space("tiny").structure_hash().startswith("5d810bfa48dc")
    assert space("fbnetv2").structure_hash().startswith("5cb03b59198b")
    assert space("large").structure_hash().startswith("4211c97c3db0")
    assert space("xlarge").structure_hash().startswith("131414171ce4")


def test_op_kwarg_keys_are_validated_per_op(tmp_path):
    data = copy.deepcopy(BASE)
    data["stages"][1]["kernel_size"] = [3, 5]
    data["stages"][2]["blocks"] = [{"kernel_size": 5}, {}]
    sp = load_space(write_yaml(tmp_path, data))
    assert [b.kwarg_options("kernel_size") for b in sp.blocks] == [(3,), (3, 5), (5,), (3,)]
    assert list(sp.axes) == ["width", "expansion", "kernel"]
    data["stages"][2]["kernel"] = 5
    with pytest.raises(SpaceError, match="stage 2: unknown key 'kernel' .*kernel_size"):
        load_space(write_yaml(tmp_path, data, "bad.yaml"))


def test_op_spec_declarations_are_checked():
    from dnas.space.op_specs import KERNEL_SIZE, OP_SPECS, OpKwarg, OpSpec, register_op_spec

    with pytest.raises(ValueError, match="already declared"):
        register_op_spec(OpSpec("ir"))
    with pytest.raises(ValueError, match="repeat"):
        register_op_spec(OpSpec("x1", (KERNEL_SIZE, KERNEL_SIZE)))
    with pytest.raises(ValueError, match="space's own"):
        register_op_spec(OpSpec("x2", (OpKwarg("groups", "width", 1, lambda v: True, "any"),)))
    with pytest.raises(ValueError, match="already names keyword argument 'kernel_size'"):
        register_op_spec(OpSpec("x3", (OpKwarg("dilation", "kernel", 1, lambda v: True, "any"),)))
    assert set(OP_SPECS) == {"ir"}
