"""``python -m bench.band_spread``: can a retraining task rank the networks of one latency
band? (docs/method.md section 10; the task-choice step of :mod:`bench.search_quality`)

Draws ``--random`` architectures of a space within ``--tolerance`` of ``--latency-ms``
(the same prefix-stable draws as the search-quality benchmark, :func:`sample_in_band`),
retrains each with ``--seeds`` seeds under one Re-ID recipe (``--set`` overrides) and
reports whether they differ: per network the mean and sd of its validation and test mAP,
a one-way ANOVA over the seeds, one network's seed-to-seed sd against the sd of the
band's true means, and the correlation of a seed's validation and test deviations.
No search runs: a task is chosen on random networks alone, before any search is run on it.

Everything lives in ``--work`` (resumable: a finished retrain is never redone).

Usage::

    python -m bench.band_spread --work runs/spread --latency-ms 1.667 \\
        --retrain-recipe retrain/reid_synthetic_240.yaml --set synthetic_ids=720 \\
        --set synthetic_images_per_id=4 --results bench/results/band_spread_720x4
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from bench.search_quality import (Jobs, _recipe_tag, _retrain_result, arch_params, retrain_command, space_and_cost,
                                  write_arch)
from bench.search_quality_report import SPLITS, band_anova, per_arch_stats, seed_residual_correlation
from dnas.io import atomic_write_json, atomic_write_text


def prepare_data(recipe: str, sets: list[str]) -> None:
    """Generate the recipe's synthetic set once, before the parallel retrains read it."""
    from dnas.config import load_config
    from dnas.data.synthetic import ensure_synthetic_reid, synthetic_reid_from_recipe
    from dnas.resources import find_data_file
    from dnas.retrain.config import ReIDConfig

    cfg = load_config(ReIDConfig, find_data_file(recipe, "retrain", ".yaml"), overrides=sets)
    if getattr(cfg, "data", "") == "synthetic":
        ensure_synthetic_reid(synthetic_reid_from_recipe(cfg))


def spread_report(archs: dict[str, dict], results: dict[str, list[dict]]) -> dict:
    """Per-network statistics and, per split, the band's ANOVA and spread ratio."""
    stats = per_arch_stats(results)
    keys = [k for k in archs if len(results.get(k) or []) >= 2]
    report = {"per_arch": [{"arch": k, **archs[k], **stats[k], "runs": results[k]} for k in archs if k in stats]}
    for split in SPLITS:
        a = band_anova(results, keys, split)
        a["ratio"] = a.get("seed_to_seed_sd", math.nan) / a["true_between_sd"] if a.get("true_between_sd") else math.inf
        # retrain seeds for a net's mean to vary by at most half the true between-net sd
        a["seeds_for_half"] = math.ceil((2 * a["ratio"]) ** 2) if math.isfinite(a["ratio"]) else None
        report[f"anova_{split}"] = a
    report["seed_residual_correlation"] = seed_residual_correlation({k: results[k] for k in keys})
    return report


def summary_lines(report: dict) -> list[str]:
    lines = [f"{report['band']}: {len(report['per_arch'])} random nets, {report['seeds']} retrain seeds "
             f"({report['retrain']}); mAP in %, mean +- sd over seeds"]
    for row in sorted(report["per_arch"], key=lambda r: -r["val_mean"]):
        runs = " / ".join(f"{r['val_mAP']:.1f}" for r in row["runs"])
        lines.append(f"  {row['arch']} {row['params'] / 1e3:5.1f} k  val {row['val_mean']:5.1f} +- "
                     f"{row['val_sd']:4.1f} ({runs})  test {row['test_mean']:5.1f} +- {row['test_sd']:4.1f}")
    for split in SPLITS:
        a = report[f"anova_{split}"]
        lines.append(f"  {split}: ANOVA F {a['F']:.2f}, p {a['p']:.3g}; one net's seed-to-seed sd "
                     f"{a.get('seed_to_seed_sd', math.nan):.2f}, sd of the means {a.get('means_sd', math.nan):.2f}, "
                     f"of the true means {a['true_between_sd']:.2f} (seed sd / true sd {a['ratio']:.2f}; retrain seeds "
                     f"for a mean within half the true sd: {a['seeds_for_half'] or 'no number'})")
    r = report["seed_residual_correlation"]
    lines.append(f"  a seed's val against test deviation: r {r['r']:+.2f} over {r['n_runs']} runs")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", required=True, help="working directory (resumable state)")
    p.add_argument("--results", help="write RESULTS.json and RESULTS.md")
    p.add_argument("--search-recipe", default="search/tiny_synthetic_240.yaml",
                   help="the space and latency table of the band (its supernet and latency_table keys)")
    p.add_argument("--latency-ms", type=float, required=True, help="centre of the band")
    p.add_argument("--tolerance", type=float, default=0.03)
    p.add_argument("--random", type=int, default=8, help="random architectures in the band")
    p.add_argument("--band-seed", type=int, default=0)
    p.add_argument("--retrain-recipe", default="retrain/reid_synthetic_240.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="retrain recipe override")
    p.add_argument("--seeds", type=int, default=2, help="retrain seeds per network")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from dnas.latency.band import arch_key, sample_in_band

    t0, work = time.time(), Path(args.work)
    space, cost = space_and_cost(args.search_recipe, [])
    drawn = sample_in_band(space, cost.model.arch_ms, args.latency_ms, args.tolerance, args.random,
                           seed=args.band_seed)
    archs = {arch_key(idx): {"latency_ms": lat, "params": arch_params(space, idx), "indices": idx}
             for idx, lat in drawn}
    files = {k: write_arch(space, a["indices"], work) for k, a in archs.items()}
    prepare_data(args.retrain_recipe, args.sets)
    base = work / "retrains" / _recipe_tag(args.retrain_recipe, "retrain", args.sets)
    todo = []
    for r in range(args.seeds):
        for k, path in files.items():
            cmd = retrain_command(args.retrain_recipe, path, r, args.sets, base / f"{path.stem}-r{r}")
            if cmd is not None:
                todo.append((f"{base.name}-{path.stem}-r{r}", cmd))
    print(f"band {args.latency_ms:.3f} ms +- {args.tolerance:.0%}: {len(files)} nets x {args.seeds} seeds, "
          f"{len(todo)} retrains to run ({base})", flush=True)
    Jobs(args.jobs, work / "logs").run(todo)
    results = {k: [{"seed": r, **res} for r in range(args.seeds)
                   if (res := _retrain_result(base / f"{files[k].stem}-r{r}")) is not None] for k in files}
    report = spread_report(archs, results)
    report.update(band=f"band {args.latency_ms:.3f} ms +- {args.tolerance:.0%}", seeds=args.seeds,
                  retrain=" ".join([args.retrain_recipe] + args.sets), wall_s=time.time() - t0,
                  command="python -m bench.band_spread " + shlex.join(argv if argv is not None else sys.argv[1:]),
                  conditions=f"{os.cpu_count()} CPU cores, {args.jobs} jobs at a time with OMP_NUM_THREADS=1")
    lines = summary_lines(report)
    report["summary_lines"] = lines
    atomic_write_json(work / "spread.json", report)
    if args.results:
        atomic_write_json(Path(args.results + ".json"), report)
        atomic_write_text(Path(args.results + ".md"), f"# Band spread\n\nCommand: `{report['command']}`\n\n"
                          f"Conditions: {report['conditions']}; wall {report['wall_s'] / 60:.0f} min"
                          "\n\n```\n" + "\n".join(lines) + "\n```\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
