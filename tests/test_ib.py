"""IB bound (Theorem 3.1) against independent numpy computations and hand-worked cases."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dnas.ib import (IBTracker, ib_bound, ib_loss, mutual_information, q_from_assignments,
                     q_from_sums, soft_assign)

# ---------------------------------------------------------------- numpy references


def np_phi(f, c, valid=None):
    f, c = np.asarray(f, np.float64), np.asarray(c, np.float64)
    logits = -((f[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    if valid is not None:
        logits[:, ~np.asarray(valid)] = -np.inf
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_q(phi, y, k, prior):
    s = np.zeros((k, k))
    for i, yi in enumerate(y):
        s[:, yi] += phi[i]
    s += prior
    return s / s.sum(1, keepdims=True)


def np_ibb(pf, px, q, y):
    total = 0.0
    for i in range(len(y)):
        for a in range(pf.shape[1]):
            for b in range(px.shape[1]):
                if px[i, b] > 0:
                    total += pf[i, a] * px[i, b] * math.log(px[i, b])
            total -= pf[i, a] * math.log(q[a, y[i]])
    return total / len(y)


def np_mi(joint):
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    return sum(p[i, j] * math.log(p[i, j] / (pa[i] * pb[j]))
               for i in range(p.shape[0]) for j in range(p.shape[1]) if p[i, j] > 0)


def t64(x):
    return torch.tensor(np.asarray(x), dtype=torch.float64)


# ---------------------------------------------------------------- functions


def test_soft_assign_hand_case_and_numpy():
    phi = soft_assign(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    e = math.exp(-1)
    assert torch.allclose(phi, torch.tensor([[1 / (1 + e), e / (1 + e)]]))
    rng = np.random.default_rng(0)
    f, c = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    valid = np.array([True, False, True, True])
    got = soft_assign(t64(f), t64(c), torch.tensor(valid))
    assert np.allclose(got.numpy(), np_phi(f, c, valid), atol=1e-10)
    assert torch.all(got[:, 1] == 0)
    assert torch.allclose(got.sum(1), torch.ones(6, dtype=torch.float64))
    pooled = soft_assign(t64(f)[:, :, None, None].expand(6, 5, 2, 3), t64(c))
    assert np.allclose(pooled.numpy(), np_phi(f, c), atol=1e-10)  # (B, C, H, W) is pooled


def test_q_hand_case_and_numpy():
    phi = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = q_from_assignments(phi, torch.tensor([0, 1]), 2, q_prior=0.0)
    assert torch.allclose(q, torch.tensor([[2 / 3, 1 / 3], [0.0, 1.0]]))
    rng = np.random.default_rng(1)
    ph = rng.dirichlet(np.ones(3), size=7)
    y = np.array([0, 2, 2, 0, 0, 2, 2])  # class 1 absent from the labels
    got = q_from_assignments(t64(ph), torch.tensor(y), 3, q_prior=1e-3).numpy()
    assert np.allclose(got, np_q(ph, y, 3, 1e-3))
    assert np.allclose(got.sum(1), 1) and np.all(got > 0)


def test_ibb_hand_case():
    pf, px = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]])
    q = q_from_sums(torch.tensor([[1.0, 0.5], [0.0, 0.5]]), q_prior=0.0)
    got = ib_bound(pf, px, q, torch.tensor([0]))
    # -H(phi_X) - log Q(0 | 0) = -log 2 - log(2/3)
    assert math.isclose(got.item(), -math.log(4 / 3), rel_tol=1e-6)


def test_ibb_matches_numpy_with_absent_class():
    rng = np.random.default_rng(2)
    k = 4
    f, x = rng.normal(size=(5, 3)), rng.normal(size=(5, 6))
    cf, cx = rng.normal(size=(k, 3)), rng.normal(size=(k, 6))
    y = np.array([0, 0, 2, 3, 2])  # class 1 absent from the batch
    valid = np.array([True, True, True, False])  # class 3 has no centroid yet
    pf, px = np_phi(f, cf, valid), np_phi(x, cx, valid)
    q = np_q(rng.dirichlet(np.ones(k), size=20), rng.integers(0, k, 20), k, 1e-3)
    ft, xt = t64(f).requires_grad_(), t64(x).requires_grad_()
    vt = torch.tensor(valid)
    got = ib_bound(soft_assign(ft, t64(cf), vt), soft_assign(xt, t64(cx), vt), t64(q),
                   torch.tensor(y))
    assert math.isclose(got.item(), np_ibb(pf, px, q, y), rel_tol=1e-9)
    got.backward()
    assert ft.grad.abs().sum() > 0 and xt.grad.abs().sum() > 0  # flows into F and X
    assert torch.isfinite(ft.grad).all() and torch.isfinite(xt.grad).all()


@pytest.mark.parametrize("scale", [1e3, 1e8, 1e18, 1e30])
def test_extreme_distances_stay_finite(scale):
    torch.manual_seed(0)
    c = torch.randn(4, 3)
    valid = torch.tensor([True, True, True, False])
    f = torch.randn(5, 3)
    f[0] *= scale
    x = torch.randn(5, 3)
    x[1] *= scale
    f.requires_grad_()
    x.requires_grad_()
    y = torch.tensor([0, 1, 2, 0, 1])
    pf, px = soft_assign(f, c, valid), soft_assign(x, c, valid)
    q = q_from_assignments(pf.detach(), y, 4)
    ibb = ib_bound(pf, px, q, y)
    ibb.backward()
    for t in (pf, px, ibb, f.grad, x.grad, ib_loss(pf, px, y, 4)["ib"]):
        assert torch.isfinite(t).all()
    assert torch.allclose(pf.sum(1), torch.ones(5))


def test_mutual_information_and_ib_loss():
    assert math.isclose(mutual_information(torch.tensor([[0.5, 0.0], [0.0, 0.5]])).item(),
                        math.log(2), rel_tol=1e-6)
    assert abs(mutual_information(torch.full((2, 2), 0.25)).item()) < 1e-7
    rng = np.random.default_rng(3)
    pf, px = rng.dirichlet(np.ones(3), size=9), rng.dirichlet(np.ones(3), size=9)
    y = rng.integers(0, 3, 9)
    got = ib_loss(t64(pf), t64(px), torch.tensor(y), 3)
    i_xf = np_mi(pf.T @ px / 9)
    i_fy = np_mi(pf.T @ np.eye(3)[y] / 9)
    assert math.isclose(got["i_xf"].item(), i_xf, rel_tol=1e-9)
    assert math.isclose(got["i_fy"].item(), i_fy, rel_tol=1e-9)
    assert math.isclose(got["ib"].item(), i_xf - i_fy, rel_tol=1e-9)


# ---------------------------------------------------------------- tracker


def _epoch_data(seed, labels, df=3, dx=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor(labels)
    f = torch.randn(len(labels), df, generator=g, dtype=torch.float64) + y[:, None] * 2.0
    x = torch.randn(len(labels), dx, generator=g, dtype=torch.float64) - y[:, None]
    return f, x, y


def test_tracker_epochs_against_numpy():
    k, prior = 4, 1e-3
    tr = IBTracker(k, q_prior=prior)
    f1, x1, y1 = _epoch_data(0, [0, 0, 1, 2, 2, 1])  # class 3 never seen
    f1.requires_grad_()
    out = tr.step(f1, x1, y1)
    assert out.item() == 0.0 and not tr.ready  # no centroids before the first epoch ends
    out.backward()
    assert torch.equal(f1.grad, torch.zeros_like(f1))
    stats = tr.end_epoch(all_reduce=None)
    assert math.isnan(stats["ib"]) and stats["classes"] == 3 and tr.ready
    cf1 = np.stack([f1.detach().numpy()[y1.numpy() == a].mean(0) for a in range(3)])
    assert np.allclose(tr.centroids_f[:3].numpy(), cf1, atol=1e-6)
    assert tr.valid.tolist() == [True, True, True, False]
    # first Q: samples placed at their class centroid (module NOTE)
    counts = np.bincount(y1.numpy(), minlength=k)
    cent = tr.centroids_f.double().numpy()
    phi_c = np_phi(cent, cent, tr.valid.numpy())
    s = (phi_c * counts[:, None]).T + prior
    assert np.allclose(tr.q.numpy(), s / s.sum(1, keepdims=True), atol=1e-6)

    # epoch 2: class 1 absent; its centroid stays
    c1_before = tr.centroids_f[1].clone()
    q_epoch2 = tr.q.double().numpy()
    batches = [_epoch_data(1, [0, 2, 0]), _epoch_data(2, [2, 2, 0, 0])]
    phis, bounds = [], []
    for f, x, y in batches:
        f.requires_grad_()
        x.requires_grad_()
        b = tr.step(f, x, y)
        pf = np_phi(f.detach().numpy(), tr.centroids_f.numpy(), tr.valid.numpy())
        px = np_phi(x.detach().numpy(), tr.centroids_x.numpy(), tr.valid.numpy())
        assert math.isclose(b.item(), np_ibb(pf, px, q_epoch2, y.numpy()), rel_tol=1e-4)
        b.backward()
        assert f.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
        assert np.all(pf[:, 3] == 0)
        phis.append((pf, px, y.numpy()))
        bounds.append(b.item() * len(y))
    stats = tr.end_epoch(all_reduce=None)
    pf = np.concatenate([p[0] for p in phis])
    px = np.concatenate([p[1] for p in phis])
    y = np.concatenate([p[2] for p in phis])
    assert math.isclose(stats["ibb"], sum(bounds) / len(y), rel_tol=1e-6)
    assert math.isclose(stats["i_xf"], np_mi(pf.T @ px), rel_tol=1e-4)
    assert math.isclose(stats["i_fy"], np_mi(pf.T @ np.eye(k)[y]), rel_tol=1e-4)
    assert math.isclose(stats["ib"], stats["i_xf"] - stats["i_fy"], rel_tol=1e-9)
    assert np.allclose(tr.q.numpy(), np_q(pf, y, k, prior), atol=1e-5)
    assert torch.equal(tr.centroids_f[1], c1_before)
    f_all = torch.cat([b[0] for b in batches]).detach().numpy()
    assert np.allclose(tr.centroids_f[0].numpy(), f_all[y == 0].mean(0), atol=1e-6)
    assert tr.epoch == 2


def test_tracker_state_dict_weights_only_roundtrip():
    tr = IBTracker(3)
    for seed in range(2):
        tr.step(*_epoch_data(seed, [0, 1, 2, 1]))
        tr.end_epoch(all_reduce=None)
    tr.step(*_epoch_data(5, [0, 2]))  # mid-epoch accumulators are saved too
    buf = io.BytesIO()
    torch.save(tr.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(torch.is_tensor(v) for v in state.values())
    tr2 = IBTracker(3)
    tr2.load_state_dict(state)
    batch = _epoch_data(9, [1, 2, 0])
    assert torch.allclose(tr.bound(*batch), tr2.bound(*batch))
    assert tr.end_epoch(all_reduce=None) == tr2.end_epoch(all_reduce=None)
    with pytest.raises(ValueError, match="classes"):
        IBTracker(4).load_state_dict(state)
    empty = IBTracker(3)
    empty.load_state_dict(IBTracker(3).state_dict())
    assert not empty.ready


def _flat(tr):
    from dnas.ib import _ACCUMULATORS

    return torch.cat([getattr(tr, n).reshape(-1) for n in _ACCUMULATORS]).clone()


def test_tracker_all_reduce_equals_single_process():
    labels = [0, 1, 2, 0, 1, 2, 0, 0]
    single, a, b = IBTracker(3), IBTracker(3), IBTracker(3)
    for epoch in range(3):
        f, x, y = _epoch_data(epoch, labels)
        single.step(f, x, y)
        a.step(f[:4], x[:4], y[:4])
        b.step(f[4:], x[4:], y[4:])
        fa, fb = _flat(a), _flat(b)
        s_single = single.end_epoch(all_reduce=None)
        s_a = a.end_epoch(all_reduce=lambda t: t.add_(fb))
        s_b = b.end_epoch(all_reduce=lambda t: t.add_(fa))
        for key in ("ibb", "ib", "i_xf", "i_fy"):
            assert (math.isnan(s_single[key]) and math.isnan(s_a[key])
                    and math.isnan(s_b[key])) == (epoch == 0)
            if epoch:
                assert math.isclose(s_single[key], s_a[key], rel_tol=1e-9)
                assert s_a[key] == s_b[key]
        for t in (a, b):
            assert torch.allclose(t.centroids_f, single.centroids_f)
            assert torch.allclose(t.q, single.q)


def _ddp_worker(rank, world, path, out):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
    tr = IBTracker(3)
    f, x, y = _epoch_data(0, [0, 1, 2, 0, 1, 2])
    half = slice(rank * 3, rank * 3 + 3)
    tr.step(f[half], x[half], y[half])
    tr.end_epoch()  # default hook: torch.distributed.all_reduce
    out[rank] = tr.centroids_f.clone()
    dist.destroy_process_group()


@pytest.mark.slow
def test_tracker_with_torch_distributed(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True)
    ref = IBTracker(3)
    ref.step(*_epoch_data(0, [0, 1, 2, 0, 1, 2]))
    ref.end_epoch(all_reduce=None)
    for r in range(2):
        assert torch.allclose(out[r], ref.centroids_f)
