"""Tests of named choice axes with a third axis: the ``kernel`` axis of
``supernets/tiny_kernel.yaml`` (depthwise kernel 3 or 5 in some rows; docs/method.md
sections 1, 2 and 5; docs/architecture.md "Choice axes").

The schema, the index choices and the derived archs carry the axis; a one-hot choice of
the supernet equals the derived plain net, whose 3x3 kernels are the centres of the
supernet's 5x5 weights; the latency of a one-hot choice equals the table sum of its
arch in a table profiled here, and the expected latency has a gradient in every axis;
top-k and the history cover the axis.
"""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import yaml

from dnas.errors import SpaceError
from dnas.latency.cost import LatencyModel
from dnas.latency.keys import count_by_kind, derived_entries, latency_key, parse_key, space_entries
from dnas.latency.table import LatencyTable
from dnas.models import Supernet, derive_plain
from dnas.search.derive_run import top_k_indices
from dnas.search.history import arch_probability_row, plot_arch_heatmaps
from dnas.space import SearchSpace, load_space, resolve_space_path
from test_supernet import assert_one_hot_equivalence, images, randomize

KERNEL_SPACE = "supernets/tiny_kernel.yaml"


def kspace() -> SearchSpace:
    return load_space(KERNEL_SPACE)


def kernel_net(seed: int = 0) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet(kspace())
    randomize(net, seed + 100)
    return net.eval()


# -- the space ------------------------------------------------------------------------------

def test_kernel_axis_of_the_space():
    sp = kspace()
    assert list(sp.axes) == ["width", "expansion", "kernel"]
    kernel = sp.axes["kernel"]
    assert kernel.unit == "block" and kernel.kwarg == "kernel_size"
    # row 1 default, rows 2-3 searched (row 3 block 2 fixed at 3), row 4 fixed at 5, row 5 searched
    assert kernel.options == ((3,), (3, 5), (3, 5), (3,), (5,), (3, 5))
    assert [b.kwarg_options("kernel_size") for b in sp.blocks] == list(kernel.options)
    plain = load_space("tiny")
    assert list(plain.axes) == ["width", "expansion"]  # no searched kwarg: no kernel axis
    assert sp.log10_num_archs == pytest.approx(plain.log10_num_archs + 3 * math.log10(2))
    assert sp.to_json()["stages"][1]["kernel_size"] == [3, 5] and "kernel_size" not in plain.to_json()["stages"][1]
    assert "kernel_size {3, 5}" in sp.describe() and "kernel_size 5" in sp.describe()


def test_indices_round_trip_through_derived_archs():
    sp = kspace()
    assert sp.sample_indices("max")["kernel"] == [0, 1, 1, 0, 0, 1]
    assert sp.sample_indices("min")["kernel"] == [0] * 6
    for seed in range(6):
        idx = sp.sample_indices("random", seed=seed)
        arch = sp.arch_from_indices(idx)
        blocks = [b for st in arch["stages"] for b in st["blocks"]]
        assert "kernel_size" not in blocks[0]  # the space leaves row 1 at the default: so does the arch
        assert [b.get("kernel_size") for b in blocks[1:]] == [
            sp.blocks[i].kwarg_options("kernel_size")[idx["kernel"][i]] for i in range(1, 6)]
        derived = SearchSpace.from_dict(arch)
        assert derived.is_derived and "kernel" not in derived.axes
        assert sp.indices_from_arch(derived) == idx


def test_arch_with_a_kernel_outside_the_space_does_not_fit():
    sp = kspace()
    arch = sp.arch_from_indices(sp.sample_indices("min"))
    arch["stages"][3]["blocks"][0]["kernel_size"] = 3  # row 4 is fixed at 5
    with pytest.raises(SpaceError, match="stage 3 block 0.*'kernel_size'.*expected one of \\[5\\]"):
        sp.indices_from_arch(SearchSpace.from_dict(arch, "a.yaml"))


def _raw() -> dict:
    return yaml.safe_load(resolve_space_path(KERNEL_SPACE).read_text())


@pytest.mark.parametrize("value, fragment", [(4, "odd integer"), ([3, "5"], "odd integer"), ([3, 3], "duplicate"),
                                             ([], "empty"), (True, "odd integer"), (11, "odd integer")])
def test_bad_kernel_sizes_are_refused(value, fragment):
    data = _raw()
    data["stages"][1]["kernel_size"] = value
    with pytest.raises(SpaceError, match=f"x.yaml: stage 1: key 'kernel_size': .*{fragment}"):
        SearchSpace.from_dict(data, "x.yaml")
    data = _raw()
    data["stages"][2]["blocks"][1]["kernel_size"] = value
    with pytest.raises(SpaceError, match=f"stage 2 block 1: key 'kernel_size'"):
        SearchSpace.from_dict(data, "x.yaml")


def test_default_kernel_written_out_is_the_same_structure():
    data = yaml.safe_load(resolve_space_path("tiny").read_text())
    explicit = copy.deepcopy(data)
    for st in explicit["stages"]:
        st["kernel_size"] = 3
    a, b = SearchSpace.from_dict(data), SearchSpace.from_dict(explicit)
    assert a.structure_hash() == b.structure_hash() and list(b.axes) == ["width", "expansion"]
    assert {e.key for e in space_entries(a)} == {e.key for e in space_entries(b)}
    explicit["stages"][2]["kernel_size"] = 5
    assert SearchSpace.from_dict(explicit).structure_hash() != a.structure_hash()


# -- supernet and derived nets ----------------------------------------------------------------

@pytest.mark.parametrize("mode, seed", [("max", 0), ("min", 1), ("random", 2), ("random", 3), ("random", 4)])
def test_one_hot_with_kernel_choices_equals_derived(mode, seed):
    net = kernel_net(seed)
    idx = kspace().sample_indices(mode, seed=seed)
    plain = assert_one_hot_equivalence(net, idx, images(seed))
    for spec, block, k in zip(kspace().blocks, plain.blocks, idx["kernel"]):
        assert block.dw.kernel_size == (spec.kwarg_options("kernel_size")[k],) * 2


def test_derived_3x3_kernel_is_the_centre_of_the_5x5_weight():
    net = kernel_net(5)
    idx = kspace().sample_indices("max")
    idx["kernel"] = [0, 0, 1, 0, 0, 0]  # 3 in rows 2 and 5, 5 in row 3 block 1
    _, plain = derive_plain(net, idx)
    assert net.blocks[1].dw.weight.shape[-2:] == (5, 5) and net.blocks[3].dw.weight.shape[-2:] == (3, 3)
    for i, size in ((1, 3), (2, 5), (5, 3)):
        sup, der = net.blocks[i].dw.weight, plain.blocks[i].dw.weight
        lo = (5 - size) // 2
        mid = der.shape[0]
        assert torch.equal(der, sup[:mid, :, lo:lo + size, lo:lo + size]), i
    assert_one_hot_equivalence(net, idx, images(6))


def test_kernel_choice_changes_the_function_and_gets_gradients():
    net = kernel_net(7)
    idx = kspace().sample_indices("max")
    small = {**idx, "kernel": [0] * 6}
    with torch.no_grad():
        assert not torch.allclose(net(images(8), net.onehot_choice(idx)), net(images(8), net.onehot_choice(small)),
                                  atol=1e-4)
    net.train()
    choice = net.sample_choice(1.0, generator=torch.Generator().manual_seed(0))
    assert [len(w) for w in choice["kernel"]] == [1, 2, 2, 1, 1, 2]
    net(images(8), choice).logsumexp(1).sum().backward()
    for b, p in enumerate(net.arch_kernel_logits):  # every logit takes part (unused parameters would stall DDP)
        assert p.grad is not None and torch.isfinite(p.grad).all()
        assert (p.grad.abs().sum() > 0) == (p.numel() > 1), b
    assert {id(p) for p in net.arch_kernel_logits} <= {id(p) for p in net.arch_parameters()}
    assert "arch_kernel_logits.1" in net.state_dict()


def test_onehot_choice_needs_every_axis():
    net = Supernet(kspace())
    idx = kspace().sample_indices("min")
    del idx["kernel"]
    with pytest.raises(KeyError, match="kernel"):
        net.onehot_choice(idx)


# -- latency ----------------------------------------------------------------------------------

def test_kernel_keys_and_entry_counts():
    key = latency_key("block", op="ir", in_chs=16, mid_chs=32, out_chs=16, stride=1, kernel_size=5, res=(16, 8))
    assert key == "block/op=ir/in_chs=16/mid_chs=32/out_chs=16/stride=1/kernel_size=5/res=16x8"
    assert parse_key(key)[1]["kernel_size"] == 5
    default = latency_key("block", op="ir", in_chs=16, mid_chs=32, out_chs=16, stride=1, kernel_size=3, res=(16, 8))
    assert "kernel_size" not in default  # the default stays out: old tables keep their keys
    with pytest.raises(Exception, match="fields"):
        parse_key(default.replace("/res=", "/kernel_size=3/res="))
    counts = count_by_kind(space_entries(kspace()))
    # blocks, by the keying rule: 0: 1 x 1 x 1 x 2; 1: 2 x 2 x 2 x 3; 2: 3 x 2 x 2; 3: 3 x 2 x 1 (k=3, shares
    # block 2's k=3 keys); 4: 3 x 2 x 1 x 3 (k=5); 5: 3 x 2 x 2 -> 2 + 24 + 12 + 18 + 12 = 68
    assert counts["block"] == 68
    assert counts == {**count_by_kind(space_entries(load_space("tiny"))), "block": 68}


def test_entry_modules_and_macs_follow_the_kernel():
    """The profiler builds a kernel-5 entry with a 5x5 depthwise conv, and the MACs proxy
    counts what fvcore counts for that module."""
    from dnas.model_stats import count_macs
    from dnas.latency.profile import build_entry_module
    from dnas.latency.proxy import entry_macs

    blocks = [e for e in space_entries(kspace()) if e.kind == "block" and e.get("stride") == 1]
    five = next(e for e in blocks if dict(e.fields).get("kernel_size") == 5)
    module = build_entry_module(five)
    assert module.dw.kernel_size == (5, 5)
    assert entry_macs(five) == count_macs(module, list(five.input_shape))
    same_but_3 = {k: v for k, v in five.fields if k != "kernel_size"}
    three = next(e for e in blocks if dict(e.fields) == same_but_3)
    assert build_entry_module(three).dw.kernel_size == (3, 3) and entry_macs(three) < entry_macs(five)


@pytest.fixture(scope="module")
def kernel_table(tmp_path_factory) -> LatencyTable:
    """A CPU table of the kernel space, measured with a very short protocol."""
    from dnas.latency.profile import profile_space
    from dnas.latency.timing import TimingConfig
    from latency_fixtures import FAST_TIMING

    out = tmp_path_factory.mktemp("lat") / "tiny_kernel_cpu"
    return profile_space(kspace(), out, TimingConfig(**FAST_TIMING), passes=1, progress=False, log=lambda m: None)


def test_one_hot_latency_is_the_table_sum_of_the_arch(kernel_table):
    sp = kspace()
    net = Supernet(sp)
    model = LatencyModel.for_supernet(kernel_table, net)
    for seed in range(6):
        idx = sp.sample_indices(("max", "min")[seed] if seed < 2 else "random", seed=seed)
        arch = SearchSpace.from_dict(sp.arch_from_indices(idx))
        direct = sum(kernel_table.lookup(e.key) for e in derived_entries(arch, num_classes=net.num_classes))
        assert float(model.expected_ms(net.onehot_choice(idx))) == pytest.approx(direct, rel=1e-6)
        assert model.arch_ms(idx) == pytest.approx(direct, rel=1e-6)
    kernels = {dict(e.fields).get("kernel_size") for e in derived_entries(SearchSpace.from_dict(sp.arch_from_indices(
        sp.sample_indices("max")))) if e.kind == "block"}
    assert kernels == {None, 5}  # the default 3 is keyed without the field


def test_expected_latency_is_exact_and_differentiable_in_every_axis(kernel_table):
    sp = kspace()
    net = Supernet(sp)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    model = LatencyModel.for_supernet(kernel_table, net)
    lat = model.expected_ms(net.probs_choice())
    lat.backward()
    for axis, logits in net.logits().items():
        multi = [p for p in logits if p.numel() > 1]
        assert multi and all(p.grad is not None and p.grad.abs().sum() > 0 for p in multi), axis
    # exact expectation: soft weights on every kernel unit and on width group 1, one-hot elsewhere;
    # the expectation is then the probability-weighted table sum over those 2^3 x 3 architectures
    base = sp.sample_indices("random", seed=3)
    choice = net.onehot_choice(base)
    soft = [("kernel", u) for u, o in enumerate(sp.axes["kernel"].options) if len(o) > 1] + [("width", 1)]
    for axis, u in soft:
        choice[axis][u] = net.probs_choice()[axis][u].detach()
    total = 0.0
    for combo in itertools.product(*[range(len(choice[axis][u])) for axis, u in soft]):
        idx = copy.deepcopy(base)
        weight = 1.0
        for (axis, u), j in zip(soft, combo):
            idx[axis][u] = j
            weight *= float(choice[axis][u][j])
        total += weight * model.arch_ms(idx)
    assert float(model.expected_ms(choice)) == pytest.approx(total, rel=1e-6)


# -- top-k and history ------------------------------------------------------------------------

def test_top_k_is_exact_over_every_axis():
    sp = kspace()
    net = Supernet(sp)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for logits in net.logits().values():
            for p in logits:
                p.copy_(torch.randn(p.shape, generator=gen) * 2)
    ranked = top_k_indices(net, 5)
    probs = net.probs_choice().map(torch.Tensor.detach)

    def logp(idx):
        return sum(math.log(float(probs[a][u][j])) for a, js in idx.items() for u, j in enumerate(js))

    every = [list(c) for c in itertools.product(*[range(len(p)) for p in probs.tensors()])]
    sizes = [len(v) for v in probs.values()]
    best = sorted((logp(_split(c, sizes, list(probs))) for c in every), reverse=True)[:5]
    assert [lp for lp, _ in ranked] == pytest.approx(best)
    assert ranked[0][1] == net.argmax_indices() and set(ranked[0][1]) == {"width", "expansion", "kernel"}
    assert all(lp == pytest.approx(logp(idx)) for lp, idx in ranked)


def _split(flat, sizes, names):
    out, i = {}, 0
    for name, n in zip(names, sizes):
        out[name] = flat[i:i + n]
        i += n
    return out


def test_history_row_and_heatmap_cover_the_kernel_axis(tmp_path):
    net = Supernet(kspace())
    with torch.no_grad():
        net.arch_kernel_logits[1].copy_(torch.tensor([0.0, 1.0]))
    row = arch_probability_row(net)
    assert row["kernel_s2b0_5"] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)
    assert row["kernel_s4b0_5"] == 1.0 and "kernel_s3b1_3" in row
    assert sum(v for k, v in row.items() if k.startswith("kernel_s2b0_")) == pytest.approx(1.0)
    path = tmp_path / "arch_heatmap.png"
    plot_arch_heatmaps([{"epoch": 0, **row}, {"epoch": 1, **row}], net, path)
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"


DDP_SCRIPT = """
import sys, tempfile, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from dnas.models import Supernet
from dnas.space import load_space
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
for probe in (False, True):  # with an unused probe parameter DDP must refuse: the check can fail
    net = Supernet(load_space(sys.argv[1]), num_classes=4).train()
    if probe:
        net.register_parameter("unused_probe", torch.nn.Parameter(torch.zeros(1)))
    model = DDP(net)
    try:
        for step in range(2):
            choice = net.sample_choice(1.0, generator=torch.Generator().manual_seed(step))
            model(torch.randn(2, 3, 64, 32), choice).sum().backward()
        print("probe" if probe else "net", "ok")
    except RuntimeError as exc:
        print("probe" if probe else "net", "unused" if "did not receive grad" in str(exc) else exc)
"""


@pytest.mark.slow  # a subprocess with torch.distributed: ~10 s and more on a loaded machine
def test_every_parameter_of_the_kernel_supernet_gets_a_gradient_under_ddp():
    """DDP (without find_unused_parameters, as dnas.runtime wraps the supernet) refuses a
    parameter without a gradient: every axis' logits, single options included, take part."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", DDP_SCRIPT, KERNEL_SPACE], capture_output=True, text=True,
                         timeout=300).stdout.split("\n")
    assert out[:2] == ["net ok", "probe unused"], out
