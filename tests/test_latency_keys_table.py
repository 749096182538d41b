"""Latency keys (one key function, entry enumeration), tables (CSV + meta, provenance,
errors) and the timing protocol on CPU; the CUDA-graph path when a GPU is present."""
import json
import math

import pytest
import torch

from dnas.errors import DnasError, LatencyTableError
from dnas.latency.keys import (KIND_FIELDS, count_by_kind, derived_entries, latency_key, module_slots, parse_key,
                               space_entries)
from dnas.latency.profile import build_entry_module, partial_path, profile_space
from dnas.latency.table import LatencyTable, table_paths
from dnas.latency.timing import TimingConfig, measure_module, round_robin
from dnas.models import PlainNet
from dnas.space import SearchSpace, load_space
from latency_fixtures import FAST_TIMING, measured_tiny_table, synthetic_table


# -- keys -------------------------------------------------------------------------
def test_key_format_and_round_trip():
    key = latency_key("block", op="ir", in_chs=16, mid_chs=48, out_chs=24, stride=2, res=(128, 64))
    assert key == "block/op=ir/in_chs=16/mid_chs=48/out_chs=24/stride=2/res=128x64"
    assert parse_key(key) == ("block", {"op": "ir", "in_chs": 16, "mid_chs": 48, "out_chs": 24, "stride": 2,
                                        "res": (128, 64)})
    assert latency_key("classifier", in_chs=64, out_chs=10, bnneck=True).endswith("bnneck=1")
    dcs = latency_key("dcs", attention="dcs", form="linear", in_chs=24, res=(64, 32))
    assert dcs == "dcs/attention=dcs/form=linear/in_chs=24/res=64x32"
    assert parse_key(dcs) == ("dcs", {"attention": "dcs", "form": "linear", "in_chs": 24, "res": (64, 32)})


@pytest.mark.parametrize("kind,fields", [
    ("block", dict(op="ir", in_chs=1, mid_chs=1, out_chs=1, stride=1)),  # missing res
    ("dcs", dict(in_chs=8, res=(4, 4), stride=1)),  # extra field
    ("conv", dict(in_chs=8)),  # unknown kind
])
def test_key_rejects_bad_fields(kind, fields):
    with pytest.raises(ValueError):
        latency_key(kind, **fields)


def test_parse_key_rejects_garbage():
    for bad in ("nope/in_chs=1", "dcs/in_chs=8", "dcs/in_chs8/res=4x4", "dcs/in_chs=8/res=4x4"):
        with pytest.raises(LatencyTableError):
            parse_key(bad)


# a frozen copy of a small space, so the hand-counted entries below do not follow edits of tiny.yaml
SMALL = {"name": "small", "input_size": [3, 64, 32], "num_classes": 10, "stem": {"out_chs": 8, "stride": 2},
         "head": {"out_chs": 64}, "stages": [
             {"op": "ir", "expansion": [1.0], "channels": [4, 8], "n": 1, "stride": 1, "dcs_after": False},
             {"op": "ir", "expansion": [1.0, 2.0], "channels": [8, 12, 16], "n": 1, "stride": 2, "dcs_after": False},
             {"op": "ir", "expansion": [1.0, 2.0], "channels": [8, 12, 16], "n": 2, "stride": 1, "dcs_after": True},
             {"op": "ir", "expansion": [1.0, 3.0], "channels": [16, 24], "n": 1, "stride": 2, "dcs_after": False},
             {"op": "ir", "expansion": [1.0, 3.0], "channels": [16, 24], "n": 1, "stride": 1, "dcs_after": True}]}


def test_entry_counts_follow_the_keying_rule():
    space = SearchSpace.from_dict(SMALL)
    counts = count_by_kind(space_entries(space))
    # block 0: stem(8) x mid{8} x out{4,8} = 2; block 1 (first of group 1): {4,8} x {8,16} x {8,12,16} = 12;
    # blocks 2-3 (inside group 1, same key): {8,12,16} x {16,32} = 6; block 4: {8,12,16} x {16,48} x {16,24} = 12;
    # block 5 (inside group 2): {16,24} x {24,72} = 4
    # dcs: {8,12,16} + {16,24} widths, each for attention dcs and self = 10
    assert counts == {"stem": 1, "block": 36, "dcs": 10, "head": 2, "classifier": 2}
    forms = {(e.get("attention"), e.get("form")) for e in space_entries(space) if e.kind == "dcs"}
    assert forms == {("dcs", "linear"), ("self", "linear")}
    soft = space.with_attention(form="softmax")
    assert {e.get("form") for e in space_entries(soft) if e.kind == "dcs"} == {"softmax"}
    inside = [e for e in space_entries(space) if e.kind == "block" and e.get("stride") == 1
              and e.get("res") == (16, 8)]
    assert all(e.get("in_chs") == e.get("out_chs") for e in inside)


def test_paper_space_entry_counts():
    counts = {n: sum(count_by_kind(space_entries(load_space(n))).values()) for n in ("fbnetv2", "large", "xlarge")}
    assert counts == {"fbnetv2": 1609, "large": 1609, "xlarge": 2759}


@pytest.mark.parametrize("name", ["tiny", "fbnetv2", "xlarge"])
def test_every_derived_arch_is_covered_by_the_profiled_entries(name):
    space = load_space(name)
    keys = {e.key for e in space_entries(space)}
    for seed in range(15):
        mode = ("min", "max")[seed] if seed < 2 else "random"
        arch = SearchSpace.from_dict(space.arch_from_indices(space.sample_indices(mode, seed=seed)))
        for attention in ("dcs", "self", "none"):
            ents = derived_entries(arch, attention=attention)
            assert {e.key for e in ents} <= keys
            assert sum(e.kind == "dcs" for e in ents) == (len(space.dcs_stages) if attention != "none" else 0)


def test_entry_input_shapes_match_the_plain_network():
    space = load_space("tiny")
    arch = SearchSpace.from_dict(space.arch_from_indices(space.sample_indices("random", seed=3)))
    net = PlainNet(arch).eval()
    seen = []
    mods = [net.stem, *net.blocks, *net.dcs.values(), net.head.conv, net.head.classifier]
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, tuple(a[0].shape[1:])))) for m in mods]
    with torch.no_grad():
        net(torch.randn(2, *space.input_size))
    for h in hooks:
        h.remove()
    shapes = {id(m): s for m, s in seen}
    ents = derived_entries(arch)
    by_kind = {k: [e for e in ents if e.kind == k] for k in KIND_FIELDS}
    assert shapes[id(net.stem)] == by_kind["stem"][0].input_shape
    assert [shapes[id(b)] for b in net.blocks] == [e.input_shape for e in by_kind["block"]]
    assert [shapes[id(d)] for d in net.dcs.values()] == [e.input_shape for e in by_kind["dcs"]]
    assert shapes[id(net.head.conv)] == by_kind["head"][0].input_shape
    assert shapes[id(net.head.classifier)] == by_kind["classifier"][0].input_shape


def test_module_slots_axes_name_width_groups_and_blocks():
    space = load_space("tiny")
    slots = module_slots(space)
    assert [s.kind for s in slots].count("block") == len(space.blocks)
    first = slots[1]
    assert first.axes[0] == ("fixed", 0) and first.axes[1] == ("expansion", 0)
    inside = {s.name for s in slots if s.kind == "block" and len(s.axes) == 2}
    assert inside == {f"blocks.{b.index}" for b in space.blocks if b.in_group == b.out_group} != set()


@pytest.mark.parametrize("kind", list(KIND_FIELDS))
def test_every_entry_kind_builds_and_runs(kind):
    entry = next(e for e in space_entries(load_space("tiny")) if e.kind == kind)
    module = build_entry_module(entry).eval()
    with torch.no_grad():
        y = module(torch.randn(2, *entry.input_shape))
    assert y.shape[0] == 2 and torch.isfinite(y).all()


# -- tables -------------------------------------------------------------------------
def test_table_round_trip_pandas_and_provenance(tmp_path):
    space = load_space("tiny")
    table = synthetic_table(space)
    path = table.save(tmp_path / "t")
    assert path.name == "t.csv" and (tmp_path / "t.meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    loaded = LatencyTable.load(tmp_path / "t.csv", space)
    assert loaded.entries == pytest.approx(table.entries, rel=1e-5)
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(path)
    assert len(df) == len(table) and {"key", "kind", "ms", "in_chs", "res"} <= set(df.columns)
    assert set(df["kind"]) == {"stem", "block", "dcs", "head", "classifier"}


def test_measured_table_has_provenance():
    meta = json.loads(table_paths(measured_tiny_table())[1].read_text())
    for key in ("device_name", "driver", "cuda", "torch", "dtype", "batch", "resolution", "method", "date",
                "space_hash", "protocol", "mode"):
        assert key in meta, key
    assert meta["method"] == "eager" and meta["space_hash"] == load_space("tiny").structure_hash()
    assert meta["resolution"] == [64, 32] and "eval" in meta["mode"]


def test_missing_key_and_stale_space_are_clear_errors(tmp_path):
    space = load_space("tiny")
    table = synthetic_table(space)
    with pytest.raises(LatencyTableError, match=r"no entry for key 'dcs/attention=dcs/form=linear/in_chs=999/res=1x1'"):
        table.lookup("dcs/attention=dcs/form=linear/in_chs=999/res=1x1")
    table.save(tmp_path / "t")
    with pytest.raises(LatencyTableError, match="structure hash"):
        LatencyTable.load(tmp_path / "t", load_space("fbnetv2"))
    with pytest.raises(LatencyTableError, match="not found"):
        LatencyTable.load(tmp_path / "missing.csv")


def test_malformed_tables_are_rejected(tmp_path):
    table = synthetic_table(load_space("tiny"))
    path = table.save(tmp_path / "t")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")  # a row lost: meta count disagrees
    with pytest.raises(LatencyTableError, match="rows"):
        LatencyTable.load(path)
    bad = lines[1].split(",")
    bad[2] = "nan"
    path.write_text("\n".join([lines[0], ",".join(bad)] + lines[2:]) + "\n")
    with pytest.raises(LatencyTableError, match="ms is 'nan'"):
        LatencyTable.load(path)


def test_calibration_is_stored_and_applied(tmp_path):
    table = synthetic_table(load_space("tiny"))
    assert table.calibration is None and table.calibrate(2.0) == 2.0
    table.save(tmp_path / "t")
    table.set_calibration(0.5, 2.0, {"n_archs": 3})
    table.save_meta()
    again = LatencyTable.load(tmp_path / "t")
    assert again.calibration == (0.5, 2.0)
    assert again.calibrate(1.0) == 2.5
    assert float(again.calibrate(torch.tensor(1.0))) == 2.5


def test_summary_per_kind():
    space = load_space("tiny")
    summary = synthetic_table(space).summary()
    assert summary["block"]["count"] == count_by_kind(space_entries(space))["block"]
    assert summary["block"]["min"] <= summary["block"]["median"] <= summary["block"]["max"]


# -- timing and profiling -------------------------------------------------------------
def test_round_robin_shuffles_passes_and_resumes():
    keys = [f"k{i}" for i in range(12)]
    calls, checkpoints = [], []
    out = round_robin(keys, lambda k: calls.append(k) or float(len(calls)), passes=3, seed=1,
                      checkpoint=lambda s: checkpoints.append(sum(map(len, s.values()))), progress=False)
    assert all(len(v) == 3 for v in out.values())
    passes = [calls[i * 12:(i + 1) * 12] for i in range(3)]
    assert all(sorted(p) == sorted(keys) for p in passes)
    assert passes[0] != passes[1] and passes[0] != sorted(keys)
    assert checkpoints[-1] == 36
    calls.clear()
    resumed = round_robin(keys, lambda k: calls.append(k) or 0.0, passes=3,
                          samples={k: [1.0] * (3 if i < 10 else 1) for i, k in enumerate(keys)}, progress=False)
    assert sorted(calls) == ["k10", "k10", "k11", "k11"] and all(len(v) == 3 for v in resumed.values())


def test_round_robin_keeps_partial_results_on_interrupt():
    saved = {}

    def measure(key):
        if key == "k3":
            raise KeyboardInterrupt
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        round_robin([f"k{i}" for i in range(6)], measure, passes=1, seed=0,
                    checkpoint=lambda s: saved.update({k: list(v) for k, v in s.items()}), progress=False)
    assert saved["k3"] == [] and 0 <= sum(len(v) for v in saved.values()) <= 5


def test_cpu_measurement_is_positive_and_restores_threads():
    threads = torch.get_num_threads()
    ms = measure_module(torch.nn.Conv2d(4, 8, 3, padding=1), (4, 16, 16), TimingConfig(**FAST_TIMING))
    assert math.isfinite(ms) and ms > 0
    assert torch.get_num_threads() == threads


def test_profile_resumes_from_partial_and_refuses_foreign_partials(tmp_path):
    from dnas.latency.profile import legacy_partial_path, profile_meta, samples_table

    space = load_space("tiny")
    cfg = TimingConfig(**FAST_TIMING)
    ref = LatencyTable.load(measured_tiny_table())
    out = tmp_path / "t"
    meta = profile_meta(space, cfg, 1, 0, [space.num_classes], space_entries(space))
    for write in ("table", "legacy json"):
        if write == "table":  # an incomplete table holding every entry but the first
            samples = {k: [v] for k, v in sorted(ref.entries.items())[1:]}
            samples_table(samples, meta, 1).save(partial_path(out))
        else:  # the resume file of older versions
            legacy_partial_path(out).write_text(json.dumps({"meta": meta, "samples": {
                k: [v] for k, v in ref.entries.items()}}))
        table = profile_space(space, out, cfg, passes=1, progress=False, log=lambda m: None)
        same = {k for k in ref.entries if table.entries[k] == ref.entries[k]}
        assert len(same) >= len(ref.entries) - 1 and table.is_complete  # only the missing one was measured
        assert not partial_path(out).exists() and not legacy_partial_path(out).exists()
        table_paths(out)[0].unlink()
    samples_table({}, {**meta, "batch": 64}, 1).save(partial_path(out))
    with pytest.raises(LatencyTableError, match="batch=64"):
        profile_space(space, out, cfg, passes=1, progress=False, log=lambda m: None)


def test_unusable_device_or_dtype_is_a_user_error(tmp_path):
    with pytest.raises(DnasError, match="dtype"):
        profile_space(load_space("tiny"), tmp_path / "t", TimingConfig(dtype="int8"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(DnasError, match="CUDA is not available"):
            profile_space(load_space("tiny"), tmp_path / "t", TimingConfig(device="cuda"), progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_measurement():
    cfg = TimingConfig(device="cuda", dtype="bf16", batch=4, windows=3, window_ms=1.0)
    entry = next(e for e in space_entries(load_space("tiny")) if e.kind == "block")
    ms = [measure_module(build_entry_module(entry), entry.input_shape, cfg) for _ in range(2)]
    assert all(0 < m < 5 for m in ms)
    assert cfg.method == "cuda-graph"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_and_validate_tiny(tmp_path):
    from dnas.latency.validate import validate_table

    space = load_space("tiny")
    cfg = TimingConfig(device="cuda", dtype="bf16", batch=4, windows=3, window_ms=0.5)
    table = profile_space(space, tmp_path / "t", cfg, passes=1, progress=False, log=lambda m: None)
    assert table.meta["method"] == "cuda-graph" and table.meta["driver"]
    report = validate_table(space, table, archs=6, passes=1, progress=False)
    assert all(a["measured_ms"] > 0 for a in report["archs"])
    assert 0.3 < report["raw"]["ratio_sum_to_measured"] < 3.0
