"""``python -m bench.supernet_ranking``: does a trained supernet rank architectures the way
stand-alone retraining does? (paper section 3.4; docs/method.md section 10)

The search-quality benchmark (:mod:`bench.search_quality`) pays for the expensive half
once: every architecture of a latency band retrained from scratch with several seeds. This
tool reuses those stand-alone results (a report it wrote, ``--report``) to score any
number of other supernets (``--searches``: search run directories, e.g. the same recipe
with other sampling options) without one more retrain: each supernet estimates every
architecture of the report (:func:`dnas.search.estimate.run_estimates`), and the tool
prints Kendall's tau-b between the estimates and the stand-alone mean validation mAP, per
supernet, beside the parameter count as a reference predictor.

Usage::

    python -m bench.supernet_ranking --report bench/results/search_quality_hard.json \\
        --searches runs/search-quality/searches/3f29e7da/s* --out bench/results/ranking_onehot.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.search_quality_report import kendall_tau, within_band_tau
from dnas.io import atomic_write_json


def read_stand_alone(report_path: Path) -> list[dict]:
    """The architectures of a search-quality report with their stand-alone mean val mAP (%)."""
    try:
        report = json.loads(report_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{report_path}: not JSON ({e})") from None
    archs = [a for a in report.get("per_arch", []) if a.get("n", 0) > 0] if isinstance(report, dict) else []
    if not archs:
        raise ValueError(f"{report_path}: no 'per_arch' entry with retrain results (a search-quality report?)")
    return [{"indices": json.loads(a["arch"]), "key": a["arch"], "kind": a["kind"], "params": a["params"],
             "val_mean": a["val_mean"], "test_mean": a["test_mean"]} for a in archs]


def report_bands(report_path: Path) -> list[list[str]]:
    """The architectures of each latency band of a search-quality report (its random nets
    and the searched nets of its seeds); one band of everything for an older report."""
    report = json.loads(report_path.read_text())
    rows = report.get("per_search_seed", [])
    bands = [list(dict.fromkeys(b["random"] + [r["arch"] for r in rows if r["search_seed"] in b["seeds"]]))
             for b in report.get("bands", [])]
    return bands or [[a["arch"] for a in report["per_arch"]]]


def rank_supernet(run_dir: Path, archs: list[dict], bn_batches: int, finetune_steps: int = 0,
                  finetune_lr: float = 0.02) -> dict:
    """One supernet's estimate of every arch and its tau against the stand-alone val means."""
    from dnas.search.estimate import run_estimates

    t0 = time.time()
    maps = [100 * m for m in run_estimates(run_dir, [a["indices"] for a in archs], bn_batches=bn_batches,
                                           finetune_steps=finetune_steps, finetune_lr=finetune_lr)]
    tau, p = kendall_tau(maps, [a["val_mean"] for a in archs])
    return {"run": str(run_dir), "estimates": dict(zip((a["key"] for a in archs), maps)), "tau": tau, "p": p,
            "seconds": time.time() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--report", required=True, type=Path, help="a search-quality report (RESULTS.json)")
    p.add_argument("--searches", required=True, nargs="+", type=Path, help="search run directories")
    p.add_argument("--bn-batches", type=int, default=10, help="training batches for the BN re-estimate")
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="train each subnet alone this many SGD steps before its estimate (0: inherited weights)")
    p.add_argument("--finetune-lr", type=float, default=0.02)
    p.add_argument("--out", type=Path, help="write the estimates and taus as JSON")
    args = p.parse_args(argv)
    if args.out is not None and args.out.resolve() == args.report.resolve():
        print(f"error: --out {args.out} is the --report it reads; write the ranking elsewhere", file=sys.stderr)
        return 2
    try:
        archs = read_stand_alone(args.report)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for d in args.searches:
        if not (d / "checkpoint-last.pt").is_file():
            print(f"error: {d}: no checkpoint-last.pt (a finished search run directory expected)", file=sys.stderr)
            return 2
    params_tau, _ = kendall_tau([a["params"] for a in archs], [a["val_mean"] for a in archs])
    print(f"{len(archs)} architectures from {args.report}; parameter count tau {params_tau:+.2f}", flush=True)
    bands, val_means = report_bands(args.report), {a["key"]: a["val_mean"] for a in archs}
    rows = []
    for d in args.searches:
        row = rank_supernet(d, archs, args.bn_batches, args.finetune_steps, args.finetune_lr)
        # the benchmark's figure: pairs within a band only (pairs across bands differ in latency)
        row["tau_within_band"], row["n_within_band"] = within_band_tau(bands, row["estimates"], val_means)
        rows.append(row)
        print(f"  {d}: tau {row['tau']:+.2f} (p {row['p']:.2f}), within bands {row['tau_within_band']:+.2f} "
              f"(n={row['n_within_band']}) in {row['seconds']:.0f} s", flush=True)
    taus = [r["tau"] for r in rows]
    spread = f" +- {statistics.stdev(taus):.2f}" if len(taus) > 1 else ""
    print(f"mean tau {statistics.fmean(taus):+.2f}{spread} over {len(taus)} supernets; within bands "
          f"{statistics.fmean(r['tau_within_band'] for r in rows):+.2f}", flush=True)
    if args.out:
        atomic_write_json(args.out, {"report": str(args.report), "bn_batches": args.bn_batches,
                                     "finetune_steps": args.finetune_steps, "finetune_lr": args.finetune_lr,
                                     "params_tau": params_tau, "supernets": rows,
                                     "archs": [{k: a[k] for k in ("key", "kind", "params", "val_mean")}
                                               for a in archs]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
