"""``python -m bench.search_run``: a short ``dnas-search`` with a hard latency target,
timed step by step.

Runs :func:`dnas.search.run.run_search` (the real loop: data loaders on the synthetic
Re-ID set, weight and architecture phases, checkpoints, plots, held-out evaluation)
for about ``--steps`` steps (whole epochs, at least 2), with ``Searcher.train_step``
wrapped in this process to time every step (synchronised on CUDA) and the CUDA peak
memory taken over the run. The latency loss is ``hard`` with a target of
``--target-frac`` times the expected latency of the initial (uniform) architecture
distribution, so the distribution has to move: ``search.json`` records the expected
latency before and after (and per epoch), the target, the step times per phase, the
peak memory and the latency cost used.

The cost is ``--table`` (default ``auto`` without profiling: a complete table of the
space for this device kind if one is shipped, else the MACs proxy, which has the same
keys and so the same compute in the architecture step; an incomplete table is never
used). ``search.json`` says which (``latency_source``).

Usage (GPU)::

    python -m bench.search_run --space xlarge --batch 256 --steps 50 --out runs/bench-search
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.search_run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run directory (search.json goes here)")
    p.add_argument("--space", default="xlarge")
    p.add_argument("--table", default="auto", help="latency table path, or auto (default: a complete shipped "
                   "table of the space for this device kind, else the MACs proxy; never profiles)")
    p.add_argument("--batch", type=int, default=256, help="p x 4")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=50, help="about this many steps (whole epochs, at least 2)")
    p.add_argument("--target-frac", type=float, default=0.8, help="target = frac x initial expected latency")
    p.add_argument("--lam", type=float, default=5.0, help="lambda of the hard latency loss")
    p.add_argument("--a-lr", type=float, default=0.05, help="Adam lr of the architecture parameters")
    p.add_argument("--ids", type=int, default=200, help="synthetic training identities (200 x 20 images: "
                   "13 steps per epoch at batch 256)")
    p.add_argument("--images-per-id", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--smoke", action="store_true", help="tiny space on CPU, batch 16, a few steps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.space, args.batch, args.steps, args.ids, args.images_per_id, args.workers = "tiny", 16, 12, 20, 12, 0
        args.device = "cpu"
    old_threads = torch.get_num_threads()
    try:
        return _run(args)
    finally:
        torch.set_num_threads(old_threads)


def _run(args: argparse.Namespace) -> int:
    from dnas.latency.auto import resolve_latency_cost
    from dnas.models import Supernet
    from dnas.runtime import Runtime
    from dnas.search import loop
    from dnas.search.config import SearchConfig
    from dnas.search.run import build_search_data, run_search
    from dnas.space import load_space

    space = load_space(args.space)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if not cuda:
        torch.set_num_threads(1)  # OpenMP threads contend badly on a shared CPU
    cfg = SearchConfig(supernet=args.space, data="synthetic", height=args.height, width=args.width, epochs=1,
                       p=args.batch // 4, k=4, workers=args.workers, seed=0, a_lr=args.a_lr, warmup_epochs=0,
                       latency_table=args.table, latency_profile_budget_s=0, latency_loss="hard",
                       latency_lambda=args.lam, device="cuda" if cuda else "cpu", amp=True, channels_last=True,
                       checkpoint_every=0, eval_every=10_000, eval_max_queries=200, synthetic_ids=args.ids,
                       synthetic_images_per_id=args.images_per_id, w_schedule="cosine")
    # the cost the search will resolve to (the same call, never profiling)
    cost = resolve_latency_cost(args.table, cfg.load_space(), cfg.device, supernet=args.space, batch=cfg.batch_size,
                                amp=cfg.amp, channels_last=cfg.channels_last, bnneck=cfg.bnneck, budget_s=0,
                                progress=False)
    if cost.model is None:
        raise SystemExit("search_run: needs a latency cost (--table none has none)")
    # initial expected latency (logits start at zero: the uniform distribution)
    probe = Supernet(space, num_classes=10, bnneck=cfg.bnneck)
    lat_model = cost.model
    with torch.no_grad():
        before = float(lat_model.expected_ms(probe.probs_choice()))
    lo, hi = lat_model.bounds_ms()
    target = max(args.target_frac * before, lo * 1.02)
    cfg = dataclasses.replace(cfg, latency_target_ms=round(target, 6))
    t0 = time.perf_counter()
    data = build_search_data(cfg, Runtime(torch.device(cfg.device)))
    per_epoch = data.train_sampler.num_batches(0) + data.arch_sampler.num_batches(0)
    cfg = dataclasses.replace(cfg, epochs=max(2, math.ceil(args.steps / max(per_epoch, 1))))
    data_s = time.perf_counter() - t0
    del data, probe

    times: dict[str, list[float]] = {"weights": [], "arch": []}
    own = "train_step" in vars(loop.Searcher)  # the method may be the engine's, inherited
    original = loop.Searcher.train_step

    def timed_step(self, batch, phase):  # wraps the real step: sync, time, sync
        if cuda:
            torch.cuda.synchronize()
        s = time.perf_counter()
        result = original(self, batch, phase)
        if cuda:
            torch.cuda.synchronize()
        times.setdefault(phase, []).append((time.perf_counter() - s) * 1e3)
        return result

    out = Path(args.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loop.Searcher.train_step = timed_step
    t0 = time.perf_counter()
    try:
        run_search(cfg, out / "run", progress=False)
    finally:
        if own:
            loop.Searcher.train_step = original
        else:
            del loop.Searcher.train_step
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    rows = _metrics(out / "run" / "metrics.csv")
    after = rows[-1].get("expected_latency_ms") if rows else None
    steps = len(times["weights"]) + len(times["arch"])

    def stats(v: list[float]) -> dict:
        return {"n": len(v), "median_ms": statistics.median(v) if v else None,
                "median_after_first_epoch_ms": statistics.median(v[len(v) // max(cfg.epochs, 1):]) if v else None}

    report = {
        "space": space.name, "table": cost.table.source, "latency_source": cost.source, "latency_note": cost.note,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__, "batch": args.batch, "resolution": [args.height or space.input_size[1],
                                                                        args.width or space.input_size[2]],
        "amp_bf16": cuda and cfg.amp, "channels_last": cuda and cfg.channels_last, "epochs": cfg.epochs,
        "steps": steps, "wall_s": wall, "data_prep_s": data_s, "wall_per_step_ms": wall * 1e3 / max(steps, 1),
        "weights_step": stats(times["weights"]), "arch_step": stats(times["arch"]), "peak_mib": peak,
        "latency_loss": {"kind": "hard", "lam": args.lam, "target_ms": target, "a_lr": args.a_lr},
        "expected_latency_ms": {"before_uniform": before, "after": after, "target": target,
                                "space_min_arch": lo, "space_max_arch": hi,
                                "per_epoch": [r.get("expected_latency_ms") for r in rows],
                                "argmax_per_epoch": [r.get("argmax_latency_ms") for r in rows]},
        "moved_toward_target": after is not None and abs(after - target) < abs(before - target),
        "final_metrics": rows[-1] if rows else {},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "search.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"search_run: {steps} steps in {wall:.0f}s; weight step {report['weights_step']['median_ms']:.1f} ms, "
          f"arch step {report['arch_step']['median_ms'] or float('nan'):.1f} ms, peak "
          f"{'-' if peak is None else f'{peak:.0f} MiB'}; expected latency {before:.4g} -> {after} ms "
          f"(target {target:.4g})")
    return 0


def _metrics(path: Path) -> list[dict]:
    from dnas.runlog import read_csv_rows

    out = []
    for r in read_csv_rows(path):
        row = {}
        for k, v in r.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                row[k] = v
        out.append(row)
    return out


if __name__ == "__main__":
    sys.exit(main())
