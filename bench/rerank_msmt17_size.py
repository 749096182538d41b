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
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> dict:
    import logging

    import numpy as np
    import torch

    from dnas.reid import evaluate_features

    rng = np.random.default_rng(args.seed)
    qf = torch.from_numpy(rng.standard_normal((args.queries, args.dim), dtype=np.float32))
    gf = torch.from_numpy(rng.standard_normal((args.gallery, args.dim), dtype=np.float32))
    q_pids = rng.integers(0, args.ids, args.queries)
    g_pids = rng.integers(0, args.ids, args.gallery)
    if args.clustered:  # identity centres plus noise: full k-reciprocal sets, a denser V
        centres = torch.from_numpy(rng.standard_normal((args.ids, args.dim), dtype=np.float32))
        qf = centres[q_pids] + args.clustered * qf
        gf = centres[g_pids] + args.clustered * gf
    q_cams = rng.integers(0, args.cams, args.queries)
    g_cams = rng.integers(0, args.cams, args.gallery)
    if args.device.startswith("cuda"):
        qf, gf = qf.to(args.device), gf.to(args.device)
        torch.cuda.reset_peak_memory_stats()
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(message)s")
    logging.getLogger("dnas.reid.rerank").setLevel(logging.DEBUG)  # stage times on stderr
    baseline = _rss_mib()
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=False, help="JSON file to write")
    ap.add_argument("--queries", type=int, default=11659)
    ap.add_argument("--gallery", type=int, default=82161)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ids", type=int, default=3060)
    ap.add_argument("--cams", type=int, default=15)
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--lambda-value", type=float, default=0.3)
    ap.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clustered", type=float, default=0.0, metavar="SPREAD",
                    help="features = identity centre + SPREAD x noise (default 0: pure noise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if not args.out:
        ap.error("--out is required")
    cmd = [sys.executable, __file__, "--child"] + [a for a in (argv or sys.argv[1:]) if a != "--child"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr: the stage times
    if proc.returncode != 0:
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    n = args.queries + args.gallery
    result.update(queries=args.queries, gallery=args.gallery, dim=args.dim, k1=args.k1, k2=args.k2,
                  lambda_value=args.lambda_value, clustered=args.clustered, metric=args.metric, device=args.device,
                  reference_dense_matrix_gib=round(n * n * 4 / 2**30, 2),
                  cpu_count=os.cpu_count(), python=platform.python_version())
    from dnas.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
