"""Time and peak memory of an MSMT17-size Re-ID evaluation on random features.

MSMT17's test split has 11,659 queries and 82,161 gallery images (3,060 identities,
15 cameras); its full float32 distance matrix would take 3.8 GB.
:func:`dnas.reid.evaluate_features` computes it chunk by chunk. The evaluation runs in
a child process so its peak resident memory (``ru_maxrss``) is its own; the baseline
(interpreter, torch, the features) is measured just before the evaluation starts.

Usage:
    python bench/eval_msmt17_size.py --out bench_eval.json [--dim 512] [--device cpu]
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
    import torch

    from dnas.reid import evaluate_features

    qf, gf, q_pids, g_pids, q_cams, g_cams = random_reid_features(
        args.queries, args.gallery, args.dim, args.ids, args.cams, args.seed, 0.0)
    baseline = rss_mib()
    t0 = time.perf_counter()
    res = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=args.metric,
                            device=args.device)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"seconds": round(elapsed, 2), "baseline_rss_mib": round(baseline, 1),
            "peak_rss_mib": round(peak, 1), "peak_above_baseline_mib": round(peak - baseline, 1),
            "mAP": res["mAP"], "rank1": res["rank1"], "num_valid": res["num_valid"],
            "num_skipped": res["num_skipped"], "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = size_parser(__doc__.splitlines()[0])
    args = ap.parse_args(argv)
    return run_measured(ap, args, argv, __file__, child,
                        dict(full_matrix_gib=round(args.queries * args.gallery * 4 / 2**30, 2)))


if __name__ == "__main__":
    raise SystemExit(main())
