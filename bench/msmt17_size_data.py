"""Random Re-ID features at a chosen size and the process's resident memory, shared by the
MSMT17-size evaluation and re-ranking benchmarks (no data set needed)."""
from __future__ import annotations

import os


def rss_mib() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def random_reid_features(queries: int, gallery: int, dim: int, ids: int, cams: int, seed: int = 0,
                         clustered: float = 0.0):
    """``(qf, gf, q_pids, g_pids, q_cams, g_cams)``: standard-normal float32 features (or,
    with ``clustered > 0``, identity centres plus ``clustered`` times that noise) and
    uniformly drawn identities and cameras."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    qf = torch.from_numpy(rng.standard_normal((queries, dim), dtype=np.float32))
    gf = torch.from_numpy(rng.standard_normal((gallery, dim), dtype=np.float32))
    q_pids, g_pids = rng.integers(0, ids, queries), rng.integers(0, ids, gallery)
    q_cams, g_cams = rng.integers(0, cams, queries), rng.integers(0, cams, gallery)
    if clustered:  # identity centres plus noise: full k-reciprocal sets, a denser V
        centres = torch.from_numpy(rng.standard_normal((ids, dim), dtype=np.float32))
        qf, gf = centres[q_pids] + clustered * qf, centres[g_pids] + clustered * gf
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def size_parser(description: str):
    """The options both benchmarks share: sizes, metric, device, seed, ``--out``."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=False, help="JSON file to write")
    ap.add_argument("--queries", type=int, default=11659)
    ap.add_argument("--gallery", type=int, default=82161)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--ids", type=int, default=3060)
    ap.add_argument("--cams", type=int, default=15)
    ap.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return ap


def run_measured(ap, args, argv, script: str, child, extra: dict) -> int:
    """Run ``child(args)`` in a fresh process (a clean peak-memory figure), merge ``extra``
    and the environment into its result and write ``--out``."""
    import json
    import platform
    import subprocess
    import sys

    if args.child:
        print(json.dumps(child(args)))
        return 0
    if not args.out:
        ap.error("--out is required")
    cmd = [sys.executable, script, "--child"] + [a for a in (argv or sys.argv[1:]) if a != "--child"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # stderr passes through
    if proc.returncode != 0:
        return proc.returncode
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(queries=args.queries, gallery=args.gallery, dim=args.dim, ids=args.ids, cams=args.cams,
                  metric=args.metric, device=args.device, **extra, cpu_count=os.cpu_count(),
                  python=platform.python_version())
    from dnas.io import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0
