"""Tests of the op registry, the plain ops, DCS-Attention and the super inverted
residual (dnas.ops; docs/method.md sections 2 and 3).

Every registered op: forward shape, a gradient for every parameter, no NaN.
DCS-Attention is compared with a direct re-implementation of its formula; the super
inverted residual with a one-hot choice is compared with its plain twin holding the
sliced weights.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnas.models.derive import slice_state_dict
from dnas.ops import (PLAIN_OPS, SEARCHABLE_OPS, SUPER_OPS, ConvBNReLU, DCSAttention, InvertedResidual,
                      OpRegistry, SuperInvertedResidual)
from dnas.ops.dcs import gumbel_like
from dnas.ops.super_blocks import KWARG_MASKS, kernel_masks, match_channels, option_masks
from dnas.space.op_specs import OP_SPECS


def randomize_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Random running stats and affine parameters for every BatchNorm in ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def check_grads(module: nn.Module) -> None:
    """Every trainable parameter got a finite, non-zero gradient."""
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def weighted_loss(out: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A loss whose gradient reaches BN-normalised branches (``out.sum()`` would not in train mode)."""
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out * w).sum()


# -- registry ------------------------------------------------------------------------

def test_registry_refuses_duplicates():
    reg = OpRegistry("test")

    @reg.register("a")
    class A:  # noqa: D401
        def __init__(self, in_chs, out_chs, stride, **kw):
            self.args = (in_chs, out_chs, stride, kw)

    with pytest.raises(ValueError, match="'a'"):
        reg.register("a")(type("B", (), {}))
    assert reg.get("a") is A
    assert reg.build("a", 1, 2, 3, k=4).args == (1, 2, 3, {"k": 4})
    assert "a" in reg and list(reg) == ["a"]


def test_global_registries_refuse_duplicates():
    with pytest.raises(ValueError):
        PLAIN_OPS.register("ir")(type("Dup", (), {}))
    with pytest.raises(ValueError):
        SUPER_OPS.register("ir")(type("Dup", (), {}))
    assert PLAIN_OPS.get("ir") is InvertedResidual
    assert SUPER_OPS.get("ir") is SuperInvertedResidual


def test_unknown_op_lists_known():
    with pytest.raises(KeyError) as info:
        PLAIN_OPS.get("conv9")
    msg = str(info.value)
    assert "conv9" in msg
    for name in PLAIN_OPS:
        assert name in msg
    with pytest.raises(KeyError, match="ir"):
        SUPER_OPS.build("nope", 4, 4, 1)


def test_registered_names():
    assert {"ir", "conv_bn_relu", "dcs"} <= set(PLAIN_OPS)
    assert set(SEARCHABLE_OPS) == set(PLAIN_OPS) & set(SUPER_OPS)
    assert "ir" in SEARCHABLE_OPS and "dcs" not in SEARCHABLE_OPS


def test_op_specs_and_registries_agree():
    """The torch-free op specs the schema validates against list exactly the searchable ops,
    every declared keyword argument is one the plain and the super op take, and the super op
    has masks for it."""
    import inspect

    assert set(OP_SPECS) == set(SEARCHABLE_OPS)
    for name, spec in OP_SPECS.items():
        for cls in (PLAIN_OPS.get(name), SUPER_OPS.get(name)):
            params = inspect.signature(cls.__init__).parameters
            for kw in spec.kwargs:
                assert kw.name in params and params[kw.name].default == kw.default, (name, kw.name)
        assert all(kw.name in KWARG_MASKS for kw in spec.kwargs)


# -- every plain op -----------------------------------------------------------------------

# name -> [(in_chs, out_chs, stride, kwargs)]
PLAIN_CASES = {
    "conv_bn_relu": [(8, 16, 2, {}), (8, 8, 1, {"kernel_size": 1}), (6, 12, 1, {"act": False})],
    "ir": [(8, 8, 1, {"mid_chs": 24}), (8, 16, 2, {"mid_chs": 16}), (16, 8, 1, {"mid_chs": 8, "kernel_size": 5})],
    "dcs": [(16, 16, 1, {}), (8, 8, 1, {"tau_m": 0.5}), (8, 8, 1, {"form": "softmax"}),
            (8, 8, 1, {"select": False})],
}
PLAIN_PARAMS = [(name, *case) for name, cases in PLAIN_CASES.items() for case in cases]


def test_every_plain_op_has_cases():
    assert set(PLAIN_OPS) <= set(PLAIN_CASES), "add cases for new ops to PLAIN_CASES"


def _build_plain(name, cin, cout, stride, kw):
    torch.manual_seed(0)
    op = PLAIN_OPS.build(name, cin, cout, stride, **kw)
    if isinstance(op, DCSAttention):  # BN weight 0 at init: make the branch contribute
        with torch.no_grad():
            op.bn.weight.fill_(1.0)
    return op


@pytest.mark.parametrize("name, cin, cout, stride, kw", PLAIN_PARAMS)
def test_plain_op_forward_backward(name, cin, cout, stride, kw):
    op = _build_plain(name, cin, cout, stride, kw).train()
    x = torch.randn(2, cin, 8, 6)
    out = op(x)
    assert out.shape == (2, cout, 8 // stride, 6 // stride)
    assert torch.isfinite(out).all()
    weighted_loss(out).backward()
    check_grads(op)
    op.eval()
    with torch.no_grad():
        assert torch.isfinite(op(x)).all()


def test_inverted_residual_residual_rule():
    assert InvertedResidual(8, 8, 1, mid_chs=16).has_residual
    assert not InvertedResidual(8, 8, 2, mid_chs=16).has_residual
    assert not InvertedResidual(8, 12, 1, mid_chs=16).has_residual
    torch.manual_seed(0)
    ir = InvertedResidual(8, 8, 1, mid_chs=16).eval()
    with torch.no_grad():
        ir.bn3.weight.zero_()
        ir.bn3.bias.zero_()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ir(x), x)  # branch is zero: the residual alone remains


def test_conv_bn_relu_structure():
    op = ConvBNReLU(4, 8, 2, kernel_size=3)
    assert op.conv.stride == (2, 2) and op.conv.padding == (1, 1) and op.conv.bias is None
    assert hasattr(op, "act")
    assert not hasattr(ConvBNReLU(4, 8, 1, act=False), "act")
    out = op.eval()(torch.randn(1, 4, 7, 7))
    assert (out >= 0).all() and out.shape == (1, 8, 4, 4)


# -- every super op ------------------------------------------------------------------------

SUPER_CASES = {
    "ir": [(8, 12, 1, {"mid_chs": 24}), (8, 16, 2, {"mid_chs": 32})],
}


def test_every_super_op_has_cases():
    assert set(SUPER_OPS) <= set(SUPER_CASES)


@pytest.mark.parametrize("name, cin, cout, stride, kw",
                         [(n, *c) for n, cases in SUPER_CASES.items() for c in cases])
def test_super_op_forward_backward(name, cin, cout, stride, kw):
    torch.manual_seed(0)
    op = SUPER_OPS.build(name, cin, cout, stride, **kw).train()
    mid = kw["mid_chs"]
    mid_mask = torch.softmax(torch.randn(2), 0) @ option_masks((mid // 2, mid), mid)
    out_mask = torch.softmax(torch.randn(2), 0) @ option_masks((cout // 2, cout), cout)
    x = torch.randn(2, cin, 8, 6)
    out = op(x, mid_mask, out_mask, 0.5 if stride == 1 else None)
    assert out.shape == (2, cout, 8 // stride, 6 // stride)
    assert torch.isfinite(out).all()
    weighted_loss(out).backward()
    check_grads(op)


# -- helpers of the super ops ---------------------------------------------------------------

def test_option_masks():
    m = option_masks((1, 3, 4), 5)
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float32)
    assert torch.equal(m, expected)


def test_match_channels():
    x = torch.randn(2, 3, 4, 4)
    assert match_channels(x, 3) is x
    padded = match_channels(x, 5)
    assert padded.shape == (2, 5, 4, 4)
    assert torch.equal(padded[:, :3], x) and torch.equal(padded[:, 3:], torch.zeros(2, 2, 4, 4))
    assert torch.equal(match_channels(x, 2), x[:, :2])


def test_gumbel_like():
    t = torch.zeros(200_000)
    g1 = gumbel_like(t, torch.Generator().manual_seed(5))
    g2 = gumbel_like(t, torch.Generator().manual_seed(5))
    assert torch.equal(g1, g2) and torch.isfinite(g1).all()
    assert g1.mean().item() == pytest.approx(0.5772, abs=0.02)  # Euler-Mascheroni constant
    assert g1.var().item() == pytest.approx(math.pi ** 2 / 6, rel=0.05)


# -- DCS-Attention ----------------------------------------------------------------------------

def dcs_reference(mod: DCSAttention, x: torch.Tensor) -> torch.Tensor:
    """docs/method.md section 3 in inference mode, written out directly (N x N affinity)."""
    b, c, h, w = x.shape
    X = x.flatten(2).transpose(1, 2)  # (B, N, C)
    if mod.select and mod.selection_rank is not None:  # pi = (X A) B + b
        pi = (X @ mod.pi.a.weight.T) @ mod.pi.b.weight.T + mod.pi.b.bias
        XM = X * (pi > 0).to(X.dtype)
    elif mod.select:
        pi = X @ mod.pi.weight.T + mod.pi.bias
        XM = X * (pi > 0).float()
    else:
        XM = X
    logits = XM @ XM.transpose(1, 2)  # (B, N, N)
    if mod.form == "linear":
        A = logits / (h * w)  # simplified non-local block: C(x) = number of positions
    else:
        A = torch.softmax(logits / math.sqrt(c), dim=-1)
    Y = (A @ X).transpose(1, 2).reshape(b, c, h, w)
    z = F.conv2d(Y, mod.proj.weight, padding=1, groups=c)  # depthwise 3x3
    bn = mod.bn
    z = (z - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    z = z * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    return x + z


def _dcs(c=16, seed=0, tau_m=1.0, **kw):
    torch.manual_seed(seed)
    mod = DCSAttention(c, tau_m=tau_m, **kw)
    randomize_bn(mod, torch.Generator().manual_seed(seed))
    return mod


def test_dcs_rejects_shape_change():
    with pytest.raises(ValueError):
        DCSAttention(8, 16)
    with pytest.raises(ValueError):
        DCSAttention(8, 8, 2)
    assert DCSAttention(8).chs == 8


@pytest.mark.parametrize("train", [True, False])
def test_dcs_fresh_module_is_identity(train):
    torch.manual_seed(0)
    mod = DCSAttention(12).train(train)
    assert torch.equal(mod.bn.weight, torch.zeros(12))
    x = torch.randn(2, 12, 4, 3)
    assert torch.equal(mod(x), x)


@pytest.mark.parametrize("form", ["linear", "softmax"])
@pytest.mark.parametrize("select", [True, False])
@pytest.mark.parametrize("seed, shape", [(0, (2, 16, 4, 3)), (1, (3, 8, 5, 5)), (2, (1, 16, 1, 1))])
def test_dcs_matches_reference_eval(seed, shape, form, select):
    mod = _dcs(shape[1], seed, form=form, select=select).eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 10))
    with torch.no_grad():
        out = mod(x)
        ref = dcs_reference(mod, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - x).abs().max() > 1e-3  # the attention branch contributes


def test_self_attention_variant_has_no_selection():
    sa, dcs = DCSAttention(16, select=False), DCSAttention(16)
    assert sa.pi is None and sa.attention == "self" and dcs.attention == "dcs"
    assert sum(p.numel() for p in dcs.parameters()) - sum(p.numel() for p in sa.parameters()) == 16 * 16 + 16
    with pytest.raises(ValueError, match="form"):
        DCSAttention(8, form="quadratic")


def test_linear_form_never_builds_the_n_by_n_affinity():
    """The linear form is O(N C^2): its peak intermediate is C x C, not N x N."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numels = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                self.numels.append(out.numel())
            return out

    mod = _dcs(8, 3).eval()
    x = torch.randn(1, 8, 32, 32)  # N = 1024 tokens
    with torch.no_grad(), Shapes() as rec:
        mod(x)
    assert max(rec.numels) <= x.numel()  # an N x N matrix would hold 1024^2 elements


@pytest.mark.parametrize("form", ["linear", "softmax"])
def test_dcs_eff_width_and_width_mask_arguments(form):
    mod = _dcs(16, 3, form=form).eval()
    x = torch.randn(2, 16, 3, 3)
    with torch.no_grad():
        ref = mod(x)
        torch.testing.assert_close(mod(x, eff_width=16.0), ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(mod(x, eff_width=torch.tensor(16.0)), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mod(x, width_mask=torch.ones(16)), ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(mod(x, width_mask=torch.zeros(16)), x)
        half = torch.cat([torch.ones(8), torch.zeros(8)])
        out = mod(x, width_mask=half)
        assert torch.equal(out[:, 8:], x[:, 8:])
        torch.testing.assert_close(out[:, :8], ref[:, :8], rtol=1e-6, atol=1e-6)
        if form == "softmax":
            assert not torch.allclose(mod(x, eff_width=4.0), ref, atol=1e-4)  # the scale enters
        else:  # 1/N normalisation: the width does not enter
            torch.testing.assert_close(mod(x, eff_width=4.0), ref, rtol=1e-6, atol=1e-6)


def _mask_input(seed: int, n: int = 10, c: int = 16) -> torch.Tensor:
    return torch.randn(2, c, n, 1, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W), N = n


def _pi_logits(mod: DCSAttention, x: torch.Tensor) -> torch.Tensor:
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    return mod.pi(tokens).transpose(1, 2).reshape(x.shape)  # the linear layer on every token


def test_dcs_eval_mask_is_sign_of_pi():
    mod = _dcs(16, 4).eval()
    x = _mask_input(0)
    m = mod.channel_mask(x)
    expected = (_pi_logits(mod, x) > 0).float()
    assert torch.equal(m, expected)
    assert 0 < m.mean() < 1
    assert torch.equal(mod.channel_mask(x), m)  # deterministic


def test_dcs_train_mask_binary_with_straight_through_gradient():
    mod = _dcs(16, 5).train()
    x = _mask_input(1)
    torch.manual_seed(0)
    m = mod.channel_mask(x)
    assert m.shape == x.shape
    assert set(m.detach().unique().tolist()) == {0.0, 1.0}  # exactly binary
    weighted_loss(m).backward()
    assert mod.pi.weight.grad is not None and mod.pi.weight.grad.abs().sum() > 0
    assert mod.pi.bias.grad is not None and mod.pi.bias.grad.abs().sum() > 0


def test_dcs_straight_through_gradient_is_the_sigmoid_gradient():
    """Forward [pi + L > 0] with L = log(1 - u) - log(u); dM/dpi = d sigmoid((pi + L) / tau) / dpi."""
    from dnas.ops.dcs import _StraightThroughBinary

    gen = torch.Generator().manual_seed(0)
    pi = torch.randn(256, dtype=torch.float64, generator=gen, requires_grad=True)
    u = torch.rand(256, dtype=torch.float64, generator=gen)
    g = torch.randn(256, dtype=torch.float64, generator=gen)
    m = _StraightThroughBinary.apply(pi, u, 0.7)
    noise = torch.log1p(-u) - torch.log(u)
    assert torch.equal(m, (pi.detach() + noise > 0).double())
    (m * g).sum().backward()
    ref = pi.detach().clone().requires_grad_(True)
    (torch.sigmoid((ref + noise) / 0.7) * g).sum().backward()
    torch.testing.assert_close(pi.grad, ref.grad)


def test_train_mask_has_the_law_of_the_two_gumbel_formula():
    """P(M = 1) under [u < sigmoid(pi)] equals P(pi + G1 - G2 > 0) = sigmoid(pi), the
    binary Gumbel-sigmoid of the paper, for every logit."""
    from dnas.ops.dcs import _StraightThroughBinary

    gen = torch.Generator().manual_seed(0)
    pi = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0]).repeat(40_000, 1)  # (40000, 5)
    ours = _StraightThroughBinary.apply(pi, torch.rand(pi.shape, generator=gen), 1.0).mean(0)
    gumbel = (pi + gumbel_like(pi, gen) - gumbel_like(pi, gen) > 0).float().mean(0)
    want = torch.sigmoid(pi[0])
    torch.testing.assert_close(ours, want, atol=0.01, rtol=0)
    torch.testing.assert_close(gumbel, want, atol=0.01, rtol=0)


def test_dcs_train_mask_is_noisy_but_follows_large_logits():
    mod = _dcs(16, 6).train()
    x = _mask_input(2, n=50)
    torch.manual_seed(1)
    a, b = mod.channel_mask(x), mod.channel_mask(x)
    assert not torch.equal(a, b)  # logistic (Gumbel-difference) noise in training
    with torch.no_grad():
        mod.pi.weight.zero_()
        mod.pi.bias.fill_(100.0)
    assert torch.equal(mod.channel_mask(x).detach(), torch.ones_like(x))
    with torch.no_grad():
        mod.pi.bias.fill_(-100.0)
    assert torch.equal(mod.channel_mask(x).detach(), torch.zeros_like(x))


def test_dcs_train_forward_gradient_reaches_pi():
    mod = _dcs(8, 7).train()
    x = torch.randn(2, 8, 4, 4)
    out = mod(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    weighted_loss(out).backward()
    check_grads(mod)


# -- super inverted residual vs its plain twin ------------------------------------------------

def _randomize_params(module: nn.Module, gen: torch.Generator) -> None:
    randomize_bn(module, gen)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _onehot(i: int, k: int) -> torch.Tensor:
    return torch.zeros(k).index_fill_(0, torch.tensor([i]), 1.0)


# (in_max, out_max, stride, mid options, in chosen, out options, out index, mid index, residual)
SIR_CASES = [
    (16, 24, 1, (16, 32, 48), 12, (8, 16, 24), 1, 2, False),
    (16, 24, 2, (16, 32, 48), 16, (8, 16, 24), 0, 0, False),
    (24, 24, 1, (24, 48, 72), 16, (8, 16, 24), 1, 1, True),
    (24, 24, 1, (24, 48, 72), 24, (8, 16, 24), 2, 0, True),
]


@pytest.mark.parametrize("in_max, out_max, stride, mids, cin, outs, oi, mi, residual", SIR_CASES)
def test_super_ir_one_hot_equals_plain(in_max, out_max, stride, mids, cin, outs, oi, mi, residual):
    gen = torch.Generator().manual_seed(oi * 10 + mi)
    sup = SuperInvertedResidual(in_max, out_max, stride, mid_chs=max(mids))
    _randomize_params(sup, gen)
    sup.eval()
    cout, mid = outs[oi], mids[mi]
    if residual:
        assert cin == cout and stride == 1
    plain = InvertedResidual(cin, cout, stride, mid_chs=mid)
    plain.load_state_dict(slice_state_dict(sup.state_dict(), plain.state_dict()))
    plain.eval()
    assert plain.has_residual == residual

    x = torch.randn(2, in_max, 8, 6, generator=gen)
    x[:, cin:] = 0  # the input arrives masked to the previous width
    mid_mask = _onehot(mi, len(mids)) @ option_masks(mids, max(mids))
    out_mask = _onehot(oi, len(outs)) @ option_masks(outs, out_max)
    with torch.no_grad():
        y = sup(x, mid_mask, out_mask, 1.0 if residual else None)
        ref = plain(x[:, :cin])
    assert y.shape == (2, out_max, 8 // stride, 6 // stride)
    torch.testing.assert_close(y[:, :cout], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, cout:], torch.zeros_like(y[:, cout:]))  # masked channels are exactly 0


def test_super_ir_masks_are_applied():
    gen = torch.Generator().manual_seed(3)
    sup = SuperInvertedResidual(8, 16, 1, mid_chs=32)
    _randomize_params(sup, gen)
    sup.eval()
    x = torch.randn(2, 8, 5, 5, generator=gen)
    full = torch.ones(32)
    with torch.no_grad():
        y = sup(x, full, torch.cat([torch.ones(4), torch.zeros(12)]), None)
        assert torch.equal(y[:, 4:], torch.zeros(2, 12, 5, 5)) and y[:, :4].abs().sum() > 0
        # the mid mask matters: dropping half the mid channels changes the output
        y_half = sup(x, torch.cat([torch.ones(16), torch.zeros(16)]), torch.ones(16), None)
        assert not torch.allclose(y_half, sup(x, full, torch.ones(16), None))
        # a zero mid mask leaves only BN3's shift on the kept channels
        y0 = sup(x, torch.zeros(32), torch.ones(16), None)
        shift = sup.bn3.bias - sup.bn3.running_mean * sup.bn3.weight / torch.sqrt(sup.bn3.running_var + sup.bn3.eps)
        torch.testing.assert_close(y0, shift.view(1, -1, 1, 1).expand_as(y0), rtol=1e-5, atol=1e-5)


def test_super_ir_soft_out_mask_is_mixture():
    """y = b(x) * sum_i g_i 1_{k_i}: the output is the g-weighted sum of the one-hot outputs."""
    gen = torch.Generator().manual_seed(4)
    sup = SuperInvertedResidual(8, 16, 2, mid_chs=24)
    _randomize_params(sup, gen)
    sup.eval()
    outs = (4, 8, 16)
    masks = option_masks(outs, 16)
    g = torch.tensor([0.2, 0.5, 0.3])
    x = torch.randn(2, 8, 6, 6, generator=gen)
    mid = torch.ones(24)
    with torch.no_grad():
        mixed = sup(x, mid, g @ masks, None)
        parts = sum(g[i] * sup(x, mid, masks[i], None) for i in range(3))
    torch.testing.assert_close(mixed, parts, rtol=1e-5, atol=1e-5)


def test_super_ir_residual_weight_scales_input():
    sup = SuperInvertedResidual(8, 8, 1, mid_chs=16).eval()
    x = torch.randn(2, 8, 4, 4)
    m, o = torch.ones(16), torch.ones(8)
    with torch.no_grad():
        base = sup(x, m, o, None)
        torch.testing.assert_close(sup(x, m, o, 1.0), base + x)
        torch.testing.assert_close(sup(x, m, o, torch.tensor(0.25)), base + 0.25 * x)


def test_kernel_masks_are_centred_squares():
    m = kernel_masks((1, 3, 5), 5)
    assert m.shape == (3, 5, 5) and m.sum((1, 2)).tolist() == [1.0, 9.0, 25.0]
    assert m[0, 2, 2] == 1 and torch.equal(m[1, 1:4, 1:4], torch.ones(3, 3)) and m[1].sum() == 9
    assert torch.equal(kernel_masks((3,), 3), torch.ones(1, 3, 3))


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 1), (5, 2)])
def test_super_ir_kernel_choice_equals_plain_with_the_centre_kernel(k, stride):
    """A one-hot kernel choice k of a 5x5 super-op == the plain op with the centre k x k weight."""
    gen = torch.Generator().manual_seed(k + stride)
    sup = SuperInvertedResidual(8, 16, stride, mid_chs=24, kernel_size=5)
    _randomize_params(sup, gen)
    sup.eval()
    plain = InvertedResidual(8, 12, stride, mid_chs=16, kernel_size=k)
    plain.load_state_dict(slice_state_dict(sup.state_dict(), plain.state_dict()))
    plain.eval()
    lo = (5 - k) // 2
    assert torch.equal(plain.dw.weight, sup.dw.weight[:16, :, lo:lo + k, lo:lo + k])
    x = torch.randn(2, 8, 9, 7, generator=gen)
    mid_mask = option_masks((16, 24), 24)[0]
    out_mask = option_masks((12, 16), 16)[0]
    kernel_mask = torch.tensordot(_onehot((3, 5).index(k), 2), kernel_masks((3, 5), 5), 1)  # (5, 5)
    with torch.no_grad():
        y = sup(x, mid_mask, out_mask, None, {"kernel_size": kernel_mask})
        ref = plain(x)
        mixed = sup(x, mid_mask, out_mask, None, {"kernel_size": torch.tensordot(torch.tensor([0.3, 0.7]), kernel_masks((3, 5), 5), 1)})
    torch.testing.assert_close(y[:, :12], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed, y, atol=1e-4)  # a soft choice mixes the two kernels


def test_slice_state_dict_cuts_kernels_around_their_centre():
    src = {"w": torch.arange(2 * 1 * 5 * 5.0).view(2, 1, 5, 5)}
    out = slice_state_dict(src, {"w": torch.zeros(1, 1, 3, 3)})
    assert torch.equal(out["w"], src["w"][:1, :, 1:4, 1:4])
    from dnas.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no centre"):
        slice_state_dict(src, {"w": torch.zeros(1, 1, 4, 4)})


# -- association order of the linear affinity -------------------------------------------------

def test_affinity_order_rule_and_macs():
    from dnas.ops.dcs import affinity_order, linear_affinity_macs

    assert affinity_order(320, 128) == "tokens" and affinity_order(24, 2048) == "channels"
    assert affinity_order(64, 64) == "channels"  # a tie keeps the C x C intermediate
    assert linear_affinity_macs(320, 128) == 2 * 128 * 128 * 320
    assert linear_affinity_macs(24, 2048) == 2 * 24 * 24 * 2048


@pytest.mark.parametrize("select", [True, False])
@pytest.mark.parametrize("shape", [(2, 16, 2, 3), (2, 6, 4, 5), (1, 8, 2, 4)])  # N < C, N > C, N == C
def test_linear_affinity_orders_compute_the_same_function(shape, select):
    """``(X*M)((X*M)^T X)/N`` == ``((X*M)(X*M)^T/N) X`` (float64), DCS and self-attention;
    the module's automatic choice equals both and the N x N reference."""
    from dnas.ops.dcs import linear_affinity_output

    gen = torch.Generator().manual_seed(shape[1])
    k, v = (torch.randn(shape[0], shape[1], shape[2] * shape[3], dtype=torch.float64, generator=gen)
            for _ in range(2))
    torch.testing.assert_close(linear_affinity_output(k, v, "channels"), linear_affinity_output(k, v, "tokens"),
                               rtol=1e-12, atol=1e-12)
    mod = _dcs(shape[1], 3, select=select).double().eval()
    x = torch.randn(*shape, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        outs = {}
        for order in ("channels", "tokens", None):
            mod.order = order
            outs[order] = mod(x)
        ref = dcs_reference(mod, x)
    torch.testing.assert_close(outs["channels"], outs["tokens"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[None], ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="order"):
        DCSAttention(8, order="rows")


@pytest.mark.parametrize("select", [True, False])
@pytest.mark.parametrize("c, h, w", [(32, 2, 4), (8, 4, 4)])  # tokens order, channels order
def test_fvcore_counts_the_order_that_runs(c, h, w, select):
    from dnas.latency.keys import make_entry
    from dnas.latency.proxy import entry_macs
    from dnas.model_stats import count_macs

    n = h * w
    mod = DCSAttention(c, select=select)
    auto = count_macs(mod, [c, h, w])
    mod.order = "channels"
    chan = count_macs(mod, [c, h, w])
    mod.order = "tokens"
    tok = count_macs(mod, [c, h, w])
    assert chan - tok == 2 * c * n * (c - n)  # 2 C^2 N against 2 N^2 C
    assert auto == min(chan, tok)
    entry = make_entry("dcs", (c, h, w), attention="dcs" if select else "self", form="linear", in_chs=c, res=(h, w))
    assert entry_macs(entry) == auto  # the MACs proxy follows the order run


# -- factorised selection layer ----------------------------------------------------------------

def test_factorised_selection_parameters_and_bad_ranks():
    full, low = DCSAttention(16), DCSAttention(16, selection_rank=4)
    n_pi = lambda m: sum(p.numel() for p in m.pi.parameters())  # noqa: E731
    assert n_pi(full) == 16 * 16 + 16 and n_pi(low) == 2 * 16 * 4 + 16
    assert low.pi.a.weight.shape == (4, 16) and low.pi.b.weight.shape == (16, 4)  # A^T, B^T
    assert DCSAttention(16, select=False, selection_rank=4).pi is None
    for bad in (0, 16, 20, 2.5, True):
        with pytest.raises(ValueError, match="selection_rank"):
            DCSAttention(16, selection_rank=bad)


@pytest.mark.parametrize("form", ["linear", "softmax"])
def test_factorised_selection_eval_mask_is_sign_of_pi_and_matches_reference(form):
    mod = _dcs(16, 8, form=form, selection_rank=3).eval()
    x = _mask_input(3)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    pi = mod.pi.b(mod.pi.a(tokens))  # (X A) B + b
    expected = (pi.transpose(1, 2).reshape(x.shape) > 0).float()
    assert torch.equal(mod.channel_mask(x), expected) and 0 < expected.mean() < 1
    with torch.no_grad():
        torch.testing.assert_close(mod(x), dcs_reference(mod, x), rtol=1e-5, atol=1e-5)


def test_factorised_selection_gradient_reaches_both_factors():
    mod = _dcs(16, 9, selection_rank=4).train()
    x = torch.randn(2, 16, 4, 4)
    torch.manual_seed(0)
    weighted_loss(mod(x)).backward()
    for p in (mod.pi.a.weight, mod.pi.b.weight, mod.pi.b.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    check_grads(mod)
