"""Label-smoothed cross-entropy, batch-hard triplet and center losses on hand-worked cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dnas.losses import (CenterLoss, CrossEntropyLabelSmooth, TripletLoss, batch_hard_triplet,
                         cross_entropy_smooth)


def test_cross_entropy_smooth_hand_case():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    log_p = F.log_softmax(logits, 1)[0]
    eps = 0.1
    expected = -((1 - eps + eps / 3) * log_p[0] + eps / 3 * log_p[1] + eps / 3 * log_p[2])
    got = cross_entropy_smooth(logits, torch.tensor([0]), eps)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-6)
    assert math.isclose(got.item(), F.cross_entropy(logits, torch.tensor([0]),
                                                    label_smoothing=eps).item(), rel_tol=1e-6)


def test_cross_entropy_smooth_soft_targets_and_mixup_linearity():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 3, 1, 1, 2])
    hard = cross_entropy_smooth(logits, y)
    soft = cross_entropy_smooth(logits, F.one_hot(y, 4).float())
    assert torch.allclose(hard, soft)
    assert torch.allclose(cross_entropy_smooth(logits, y, 0.0), F.cross_entropy(logits, y))
    perm, lam = torch.tensor([4, 0, 1, 2, 3]), 0.3
    mixed = lam * F.one_hot(y, 4).float() + (1 - lam) * F.one_hot(y[perm], 4).float()
    expected = (lam * cross_entropy_smooth(logits, y)
                + (1 - lam) * cross_entropy_smooth(logits, y[perm]))
    assert torch.allclose(cross_entropy_smooth(logits, mixed), expected)
    CrossEntropyLabelSmooth()(logits, y).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_batch_hard_triplet_hand_case():
    # 1-D features: ids A at 0 and 1, B at 1.5 and 4
    f = torch.tensor([[0.0], [1.0], [1.5], [4.0]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    # anchor 0: d_ap 1, d_an 1.5 -> 0.3 + 1 - 1.5 < 0 -> 0
    # anchor 1: d_ap 1, d_an 0.5 -> 0.8
    # anchor 2: d_ap 2.5, d_an 0.5 -> 2.3
    # anchor 3: d_ap 2.5, d_an 3 -> 0 (-0.2)
    loss = batch_hard_triplet(f, y, margin=0.3)
    assert math.isclose(loss.item(), (0.8 + 2.3) / 4, rel_tol=1e-5)
    soft = batch_hard_triplet(f, y, soft_margin=True)
    expected = sum(math.log1p(math.exp(v)) for v in (1 - 1.5, 1 - 0.5, 2.5 - 0.5, 2.5 - 3)) / 4
    assert math.isclose(soft.item(), expected, rel_tol=1e-5)
    loss.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert math.isclose(TripletLoss(0.3)(f, y).item(), loss.item())


def test_triplet_anchors_without_positive_or_negative():
    f = torch.tensor([[0.0], [1.0], [3.0]], requires_grad=True)
    # anchor 2 (id 1) has no positive: only anchors 0 and 1 count
    loss = batch_hard_triplet(f, torch.tensor([0, 0, 1]), margin=0.3)
    assert math.isclose(loss.item(), 0.0, abs_tol=1e-6)  # 1 + 0.3 - 3 and 1 + 0.3 - 2 < 0
    loss2 = batch_hard_triplet(f, torch.tensor([0, 0, 1]), margin=2.5)
    assert math.isclose(loss2.item(), ((1 + 2.5 - 3) + (1 + 2.5 - 2)) / 2, rel_tol=1e-5)
    none = batch_hard_triplet(f, torch.tensor([0, 1, 2]))  # no positives at all
    assert none.item() == 0.0
    none.backward()
    assert f.grad is not None and torch.equal(f.grad, torch.zeros_like(f))


def test_triplet_duplicate_features_finite_gradient():
    f = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    loss = batch_hard_triplet(f, torch.tensor([0, 0, 1, 1]), normalize=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


def test_center_loss():
    cl = CenterLoss(3, 2)
    with torch.no_grad():
        cl.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    f = torch.tensor([[1.0, 0.0], [1.0, 3.0]], requires_grad=True)
    loss = cl(f, torch.tensor([0, 1]))
    assert math.isclose(loss.item(), 0.5 * (1.0 + 4.0) / 2)
    loss.backward()
    assert cl.centers.grad[2].abs().sum() == 0 and cl.centers.grad[:2].abs().sum() > 0
    assert torch.allclose(f.grad, torch.tensor([[0.5, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("soft", [False, True])
def test_triplet_decreases_under_descent(soft):
    torch.manual_seed(0)
    f = torch.randn(8, 4, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    opt = torch.optim.SGD([f], lr=0.1)
    first = batch_hard_triplet(f, y, soft_margin=soft).item()
    for _ in range(50):
        opt.zero_grad()
        batch_hard_triplet(f, y, soft_margin=soft).backward()
        opt.step()
    assert batch_hard_triplet(f, y, soft_margin=soft).item() < first


def test_branches_are_averaged_transreid_style():
    """A model with branches (TransReID: global + JPM parts): CE and triplet are
    0.5 * global + 0.5 * mean(parts); without branches the loss is that of the one head."""
    from dnas.losses import ReIDLoss, batch_hard_triplet, branch_mean, cross_entropy_smooth

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = [torch.randn(6, 3, requires_grad=True) for _ in range(3)]
    feats = [torch.randn(6, 4, requires_grad=True) for _ in range(3)]
    out = {"logits": logits[0], "global_feat": torch.cat(feats, 1), "ib_input": torch.randn(6, 5),
           "branch_logits": logits, "branch_feats": feats}
    loss, parts = ReIDLoss(3, use_ibb=False)(out, labels, labels)
    ce = [cross_entropy_smooth(lg, labels, 0.1) for lg in logits]
    tri = [batch_hard_triplet(f, labels, 0.3) for f in feats]
    assert torch.allclose(parts["ce"], 0.5 * ce[0] + 0.25 * (ce[1] + ce[2]))
    assert torch.allclose(parts["triplet"], 0.5 * tri[0] + 0.25 * (tri[1] + tri[2]))
    assert torch.allclose(loss, parts["ce"] + parts["triplet"])
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits + feats)  # every branch trains
    single = ReIDLoss(3, use_ibb=False)({k: out[k] for k in ("logits", "global_feat", "ib_input")}, labels, labels)[1]
    assert torch.allclose(single["ce"], ce[0]) and branch_mean([ce[1]]) is ce[1]
