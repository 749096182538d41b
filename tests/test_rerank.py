"""k-reciprocal re-ranking against a straightforward dense implementation of the paper."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dnas.reid import (evaluate, evaluate_features, k_reciprocal_rerank, k_reciprocal_rerank_features,
                       pairwise_distance)


def dense_rerank(q_g, q_q, g_g, k1=20, k2=6, lam=0.3):
    """Zhong et al. 2017, step by step on the full (N+M)^2 matrices (symmetric input)."""
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    dist = full / full.max(axis=1, keepdims=True)  # original distance, row-normalised
    n = len(dist)
    rank = np.argsort(dist, axis=1)

    def reciprocal(i, k):
        return {int(j) for j in rank[i, :k + 1] if i in rank[j, :k + 1]}

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(rc & r) > 2.0 / 3.0 * len(rc):
                expanded |= rc
        cols = sorted(expanded)
        w = np.exp(-dist[i, cols])
        v[i, cols] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((nq, n))
    for i in range(nq):
        t = np.minimum(v[i][None, :], v).sum(1)
        jac[i] = 1.0 - t / (2.0 - t)
    return (jac * (1 - lam) + dist[:nq] * lam)[:, nq:]


def _features(nq, ng, dim=16, ids=None, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    if ids is None:
        return rng.standard_normal((nq, dim)).astype(np.float32), rng.standard_normal((ng, dim)).astype(np.float32)
    centres = rng.standard_normal((ids, dim))
    qp, gp = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf = centres[qp] + spread * rng.standard_normal((nq, dim))
    gf = centres[gp] + spread * rng.standard_normal((ng, dim))
    return qf.astype(np.float32), gf.astype(np.float32), qp, gp


def _dists(qf, gf, metric="euclidean"):
    q, g = torch.from_numpy(qf).double(), torch.from_numpy(gf).double()
    return [pairwise_distance(a, b, metric).numpy() for a, b in ((q, g), (q, q), (g, g))]


@pytest.mark.parametrize("nq,ng,k1,k2,seed", [(5, 30, 20, 6, 0), (12, 40, 20, 6, 1), (20, 60, 10, 3, 2),
                                              (8, 25, 5, 1, 3), (30, 90, 20, 6, 4)])
def test_matches_dense_reference(nq, ng, k1, k2, seed):
    qg, qq, gg = _dists(*_features(nq, ng, seed=seed))
    ref = dense_rerank(qg, qq, gg, k1, k2)
    got = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2)
    assert isinstance(got, np.ndarray) and got.shape == (nq, ng) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_features_path_matches_matrices_and_chunks_do_not_matter():
    qf, gf = _features(25, 70, seed=5)
    for metric in ("euclidean", "cosine"):
        qg, qq, gg = _dists(qf, gf, metric)
        ref = dense_rerank(qg, qq, gg)
        for chunk in (None, 1, 7, 200):
            got = k_reciprocal_rerank_features(qf, gf, metric, chunk_size=chunk).numpy()
            np.testing.assert_allclose(got, ref, atol=1e-5)
            np.testing.assert_array_equal(k_reciprocal_rerank(qg, qq, gg, chunk_size=chunk),
                                          k_reciprocal_rerank(qg, qq, gg, chunk_size=3))


def test_pair_budget_chunking_does_not_change_result(monkeypatch):
    import dnas.reid.rerank as R

    qg, qq, gg = _dists(*_features(20, 50, seed=6))
    full = k_reciprocal_rerank(qg, qq, gg)
    monkeypatch.setattr(R, "_PAIRS", 50)  # forces one query (and row) per chunk
    np.testing.assert_array_equal(k_reciprocal_rerank(qg, qq, gg), full)


def test_lambda_one_is_normalised_original_distance():
    qg, qq, gg = _dists(*_features(10, 40, seed=7))
    got = k_reciprocal_rerank(qg, qq, gg, lambda_value=1.0)
    row_max = np.maximum(qq.max(1), qg.max(1)) ** 2
    np.testing.assert_allclose(got, qg ** 2 / row_max[:, None], rtol=1e-5)
    np.testing.assert_array_equal(np.argsort(got, 1), np.argsort(qg, 1))


def test_torch_input_returns_tensor():
    qg, qq, gg = _dists(*_features(6, 30, seed=8))
    out = k_reciprocal_rerank(*(torch.from_numpy(a) for a in (qg, qq, gg)))
    assert torch.is_tensor(out) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), dense_rerank(qg, qq, gg), atol=1e-5)


def test_bad_arguments():
    qg, qq, gg = _dists(*_features(4, 10, seed=9))
    with pytest.raises(ValueError, match="q_q_dist"):
        k_reciprocal_rerank(qg, gg, gg)
    with pytest.raises(ValueError, match="more than"):
        k_reciprocal_rerank(qg, qq, gg, k1=20)
    with pytest.raises(ValueError, match="lambda"):
        k_reciprocal_rerank(qg, qq, gg, k1=3, lambda_value=2.0)


def test_rerank_helps_on_clustered_features():
    qf, gf, qp, gp = _features(60, 600, dim=32, ids=30, seed=10, spread=1.0)
    rng = np.random.default_rng(0)
    qc, gc = rng.integers(0, 2, 60), rng.integers(2, 4, 600)  # other cameras: every match counts
    plain = evaluate_features(qf, gf, qp, gp, qc, gc)
    reranked = evaluate_features(qf, gf, qp, gp, qc, gc, rerank=True)
    assert reranked["mAP"] > plain["mAP"] + 0.05, (plain["mAP"], reranked["mAP"])
    qg, qq, gg = _dists(qf, gf)
    dense = evaluate(k_reciprocal_rerank(qg, qq, gg), qp, gp, qc, gc)
    assert abs(dense["mAP"] - reranked["mAP"]) < 1e-4


@pytest.mark.slow
def test_mid_size_memory_bound():
    """5k x 20k features: no (N+M)^2 matrix (25k^2 floats would be 2.5 GB each)."""
    import resource
    import subprocess
    import sys

    code = ("import resource, numpy as np, torch\n"
            "from dnas.reid import rerank_feature_chunks\n"
            "rng = np.random.default_rng(0)\n"
            "qf = torch.from_numpy(rng.standard_normal((5000, 128), dtype=np.float32))\n"
            "gf = torch.from_numpy(rng.standard_normal((20000, 128), dtype=np.float32))\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "n = sum(float(d.sum()) > 0 for s, e, d in rerank_feature_chunks(qf, gf))\n"
            "print(n, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) > 0
    assert float(out[1]) < 1500, f"peak memory above baseline {out[1]} MiB"
    del resource


def test_retrain_reports_rerank_separately(tmp_path, capsys):
    """``rerank: true``: summary.json and --eval-only --rerank add re-ranked figures beside the plain ones."""
    import json

    from dnas.cli import derive as derive_cli
    from dnas.cli import retrain as retrain_cli

    arch = tmp_path / "tiny"
    assert derive_cli.main(["--supernet", "tiny", "--sample", "max", "--no-onnx", "--out", str(arch)]) == 0
    run = tmp_path / "run"
    fast = ["--set", "epochs=1", "--set", "max_steps_per_epoch=2", "--set", "warmup_epochs=0", "--no-progress",
            "--set", "eval_max_queries=30", "--set", "export_onnx=false"]
    assert retrain_cli.main(["reid", "--arch", str(arch), "--data", "synthetic", "--out", str(run), *fast,
                             "--set", "rerank=true"]) == 0
    summary = json.loads((run / "final/summary.json").read_text())
    assert set(summary["rerank"]) >= {"mAP", "rank1", "rank5", "rank10", "mINP", "method"}
    assert 0 <= summary["rerank"]["mAP"] <= 1 and summary["mAP"] == summary["test"]["mAP"]
    capsys.readouterr()
    assert retrain_cli.main(["reid", "--eval-only", str(run), "--set", "eval_max_queries=30",
                             "--set", "rerank=false"]) == 0  # the run's config.yaml says rerank: true
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert retrain_cli.main(["reid", "--eval-only", str(run), "--rerank", "--set", "eval_max_queries=30",
                             "--set", "rerank=false"]) == 0  # the flag wins
    lines = capsys.readouterr().out.strip().splitlines()
    m = json.loads(lines[-1])
    plain_line = next(i for i, line in enumerate(lines) if line.startswith("mAP "))
    assert "rerank" not in plain and lines[plain_line + 1].startswith("re-ranked (k-reciprocal): mAP")
    assert m["mAP"] == pytest.approx(plain["mAP"], abs=1e-6) == pytest.approx(summary["mAP"], abs=1e-6)
    assert m["rerank"]["mAP"] == pytest.approx(summary["rerank"]["mAP"], abs=1e-6)


def test_bench_script_small(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "rerank_msmt17_size.py"
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(script), "--out", str(out), "--queries", "40", "--gallery", "300",
                    "--dim", "16", "--ids", "20", "--clustered", "0.5"], check=True, capture_output=True)
    r = json.loads(out.read_text())
    assert r["queries"] == 40 and r["gallery"] == 300 and r["seconds"] > 0 and r["peak_rss_mib"] > 0
    assert r["mAP"] > 0.5
