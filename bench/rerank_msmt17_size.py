"""Time and peak memory of k-reciprocal re-ranking at MSMT17 size on random features.

MSMT17's test split has 11,659 queries and 82,161 gallery images; the reference
re-ranking code builds dense (N + M)^2 float32 matrices there (93,820^2 x 4 bytes = 33 GiB
each). This runs :func:`dnas.evaluation`'s re-ranked path, ``evaluate_features(...,
rerank=True)``: the re-ranked distances come one query chunk at a time from
:func:`dnas.reid.rerank_feature_chunks` and are ranked at once, so no query x gallery
matrix is held either. The work runs in a child process so its peak resident memory
(``ru_maxrss``) is its own; the baseline (interpreter, torch, the features) is measured
just before it starts. ``--queries`` / ``--gallery`` measure smaller sizes; ``--clustered SPREAD`` draws
features around identity centres (pure noise has small k-reciprocal sets, so a sparser
``V`` than real features; clustered features give full ones).

Usage:
    python bench/rerank_msmt17_size.py --out bench_rerank.json [--queries 11659 --gallery 82161]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.msmt17_size_data import random_reid_features, rss_mib, run_measured, size_parser  # noqa: E402


def child(args: argparse.Namespace) -> dict:
    import logging

    import torch

    from dnas.reid import evaluate_features

    qf, gf, q_pids, g_pids, q_cams, g_cams = random_reid_features(
        args.queries, args.gallery, args.dim, args.ids, args.cams, args.seed, args.clustered)
    if args.device.startswith("cuda"):
        qf, gf = qf.to(args.device), gf.to(args.device)
        torch.cuda.reset_peak_memory_stats()
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(message)s")
    logging.getLogger("dnas.reid.rerank").setLevel(logging.DEBUG)  # stage times on stderr
    baseline = rss_mib()
    t0 = time.perf_counter()
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=args.metric, device=args.device,
                            rerank={"k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value})
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    out = {"seconds": round(elapsed, 2), "baseline_rss_mib": round(baseline, 1),
           "peak_rss_mib": round(peak, 1), "peak_above_baseline_mib": round(peak - baseline, 1),
           "mAP": res["mAP"], "rank1": res["rank1"], "num_valid": res["num_valid"],
           "torch_threads": torch.get_num_threads()}
    if args.device.startswith("cuda"):
        out["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = size_parser(__doc__.splitlines()[0])
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--lambda-value", type=float, default=0.3)
    ap.add_argument("--clustered", type=float, default=0.0, metavar="SPREAD",
                    help="features = identity centre + SPREAD x noise (default 0: pure noise)")
    args = ap.parse_args(argv)
    n = args.queries + args.gallery
    return run_measured(ap, args, argv, __file__, child,
                        dict(k1=args.k1, k2=args.k2, lambda_value=args.lambda_value, clustered=args.clustered,
                             reference_dense_matrix_gib=round(n * n * 4 / 2**30, 2)))


if __name__ == "__main__":
    raise SystemExit(main())
