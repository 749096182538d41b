"""Tests of the supernet, its derived plain nets and weight slicing (dnas.models;
docs/method.md sections 1-3, docs/architecture.md principles 2 and 5).

The central property: with a one-hot choice the supernet computes the same function as
the plain net derived from it (weights sliced, BN statistics randomised so that no
masked channel hides behind a zero), for the tiny space and for sampled archs of the
three paper spaces at a reduced 64x32 input. Also: the parameter partition, the
Gumbel-softmax choices and gradient flow to every architecture parameter.
"""
from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch
from torch import nn

from dnas.errors import CheckpointError
from dnas.models import ArchChoice, PlainNet, Supernet, derive_arch, derive_plain, slice_state_dict
from dnas.ops import DCSAttention
from dnas.space import SearchSpace, load_space

INPUT = (2, 3, 64, 32)


@lru_cache(maxsize=None)
def space(name: str) -> SearchSpace:
    return load_space(name)


def randomize(module: nn.Module, seed: int) -> None:
    """Random BN running stats and affine parameters (DCS BNs included, so every DCS module
    contributes), conv weights rescaled from PyTorch's default init (std 1/sqrt(3 fan_in))
    to He scale and the classifier to std 1/sqrt(in): the signal then neither dies nor
    hides behind the BN shifts in a deep eval-mode net."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(math.sqrt(6.0))
        for m in module.modules():
            if hasattr(m, "classifier"):
                m.classifier.weight.mul_(1.0 / (0.01 * math.sqrt(m.classifier.in_features)))


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to 1e-5 relative to the tensor's magnitude (float32 rounding accumulates over
    the 86 blocks of XLarge; in float64 the difference is ~1e-13)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def make_net(name: str, seed: int = 0, **kw) -> Supernet:
    torch.manual_seed(seed)
    net = Supernet(space(name), **kw)
    randomize(net, seed + 100)
    return net.eval()


def images(seed: int = 0) -> torch.Tensor:
    return torch.randn(*INPUT, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def calibrate_bn(net: Supernet, idx: dict, x: torch.Tensor) -> None:
    """BN running statistics of the data (as a trained net has), keeping the random affine.

    Random running statistics do not normalise: the non-local attention is cubic in its
    input, so over XLarge's four modules the activations would overflow float32.
    """
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    torch.manual_seed(0)
    net(x, net.onehot_choice(idx))
    net.eval()


def assert_one_hot_equivalence(net: Supernet, idx: dict, x: torch.Tensor) -> PlainNet:
    """Supernet with the one-hot ``idx`` == derived plain net, logits and features."""
    calibrate_bn(net, idx, x)
    arch, plain = derive_plain(net, idx)
    assert not plain.training
    with torch.no_grad():
        fs = net(x, net.onehot_choice(idx), return_features=True)
        fp = plain(x, return_features=True)
        logits_s = net(x, net.onehot_choice(idx))
        logits_p = plain(x)
    assert fp["logits"].shape == (x.shape[0], net.num_classes)
    assert_close_scaled(logits_s, logits_p)
    assert_close_scaled(fs["logits"], fp["logits"])
    for key in ("embedding", "global_feat"):
        assert_close_scaled(fs[key], fp[key])
    # ib_input: the fixed input representation of the IB bound, the same for both
    assert torch.equal(fs["ib_input"], fp["ib_input"])
    assert fp["ib_input"].shape == (x.shape[0], 3 * 8 * 4)
    assert torch.isfinite(fp["logits"]).all()
    assert (fp["logits"][0] - fp["logits"][1]).abs().max() > 1e-3  # the output depends on the input
    return plain


# -- parameter partition --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "fbnetv2", "supernets/tiny_kernel.yaml"])
@pytest.mark.parametrize("attention", ["dcs", "self", "none"])
def test_arch_and_weight_parameters_partition(name, attention):
    torch.manual_seed(0)
    net = Supernet(space(name), attention=attention)
    use_dcs = attention != "none"
    all_ids = {id(p) for p in net.parameters()}
    arch_ids = [id(p) for p in net.arch_parameters()]
    weight_ids = [id(p) for p in net.weight_parameters()]
    assert len(set(arch_ids)) == len(arch_ids) and len(set(weight_ids)) == len(weight_ids)
    assert set(arch_ids) | set(weight_ids) == all_ids
    assert not set(arch_ids) & set(weight_ids)
    sp = space(name)
    expected = [net.arch_width_logits[g] for g in range(len(sp.group_options))]
    expected += [net.arch_expansion_logits[b.index] for b in sp.blocks]
    if "kernel" in sp.axes:  # a third axis: one kernel logit vector per block
        expected += [net.arch_kernel_logits[b.index] for b in sp.blocks]
    assert list(net.logits()) == list(sp.axes)
    if use_dcs:
        for s in sp.dcs_stages:
            if attention == "dcs":
                expected += [net.dcs[str(s)].pi.weight, net.dcs[str(s)].pi.bias]
            else:
                assert net.dcs[str(s)].pi is None
        assert sorted(net.dcs) == sorted(str(s) for s in sp.dcs_stages)
    else:
        assert len(net.dcs) == 0
        assert not any(isinstance(m, DCSAttention) for m in net.modules())
    assert set(arch_ids) == {id(p) for p in expected}
    for g, opts in enumerate(sp.group_options):
        assert net.arch_width_logits[g].shape == (len(opts),)
    for b in sp.blocks:
        assert net.arch_expansion_logits[b.index].shape == (len(b.mid_options),)


def test_supernet_layer_sizes_are_the_largest_options():
    sp = space("fbnetv2")
    net = Supernet(sp)
    for spec, block in zip(sp.blocks, net.blocks):
        assert block.pw.weight.shape == (max(spec.mid_options), max(spec.in_options), 1, 1)
        assert block.pwl.weight.shape == (max(spec.out_options), max(spec.mid_options), 1, 1)
        assert block.dw.stride == (spec.stride, spec.stride)
    assert net.head.conv.conv.weight.shape == (1984, 216, 1, 1)
    assert net.stem.conv.weight.shape == (16, 3, 3, 3) and net.stem.conv.stride == (2, 2)


# -- one-hot equivalence ---------------------------------------------------------------------

@pytest.mark.parametrize("mode, seed", [("max", None), ("min", None), ("random", 0), ("random", 1),
                                        ("random", 2), ("random", 3)])
def test_tiny_one_hot_equals_derived(mode, seed):
    net = make_net("tiny", seed=seed or 0)
    idx = space("tiny").sample_indices(mode, seed=seed)
    assert_one_hot_equivalence(net, idx, images(1))


@pytest.mark.parametrize("width0, residual", [(1, True), (0, False)])
def test_tiny_row1_cross_group_residual(width0, residual):
    """Row 1 has channels {8, 16} after a 16-channel stem: a residual only when 16 is chosen."""
    net = make_net("tiny", seed=4)
    idx = {"width": [width0, 2, 1], "expansion": [0, 1, 0, 1, 1, 0]}
    plain = assert_one_hot_equivalence(net, idx, images(2))
    assert plain.blocks[0].has_residual is residual
    assert plain.blocks[0].out_chs == (16 if residual else 8)
    # the residual matters: the two choices give different functions on the first 8 channels
    other = {"width": [1 - width0, 2, 1], "expansion": idx["expansion"]}
    with torch.no_grad():
        a = net(images(2), net.onehot_choice(idx))
        b = net(images(2), net.onehot_choice(other))
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name, seed", [("fbnetv2", 0), ("fbnetv2", 1), ("large", 2), ("xlarge", 3)])
def test_paper_space_one_hot_equals_derived(name, seed):
    net = make_net(name, seed=seed)
    idx = space(name).sample_indices("random", seed=seed)
    assert_one_hot_equivalence(net, idx, images(seed))


def test_fbnetv2_row8_cross_group_residual():
    """Rows 7 (48..96) and 8 (72..128) overlap: equal widths give the first block of row 8 a residual."""
    sp = space("fbnetv2")
    net = make_net("fbnetv2", seed=5)
    idx = sp.sample_indices("random", seed=5)
    first_row8 = next(b.index for b in sp.blocks if b.stage == 7)
    for w7, w8, residual in ((80, 80, True), (96, 72, False)):
        idx["width"][3] = sp.group_options[3].index(w7)
        idx["width"][4] = sp.group_options[4].index(w8)
        plain = assert_one_hot_equivalence(net, idx, images(3))
        assert plain.blocks[first_row8].has_residual is residual


def test_bnneck_one_hot_equals_derived():
    net = make_net("tiny", seed=6, bnneck=True)
    assert net.head.neck is not None and not net.head.neck.bias.requires_grad
    idx = space("tiny").sample_indices("random", seed=6)
    plain = assert_one_hot_equivalence(net, idx, images(4))
    assert plain.head.neck is not None
    with torch.no_grad():
        f = net(images(4), net.onehot_choice(idx), return_features=True)
    assert not torch.allclose(f["embedding"], f["global_feat"])


def test_without_dcs_one_hot_equals_derived():
    net = make_net("tiny", seed=7, attention="none")
    idx = space("tiny").sample_indices("random", seed=7)
    plain = assert_one_hot_equivalence(net, idx, images(5))
    assert len(plain.dcs) == 0
    assert derive_arch(net, idx)["attention"] == "none"


@pytest.mark.parametrize("attention, form", [("self", "linear"), ("dcs", "softmax"), ("self", "softmax")])
def test_attention_variants_one_hot_equal_derived(attention, form):
    sp = space("tiny").with_attention(attention, form)
    torch.manual_seed(11)
    net = Supernet(sp)
    randomize(net, 111)
    net.eval()
    idx = sp.sample_indices("random", seed=11)
    plain = assert_one_hot_equivalence(net, idx, images(7))
    assert plain.attention == attention and all(m.form == form for m in plain.dcs.values())
    assert derive_arch(net, idx)["attention_form"] == form


def test_dcs_modules_contribute():
    """Guard for the equivalence tests: with randomised BN the DCS modules change the output."""
    idx = space("tiny").sample_indices("random", seed=8)
    with_dcs, without = make_net("tiny", seed=8), make_net("tiny", seed=8, attention="none")
    with torch.no_grad():
        a = with_dcs(images(6), with_dcs.onehot_choice(idx))
        b = without(images(6), without.onehot_choice(idx))
    assert not torch.allclose(a, b, atol=1e-4)


def test_default_choice_is_argmax_one_hot():
    net = make_net("tiny", seed=9)
    idx = space("tiny").sample_indices("random", seed=9)
    with torch.no_grad():
        for g, i in enumerate(idx["width"]):
            net.arch_width_logits[g][i] = 3.0
        for b, i in enumerate(idx["expansion"]):
            net.arch_expansion_logits[b][i] = 3.0
        torch.testing.assert_close(net(images(7)), net(images(7), net.onehot_choice(idx)))
    assert derive_arch(net) == derive_arch(net, idx)


def test_derive_plain_keeps_mode_and_slices_weights():
    net = make_net("tiny", seed=10).train()
    idx = space("tiny").sample_indices("min")
    arch, plain = derive_plain(net, idx, name="tiny-min")
    assert plain.training and arch["name"] == "tiny-min"
    assert SearchSpace.from_dict(arch).is_derived
    sd = net.state_dict()
    for key, t in plain.state_dict().items():
        assert torch.equal(t, sd[key][tuple(slice(0, n) for n in t.shape)]), key


def test_derived_arch_records_bnneck_override():
    net = make_net("tiny", seed=11, bnneck=True)
    arch, plain = derive_plain(net, space("tiny").sample_indices("max"))
    assert plain.head.neck is not None
    assert arch["bnneck"] is True
    rebuilt = PlainNet(SearchSpace.from_dict(arch))
    rebuilt.load_state_dict(plain.state_dict())


# -- choices ------------------------------------------------------------------------------------

def _all(choice: ArchChoice) -> list[torch.Tensor]:
    return list(choice.width) + list(choice.expansion)


def test_sample_choice_weights_sum_to_one():
    net = Supernet(space("fbnetv2"))
    choice = net.sample_choice(1.0)
    assert len(choice.width) == len(space("fbnetv2").group_options)
    assert len(choice.expansion) == len(space("fbnetv2").blocks)
    for w, logit in zip(_all(choice), list(net.arch_width_logits) + list(net.arch_expansion_logits)):
        assert w.shape == logit.shape
        assert (w >= 0).all()
        assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    multi = [w for w in _all(choice) if w.numel() > 1]
    assert any(w.max() < 0.99 for w in multi)  # soft at tau = 1


def test_sample_choice_generator_is_reproducible():
    net = Supernet(space("tiny"))
    a = net.sample_choice(1.0, generator=torch.Generator().manual_seed(3))
    b = net.sample_choice(1.0, generator=torch.Generator().manual_seed(3))
    c = net.sample_choice(1.0, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(_all(a), _all(b)))
    assert not all(torch.equal(x, y) for x, y in zip(_all(a), _all(c)))


def test_sample_choice_follows_logits_and_temperature():
    net = Supernet(space("tiny"))
    with torch.no_grad():
        for p in net.arch_width_logits:
            p[-1] = 50.0
        for p in net.arch_expansion_logits:
            p[0] = 50.0
    choice = net.sample_choice(1.0, generator=torch.Generator().manual_seed(0))
    assert all(int(w.argmax()) == len(w) - 1 for w in choice.width)
    assert all(int(w.argmax()) == 0 for w in choice.expansion)
    with torch.no_grad():
        for p in list(net.arch_width_logits) + list(net.arch_expansion_logits):
            p.zero_()
    cold = net.sample_choice(1e-3, generator=torch.Generator().manual_seed(1))
    assert all(w.max().item() == pytest.approx(1.0, abs=1e-4) for w in _all(cold))


def test_sample_choice_hard_is_one_hot_with_gradients():
    net = Supernet(space("tiny"))
    with torch.no_grad():
        for p in list(net.arch_width_logits) + list(net.arch_expansion_logits):
            p.normal_()
    choice = net.sample_choice(2.0, hard=True, generator=torch.Generator().manual_seed(2))
    loss = 0
    gen = torch.Generator().manual_seed(0)
    for w in _all(choice):
        wd = w.detach()
        assert torch.allclose(wd, wd.round(), atol=1e-6, rtol=0)
        assert wd.round().sum() == 1 and set(wd.round().tolist()) <= {0.0, 1.0}
        loss = loss + (w * torch.randn(w.shape, generator=gen)).sum()
    loss.backward()
    for p in list(net.arch_width_logits) + list(net.arch_expansion_logits):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        if p.numel() > 1:
            assert p.grad.abs().sum() > 0


def test_sample_choice_hard_exactly_one_hot():
    net = Supernet(space("fbnetv2"))
    for seed in range(3):
        choice = net.sample_choice(1.0, hard=True, generator=torch.Generator().manual_seed(seed))
        for w in _all(choice):
            assert set(w.detach().tolist()) <= {0.0, 1.0}


def test_probs_choice_is_softmax_and_argmax_follows_logits():
    net = Supernet(space("tiny"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(net.arch_width_logits) + list(net.arch_expansion_logits):
            p.copy_(torch.randn(p.shape, generator=gen))
    probs = net.probs_choice()
    for w, p in zip(probs.width, net.arch_width_logits):
        torch.testing.assert_close(w, torch.exp(p) / torch.exp(p).sum())
    for w, p in zip(probs.expansion, net.arch_expansion_logits):
        torch.testing.assert_close(w, torch.exp(p) / torch.exp(p).sum())
    idx = net.argmax_indices()
    assert idx["width"] == [int(torch.argmax(p)) for p in net.arch_width_logits]
    target = space("tiny").sample_indices("random", seed=5)
    with torch.no_grad():
        for g, i in enumerate(target["width"]):
            net.arch_width_logits[g][i] = 10.0
        for b, i in enumerate(target["expansion"]):
            net.arch_expansion_logits[b][i] = 10.0
    assert net.argmax_indices() == target


def test_onehot_choice():
    net = Supernet(space("tiny"))
    idx = {"width": [0, 2, 1], "expansion": [0, 1, 0, 1, 0, 1]}
    choice = net.onehot_choice(idx)
    for w, i in zip(_all(choice), idx["width"] + idx["expansion"]):
        expected = torch.zeros(w.shape)
        expected[i] = 1.0
        assert torch.equal(w, expected)


# -- training-mode forward and gradient flow ------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny", "fbnetv2"])
def test_gradients_reach_every_arch_parameter(name):
    torch.manual_seed(0)
    net = Supernet(space(name)).train()
    with torch.no_grad():
        for m in net.dcs.values():
            m.bn.weight.fill_(1.0)  # a fresh DCS branch is the identity: open it
    choice = net.sample_choice(1.0, generator=torch.Generator().manual_seed(0))
    feats = net(images(8), choice, return_features=True)
    loss = nn.functional.cross_entropy(feats["logits"], torch.tensor([1, 2]))
    loss = loss + (feats["global_feat"] * torch.randn(feats["global_feat"].shape)).sum() * 1e-3
    loss.backward()
    for p in net.arch_width_logits:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for p in net.arch_expansion_logits:
        assert p.grad is not None and torch.isfinite(p.grad).all()
        if p.numel() > 1:
            assert p.grad.abs().sum() > 0
    assert len(net.dcs) > 0
    for key, m in net.dcs.items():
        for p in (m.pi.weight, m.pi.bias):
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("bnneck", [False, True])
def test_train_forward_soft_choice(bnneck):
    torch.manual_seed(1)
    net = Supernet(space("tiny"), bnneck=bnneck).train()
    choice = net.sample_choice(5.0)
    feats = net(images(9), choice, return_features=True)
    assert feats["logits"].shape == (2, 10)
    assert feats["global_feat"].shape == feats["embedding"].shape == (2, 128)
    assert feats["ib_input"].shape == (2, 96)  # the fixed input representation (3 x 8 x 4 grid)
    for v in feats.values():
        assert torch.isfinite(v).all()
    nn.functional.cross_entropy(feats["logits"], torch.tensor([0, 3])).backward()
    for n, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_num_classes_override():
    net = Supernet(space("tiny"), num_classes=7).eval()
    with torch.no_grad():
        assert net(images(10)).shape == (2, 7)
    arch, plain = derive_plain(net, space("tiny").sample_indices("max"))
    assert arch["num_classes"] == 7 and plain.num_classes == 7


def test_plain_net_rejects_space():
    from dnas.errors import SpaceError

    with pytest.raises(SpaceError, match="derived"):
        PlainNet(space("tiny"))


# -- slice_state_dict ----------------------------------------------------------------------------

def test_slice_state_dict_leading_slices():
    src = {"a": torch.arange(24.0).view(4, 6), "b": torch.arange(5.0)}
    tgt = {"a": torch.zeros(2, 3), "b": torch.zeros(5)}
    out = slice_state_dict(src, tgt)
    assert torch.equal(out["a"], torch.tensor([[0.0, 1, 2], [6, 7, 8]]))
    assert torch.equal(out["b"], src["b"])
    out["b"][0] = 100.0
    assert src["b"][0] == 0.0  # a copy, not a view


def test_slice_state_dict_errors():
    with pytest.raises(CheckpointError, match="'w'"):
        slice_state_dict({"v": torch.zeros(3)}, {"w": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="'w'"):
        slice_state_dict({"w": torch.zeros(2, 4)}, {"w": torch.zeros(3, 4)})
    with pytest.raises(CheckpointError, match="'w'"):
        slice_state_dict({"w": torch.zeros(4)}, {"w": torch.zeros(4, 1)})


@pytest.mark.parametrize("attention", ["dcs", "self"])
def test_affinity_orders_agree_in_supernet_and_derived_net(attention):
    """Both associations of the linear affinity give the same supernet and derived net
    (float64); the tiny space at 64x32 has DCS positions of either order (C vs N)."""
    net = make_net("tiny", seed=12, attention=attention).double()
    idx = space("tiny").sample_indices("random", seed=12)
    x = images(8).double()
    _, plain = derive_plain(net, idx)
    plain = plain.double().eval()
    orders = {(m.chs, m.order) for m in net.dcs.values()}
    assert orders == {(m.chs, None) for m in net.dcs.values()}  # the automatic choice by default
    outs = {}
    with torch.no_grad():
        for order in ("channels", "tokens", None):
            for m in list(net.dcs.values()) + list(plain.dcs.values()):
                m.order = order
            outs[order] = (net(x, net.onehot_choice(idx)), plain(x))
    for order in ("tokens", None):
        for a, b in zip(outs["channels"], outs[order]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(outs[None][0], outs[None][1], rtol=1e-10, atol=1e-10)  # one-hot == derived
