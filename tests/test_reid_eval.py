"""Re-ID evaluation (Market-1501 protocol) on hand-computed cases and against a reference loop."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import dnas.reid.metrics as M
from dnas.errors import DataError
from dnas.reid import evaluate, evaluate_features, extract_features, pairwise_distance


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Straightforward per-query loop (torchreid's algorithm with a stable sort)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order] == q_pids[i])[keep].astype(float)
        if not raw.any():
            continue
        cum = raw.cumsum()
        hits = np.flatnonzero(raw)
        inps.append(cum[hits[-1]] / (hits[-1] + 1))
        cmc = np.ones(max_rank)
        cmc[:min(max_rank, hits[0])] = 0
        cmcs.append(cmc)
        aps.append(((cum / np.arange(1, len(raw) + 1)) * raw).sum() / raw.sum())
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), len(q_pids) - len(aps)


def test_hand_case_junk_removed_and_ranks():
    # gallery:       junk   other  match  other  match
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    g_pids = np.array([1, 2, 1, 3, 1])
    g_cams = np.array([0, 1, 1, 0, 2])
    r = evaluate(d, [1], g_pids, [0], g_cams, max_rank=4)
    # kept list: other, match, other, match -> matches at ranks 2 and 4
    assert r["cmc"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert math.isclose(r["mAP"], (1 / 2 + 2 / 4) / 2)
    assert math.isclose(r["mINP"], 2 / 4)
    assert (r["rank1"], r["num_valid"], r["num_skipped"]) == (0.0, 1, 0)


def test_ties_broken_by_gallery_order():
    d = np.full((2, 3), 0.5, dtype=np.float32)
    g_pids, g_cams = np.array([7, 8, 9]), np.array([1, 1, 1])
    r = evaluate(d, [9, 7], g_pids, [0, 0], g_cams, max_rank=3)
    # query 0 matches gallery 2 (rank 3); query 1 matches gallery 0 (rank 1)
    assert r["cmc"].tolist() == [0.5, 0.5, 1.0]
    assert math.isclose(r["mAP"], (1 / 3 + 1) / 2)
    for dtype in (np.float64, np.int64):  # the stable-argsort path agrees
        assert evaluate(d.astype(dtype), [9, 7], g_pids, [0, 0], g_cams, 3)["cmc"].tolist() == \
            [0.5, 0.5, 1.0]
    neg_zero = np.array([[0.0, -0.0]], dtype=np.float32)  # -0.0 ties with +0.0
    assert evaluate(neg_zero, [5], [4, 5], [0], [1, 1], 2)["rank1"] == 0.0


def test_query_without_valid_match_is_skipped():
    d = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.6]], dtype=np.float32)
    g_pids, g_cams = np.array([1, 2]), np.array([0, 1])
    # q0 pid 1 cam 0: its only match is junk -> skipped; q1 pid 2 cam 0 -> rank 1;
    # q2 pid 3 -> not in the gallery -> skipped
    r = evaluate(d, [1, 2, 3], g_pids, [0, 0, 0], g_cams, max_rank=2)
    assert (r["num_queries"], r["num_valid"], r["num_skipped"]) == (3, 1, 2)
    assert r["cmc"].tolist() == [1.0, 1.0] and r["mAP"] == 1.0
    with pytest.raises(DataError, match="no query has a true match"):
        evaluate(d[:1], [1], g_pids, [0], g_cams)


def test_several_matches_at_known_ranks_and_distractors():
    # 6 gallery images, pid 0 = distractor; query pid 4 cam 0; matches at ranks 1, 3, 6
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=np.float32)
    g_pids = np.array([4, 0, 4, 0, 5, 4])
    g_cams = np.array([1, 0, 2, 1, 0, 3])
    r = evaluate(d, [4], g_pids, [0], g_cams, max_rank=8)
    assert r["cmc"].tolist() == [1.0] * 8  # longer than the gallery: padded with 1
    assert math.isclose(r["mAP"], (1 / 1 + 2 / 3 + 3 / 6) / 3)
    assert math.isclose(r["mINP"], 3 / 6)


@pytest.mark.parametrize("seed", range(4))
def test_against_reference_loop(seed):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(5, 40)), int(rng.integers(20, 200))
    qp, gp = rng.integers(0, 8, nq), rng.integers(0, 8, ng)
    qc, gc = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    d = rng.integers(0, 6, (nq, ng)).astype(np.float32)  # many ties
    cmc, ap, inp, skipped = reference(d, qp, gp, qc, gc, 10)
    for variant in (d, d.astype(np.float64), torch.from_numpy(d)):
        for chunk in (None, 1, 7):
            r = evaluate(variant, qp, gp, qc, gc, max_rank=10, chunk_size=chunk)
            assert np.allclose(r["cmc"], cmc) and math.isclose(r["mAP"], ap)
            assert math.isclose(r["mINP"], inp) and r["num_skipped"] == skipped


def test_torch_ranks_equal_numpy_ranks():
    rng = np.random.default_rng(5)
    d = rng.integers(0, 4, (6, 30)).astype(np.float32)
    rows, cols = np.nonzero(rng.random((6, 30)) < 0.3)
    assert np.array_equal(M._ranks_at_torch(torch.from_numpy(d), rows, cols),
                          M._ranks_at_numpy(d, rows, cols))
    assert np.array_equal(M._ranks_at_numpy(d.astype(np.float64), rows, cols),
                          M._ranks_at_numpy(d, rows, cols))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_matches_cpu():
    rng = np.random.default_rng(6)
    qf = rng.normal(size=(50, 16)).astype(np.float32)
    gf = rng.normal(size=(300, 16)).astype(np.float32)
    qp, gp = rng.integers(0, 10, 50), rng.integers(0, 10, 300)
    qc, gc = rng.integers(0, 4, 50), rng.integers(0, 4, 300)
    cpu = evaluate_features(qf, gf, qp, gp, qc, gc)
    gpu = evaluate_features(qf, gf, qp, gp, qc, gc, device="cuda")
    assert np.allclose(cpu["cmc"], gpu["cmc"])
    assert math.isclose(cpu["mAP"], gpu["mAP"], rel_tol=1e-5)
    d = pairwise_distance(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
    assert math.isclose(evaluate(d, qp, gp, qc, gc)["mAP"], gpu["mAP"], rel_tol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_features_chunked_equals_full_matrix(metric, monkeypatch):
    rng = np.random.default_rng(7)
    qf = rng.normal(size=(23, 8)).astype(np.float32)
    gf = rng.normal(size=(90, 8)).astype(np.float32)
    qp, gp = rng.integers(0, 6, 23), rng.integers(0, 6, 90)
    qc, gc = rng.integers(0, 3, 23), rng.integers(0, 3, 90)
    full = evaluate(pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric).numpy(),
                    qp, gp, qc, gc)
    shapes = []
    real = M.pairwise_distance

    def spy(a, b, *args, **kw):
        shapes.append(tuple(a.shape))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(M, "pairwise_distance", spy)
    r = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, chunk_size=5)
    assert max(s[0] for s in shapes) == 5 and sum(s[0] for s in shapes) == 23
    assert np.allclose(r["cmc"], full["cmc"]) and math.isclose(r["mAP"], full["mAP"], rel_tol=1e-6)
    d = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric).numpy()
    if metric == "euclidean":
        expected = np.sqrt(((qf[:, None] - gf[None]) ** 2).sum(-1))
    else:
        qn = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        expected = 1 - qn @ gn.T
    assert np.allclose(d, expected, atol=1e-4)


def test_label_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="query pids"):
        evaluate(np.zeros((2, 3), np.float32), [1], [1, 2, 3], [0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((1, 2), np.nan, np.float32), [1], [1, 2], [0], [1, 1])


class _AsymmetricNet(nn.Module):
    """Embedding = column means of the first channel: a flip reverses it."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.bn = nn.BatchNorm1d(1)  # to check the train/eval mode is restored

    def forward(self, x, return_features=False):
        emb = x[:, 0].mean(dim=1) * self.scale  # (B, W)
        return {"embedding": emb, "logits": emb} if return_features else emb


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 4, 3, generator=g)
    return [(x[:3], torch.tensor([1, 2, 3]), torch.tensor([0, 1, 0])),
            (x[3:], torch.tensor([4, 5]), torch.tensor([1, 1]), torch.arange(2))], x


def test_extract_features_flip_normalize_and_mode():
    model = _AsymmetricNet().train()
    loader, x = _loader()
    f, pids, cams = extract_features(model, loader, "cpu", flip=False)
    assert model.training  # restored
    expected = x[:, 0].mean(1)
    assert torch.allclose(f, expected) and pids.tolist() == [1, 2, 3, 4, 5]
    assert cams.tolist() == [0, 1, 0, 1, 1]
    f_flip, _, _ = extract_features(model, loader, "cpu", flip=True)
    assert torch.allclose(f_flip, (expected + expected.flip(1)) / 2)
    f_norm, _, _ = extract_features(model, loader, "cpu", flip=False, normalize=True)
    assert torch.allclose(f_norm.norm(dim=1), torch.ones(5))
    f_fn, _, _ = extract_features(None, loader, "cpu", flip=False,
                                  feature_fn=lambda im: im.mean(dim=(1, 2)))
    assert torch.allclose(f_fn, x.mean(dim=(1, 2)))
    plain = _AsymmetricNet()
    plain.forward = lambda x, return_features=False: x.mean(dim=(1, 2))  # no dict
    with pytest.raises(TypeError, match="embedding"):
        extract_features(plain, loader, "cpu")
