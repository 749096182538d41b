"""``python -m bench.search_quality``: does the search find better networks than chance at
the same latency? (paper section 3.4; docs/method.md section 10)

1. ``dnas-search`` with several seeds (one recipe, ``--search-set`` overrides).
2. The searched (argmax) architectures are grouped into latency bands: a band holds the
   searched nets within ``--tolerance`` of its centre (the median of their table
   latencies); ``--random`` architectures are drawn uniformly from the space within the
   band (:func:`dnas.latency.band.sample_in_band`, prefix-stable draws, so bands that
   move a little keep their baselines).
3. Every architecture (searched and random) is retrained from scratch with
   ``dnas-retrain reid`` (the same recipe, ``--retrain-seeds`` seeds each).
4. Each search seed's supernet scores every architecture of its band
   (:func:`dnas.search.estimate.run_estimates`: one-hot validation mAP with inherited
   weights and re-estimated BN statistics), before the retrains: the estimates need the
   searches' checkpoints, and the ledger keeps them for a resume from a fresh checkout.
5. The report (:mod:`bench.search_quality_report`): per search seed the searched net's
   rank in its band by mean validation mAP (the selection split) and test mAP, the
   effect size with a 95% interval, the seed-to-seed against the between-network spread,
   and Kendall's tau between the supernet's estimate and the stand-alone validation mAP.

Everything lives in ``--work``; a finished step is never redone, so a killed benchmark
resumes where it stopped (a killed search or retrain resumes from its checkpoint).
Jobs run ``--jobs`` at a time, one thread each (``OMP_NUM_THREADS=1``).

Usage::

    python -m bench.search_quality --work runs/search-quality --results bench/results/search_quality
    python -m bench.search_quality --smoke --work /tmp/sq        # under a minute: the pipeline only
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.search_quality_report import build_report, write_report
from dnas.io import atomic_write_json, atomic_write_yaml
from dnas.latency.band import arch_key, sample_in_band
from dnas.runlog import read_csv_rows

SMOKE_DATA = ["synthetic_ids=12", "val_ids_fraction=0.34", "val_min_ids=4", "p=4"]  # 4 validation ids, 8 training
SMOKE_SEARCH = SMOKE_DATA + ["epochs=2", "warmup_epochs=1", "max_steps_per_epoch=2", "eval_max_queries=20"]
SMOKE_RETRAIN = SMOKE_DATA + ["epochs=1", "warmup_epochs=0", "max_steps_per_epoch=2", "eval_every=1",
                               "export_onnx=false"]


def _tag(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]


def _recipe_tag(recipe: str, folder: str, sets: list[str]) -> str:
    """A tag of the recipe's keys after the overrides (comments and key order do not count):
    a recipe that changes is a new set of runs, one that writes the same keys is not.
    Read as the commands read them (the strict YAML reader, ``--set`` parsing)."""
    from dnas.config import parse_overrides
    from dnas.resources import find_data_file
    from dnas.strict_yaml import read_yaml

    keys = read_yaml(find_data_file(recipe, folder, ".yaml")) or {}
    keys.update(parse_overrides(sets))
    return _tag(keys)


def _sets(pairs: list[str]) -> list[str]:
    return [a for kv in pairs for a in ("--set", kv)]


class Ledger:
    """What is finished, apart from the run directories (which hold checkpoints and are not
    kept): ``searches`` (each search's argmax and outcome), ``retrains`` (each retrain's
    last-epoch val/test mAP) and ``estimates`` (each supernet's one-hot estimates), keyed by
    run tag. Saved after every entry; given a committed ledger (``--ledger``), a fresh
    checkout resumes the benchmark without redoing what it records."""

    SECTIONS = ("searches", "retrains", "estimates")

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        for section in self.SECTIONS:
            self.data.setdefault(section, {})

    def get(self, section: str, key: str):
        return self.data[section].get(key)

    def put(self, section: str, key: str, value) -> None:
        self.data[section][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.data)


class Jobs:
    """Run shell jobs ``n`` at a time (one thread each); print one line as each ends."""

    def __init__(self, n: int, log_dir: Path):
        self.n, self.log_dir = n, log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, jobs: list[tuple[str, list[str]]], on_done=None) -> None:
        """Run ``(name, argv)`` jobs; ``on_done(name)`` after each one that succeeds."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        pending, running, failed, total, done = list(jobs), [], [], len(jobs), 0
        try:
            self._loop(pending, running, failed, total, done, env, on_done)
        finally:  # killed or interrupted: stop the runs too (each resumes from its checkpoint)
            for _, proc, _, log in running:
                proc.terminate()
                proc.wait()
                log.close()
        if failed:
            raise SystemExit("jobs failed: " + "; ".join(failed))

    def _loop(self, pending, running, failed, total, done, env, on_done) -> None:
        while pending or running:
            while pending and len(running) < self.n:
                name, argv = pending.pop(0)
                log = open(self.log_dir / f"{name.replace('/', '_')}.log", "w")
                log.write("$ " + shlex.join(argv) + "\n")
                log.flush()
                running.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                                time.time(), log))
            time.sleep(0.5)
            for item in list(running):
                name, proc, t0, log = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                done += 1
                ok = proc.returncode == 0
                print(f"  [{done}/{total}] {name}: {'done' if ok else f'FAILED (exit {proc.returncode})'} "
                      f"in {time.time() - t0:.0f} s", flush=True)
                if not ok:
                    failed.append(f"{name} (log: {Path(log.name)})")
                elif on_done is not None:
                    on_done(name)


def _run_cmd(tool: str, run_dir: Path, fresh: list[str]) -> list[str] | None:
    """The command that (re)starts a run, ``None`` when it is finished."""
    exe = [sys.executable, "-m", f"dnas.cli.{tool}"]
    if tool == "retrain":
        exe.append("reid")
    if (run_dir / ("summary.json" if tool == "search" else "final/summary.json")).is_file():
        return None
    if (run_dir / "checkpoint-last.pt").is_file():
        return exe + ["--resume", str(run_dir), "--no-progress"]
    return exe + fresh + ["--out", str(run_dir), "--overwrite", "--no-progress"]


def retrain_command(recipe: str, arch: Path, seed: int, sets: list[str], run_dir: Path) -> list[str] | None:
    """The command that (re)starts the retrain of ``arch`` with ``seed`` on the recipe's
    synthetic set in ``run_dir``; ``None`` when it is finished."""
    fresh = ["--recipe", recipe, "--arch", str(arch), "--data", "synthetic", "--seed", str(seed)] + _sets(sets)
    return _run_cmd("retrain", run_dir, fresh)


def space_and_cost(recipe: str, sets: list[str]):
    """The search space of a search recipe and its latency cost on this machine's CPU
    (the recipe's table; nothing is profiled)."""
    from dnas.config import load_config
    from dnas.latency.auto import resolve_latency_cost
    from dnas.resources import find_data_file
    from dnas.search.config import SearchConfig

    cfg = load_config(SearchConfig, find_data_file(recipe, "search", ".yaml"), overrides=sets)
    space = cfg.load_space()
    return space, resolve_latency_cost(cfg.latency_table, space, "cpu", supernet=cfg.supernet,
                                       batch=cfg.batch_size, budget_s=0, progress=False)


def run_searches(args, work: Path, jobs: Jobs, ledger: Ledger) -> dict[int, Path]:
    sets = args.search_set + (SMOKE_SEARCH if args.smoke else [])
    base = work / "searches" / _recipe_tag(args.search_recipe, "search", sets)
    dirs = {s: base / f"s{s}" for s in args.search_seeds}
    todo = []
    for s, d in dirs.items():
        if ledger.get("searches", f"{base.name}/s{s}"):
            continue
        cmd = _run_cmd("search", d, ["--recipe", args.search_recipe, "--seed", str(s)] + _sets(sets))
        if cmd:
            todo.append((f"search-{base.name}-s{s}", cmd))
    print(f"searches: {len(dirs)} seeds, {len(todo)} to run ({base})", flush=True)
    jobs.run(todo)
    base.mkdir(parents=True, exist_ok=True)  # a fresh checkout: every search may come from the ledger
    atomic_write_json(base / "recipe.json", {"recipe": args.search_recipe, "set": sets})
    return dirs


def searched_archs(dirs: dict[int, Path], arch_ms, ledger: Ledger) -> dict[int, dict]:
    """Each search's argmax indices and table latency (read from its last checkpoint once,
    then from the ledger)."""
    from dnas.search.derive_run import load_search_run

    out = {}
    for s, d in dirs.items():
        entry = f"{d.parent.name}/s{s}"
        if ledger.get("searches", entry):
            out[s] = ledger.get("searches", entry)
            continue
        net, _ = load_search_run(d, "last")
        idx = net.argmax_indices()
        summary = json.loads((d / "summary.json").read_text())
        conf = summary["found"]["confidence"]
        outcome = {"params": summary["found"]["argmax"]["params"], "macs": summary["found"]["argmax"]["macs"],
                   "entropy_mean": {a: c["entropy_mean"] for a, c in conf.items()},
                   "decided": {a: f"{c['decided']}/{c['units']}" for a, c in conf.items()},
                   "supernet_test_mAP": 100 * summary["test"]["mAP"],
                   "supernet_best_val_mAP": 100 * summary["checkpoint_best"].get("val_mAP", float("nan"))}
        out[s] = {"indices": idx, "key": arch_key(idx), "latency_ms": arch_ms(idx), "run": str(d),
                  "entry": entry, "search": outcome}
        ledger.put("searches", entry, out[s])
    return out


def group_bands(found: dict[int, dict], tolerance: float) -> list[dict]:
    """Search seeds whose latencies lie within ``tolerance`` of their median share a band."""
    order = sorted(found, key=lambda s: found[s]["latency_ms"])
    bands, current = [], []
    for s in order:
        trial = current + [s]
        centre = statistics.median(found[t]["latency_ms"] for t in trial)
        if all(abs(found[t]["latency_ms"] / centre - 1) <= tolerance for t in trial):
            current = trial
        else:
            bands.append(current)
            current = [s]
    bands.append(current)
    return [{"seeds": b, "centre_ms": statistics.median(found[t]["latency_ms"] for t in b)} for b in bands]


def write_arch(space, indices: dict, work: Path) -> Path:
    key = arch_key(indices)
    path = work / "archs" / f"{_tag(key)}.yaml"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(path, space.arch_from_indices(indices, name=f"{space.name}-{_tag(key)}"))
    return path


def arch_params(space, indices: dict) -> int:
    """Parameters without the classifier of an architecture of ``space``."""
    from dnas.export import params_without_classifier
    from dnas.models import PlainNet
    from dnas.space import SearchSpace

    return params_without_classifier(PlainNet(SearchSpace.from_dict(space.arch_from_indices(indices))))


def _retrain_result(run_dir: Path) -> dict | None:
    """The last epoch's val/test mAP (%) of a finished retrain, ``None`` if unfinished."""
    if not (run_dir / "final" / "summary.json").is_file():
        return None
    last = read_csv_rows(run_dir / "metrics.csv")[-1]
    return {"val_mAP": 100 * float(last["val_mAP"]), "test_mAP": 100 * float(last["test_mAP"])}


def run_retrains(args, work: Path, arch_files: dict[str, Path], jobs: Jobs,
                 ledger: Ledger) -> dict[str, list[dict]]:
    """Retrain every arch with every retrain seed, seed by seed (a stopped benchmark has every
    arch with the same seeds); ``{arch key: [{seed, val_mAP, test_mAP}]}`` of the finished
    retrains (with ``--report-only``, none is started)."""
    sets = args.retrain_set + (SMOKE_RETRAIN if args.smoke else [])
    base = work / "retrains" / _recipe_tag(args.retrain_recipe, "retrain", sets)
    todo, entries = [], {}
    for r in range(args.retrain_seeds):
        for key, path in arch_files.items():
            d, entry = base / f"{path.stem}-r{r}", f"{base.name}/{path.stem}-r{r}"
            entries[f"retrain-{base.name}-{path.stem}-r{r}"] = (entry, d)
            if ledger.get("retrains", entry) is None and (res := _retrain_result(d)) is not None:
                ledger.put("retrains", entry, res)  # finished before the ledger knew it
            if ledger.get("retrains", entry) is not None:
                continue
            todo.append((f"retrain-{base.name}-{path.stem}-r{r}", retrain_command(args.retrain_recipe, path, r, sets, d)))

    def record(name: str) -> None:
        entry, d = entries[name]
        ledger.put("retrains", entry, _retrain_result(d))

    print(f"retrains: {len(arch_files)} archs x {args.retrain_seeds} seeds, {len(todo)} to run ({base})", flush=True)
    if not args.report_only:
        jobs.run(todo, on_done=record)
    out: dict[str, list[dict]] = {}
    for r in range(args.retrain_seeds):
        for key, path in arch_files.items():
            res = ledger.get("retrains", f"{base.name}/{path.stem}-r{r}")
            if res is not None:
                out.setdefault(key, []).append({"seed": r, **res})
    return out


def supernet_estimates(found: dict[int, dict], archs: list[dict], ledger: Ledger) -> dict:
    """``{search seed: {arch key: one-hot val mAP (%) of that seed's supernet}}`` for every
    architecture of every band (kept in the ledger; a search whose checkpoint is gone
    keeps the estimates the ledger has)."""
    from dnas.search.estimate import run_estimates

    out = {}
    for s, info in found.items():
        cached = dict(ledger.get("estimates", info["entry"]) or {})
        need = [a for a in archs if a["key"] not in cached]
        if need and (Path(info["run"]) / "checkpoint-last.pt").is_file():
            t0 = time.time()
            maps = run_estimates(info["run"], [a["indices"] for a in need])
            cached.update({a["key"]: 100 * m for a, m in zip(need, maps)})
            ledger.put("estimates", info["entry"], cached)
            print(f"  supernet estimates of search s{s}: {len(need)} archs in {time.time() - t0:.0f} s", flush=True)
        elif need:
            print(f"  search s{s}: no checkpoint for the estimates of {len(need)} archs (not in the ledger)",
                  flush=True)
        out[s] = cached
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", required=True, help="working directory (resumable state)")
    p.add_argument("--results", help="write RESULTS.json and RESULTS.md (e.g. bench/results/search_quality)")
    p.add_argument("--ledger", help="what is finished (default WORK/ledger.json; commit one to resume elsewhere)")
    p.add_argument("--search-recipe", default="search/tiny_synthetic.yaml")
    p.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE", help="search recipe override")
    p.add_argument("--retrain-recipe", default="retrain/reid_synthetic.yaml")
    p.add_argument("--retrain-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--random", type=int, default=8, help="random architectures per latency band")
    p.add_argument("--retrain-seeds", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.03, help="relative half-width of a latency band")
    p.add_argument("--band-seed", type=int, default=0, help="draw sequence of the random architectures")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--searches-only", action="store_true", help="run (or resume) the searches and stop")
    p.add_argument("--report-only", action="store_true", help="report the retrains finished so far, start none")
    p.add_argument("--smoke", action="store_true", help="tiny settings: checks the pipeline, not the method")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the running jobs are stopped too
    if args.smoke:
        args.search_seeds, args.random, args.retrain_seeds = args.search_seeds[:1], 1, 1
    t_start = time.time()
    work = Path(args.work)
    jobs = Jobs(args.jobs, work / "logs")
    ledger = Ledger(Path(args.ledger) if args.ledger else work / "ledger.json")
    dirs = run_searches(args, work, jobs, ledger)
    if args.searches_only:
        return 0
    space, cost = space_and_cost(args.search_recipe, args.search_set + (SMOKE_SEARCH if args.smoke else []))
    found = searched_archs(dirs, cost.model.arch_ms, ledger)
    bands = group_bands(found, args.tolerance)
    searched_keys = {f["key"] for f in found.values()}
    archs: dict[str, dict] = {f["key"]: {**f, "kind": "searched"} for f in found.values()}
    for b in bands:
        drawn = sample_in_band(space, cost.model.arch_ms, b["centre_ms"], args.tolerance, args.random,
                               seed=args.band_seed, exclude=searched_keys)
        b["random"] = [arch_key(idx) for idx, _ in drawn]
        for idx, lat in drawn:
            archs.setdefault(arch_key(idx), {"indices": idx, "key": arch_key(idx), "latency_ms": lat,
                                             "kind": "random"})
        print(f"band {b['centre_ms']:.3f} ms +- {args.tolerance:.0%}: search seeds {b['seeds']}, "
              f"{len(b['random'])} random archs", flush=True)
    arch_files = {k: write_arch(space, a["indices"], work) for k, a in archs.items()}
    for a in archs.values():
        a["params"] = arch_params(space, a["indices"])
    # the estimates first: they need the searches' checkpoints (run directories are not
    # committed), the ledger keeps them for a resume from a fresh checkout
    estimates = supernet_estimates(found, list(archs.values()), ledger)
    results = run_retrains(args, work, arch_files, jobs, ledger)
    report = build_report(archs, found, bands, results, estimates, space=space)
    report["settings"] = {k: v for k, v in vars(args).items()}
    report["latency_cost"] = cost.source
    given = argv if argv is not None else sys.argv[1:]
    report["command"] = "python -m bench.search_quality " + shlex.join(a for a in given if a != "--report-only")
    report["wall_s"] = time.time() - t_start
    report["conditions"] = (f"{os.cpu_count()} CPU cores, {args.jobs} jobs at a time with OMP_NUM_THREADS=1; "
                            "wall_s counts only what this invocation ran (finished steps are reused)")
    atomic_write_json(work / "report.json", report)
    if args.results:
        write_report(report, Path(args.results))
    print("\n".join(report["summary_lines"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
