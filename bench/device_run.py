"""``python -m bench.device_run``: the GPU session's whole run, in time-boxed steps, packed.

The first GPU run of the toolkit (issue 16) has 15 minutes of device time in all,
machine start and hand-back included, at most 10 minutes a call. Mode ``run`` (one
call, default budget :data:`RUN_BUDGET_S`) does, in order:

1. ``preflight``: ``nvidia-smi``, versions, ``torch.cuda``, a tiny CUDA op (:mod:`bench.preflight`);
   the run stops when it fails;
2. ``gpu_tests``: ``pytest -m gpu`` (the CUDA-graph timing, a CUDA profile and
   validate of ``tiny``, the CUDA evaluation);
3. ``bench_core``: ``python -m bench.run --what supernet,arch,dcs,timm`` on xlarge
   (search step vs the widest static net, time and peak memory; arch step vs weight
   step; DCS overhead; timm parity) at 256x128, batch 256, bf16, channels_last;
4. ``search``: ``python -m bench.search_run``: ~50 steps of the xlarge search at
   256x128, batch 256, bf16 on the synthetic set with a hard latency target (step
   times, peak memory, expected latency before/after);
5. ``table``: as much of the xlarge batch-64 bf16 latency table as the time left
   allows (``dnas-latency profile --time-limit``): complete, or an incomplete table
   ``NAME.partial.csv`` that the next run continues;
6. ``validate``: only when the table is complete and time is left.

Mode ``continue`` (a second call, default budget :data:`CONTINUE_BUDGET_S`): preflight,
then the table from where it stopped, then its validation (calibration stored).

Every step has its own time box (``STEPS``) and is not started when the time left in the
overall budget is below its minimum (``pending``); a step past its box gets SIGINT
(a profile writes its incomplete table on it), then SIGKILL. After every step, and on
any exit, everything is packed into ``--out`` (at most 7 files): ``summary.json`` and
``summary.md`` (each step: status, seconds, time box; the table's progress; the
headline figures), ``results_<mode>.tar.gz`` (paths relative to the repository root:
``latency_tables/<tag>_*``, ``bench/results/<tag>/...``), and ``bench.json``,
``bench.md``, ``search.json``, ``preflight.txt`` loose for a first look.

``--smoke`` runs the same steps on the CPU with the tiny space and tiny settings in
about a minute (the test of this script). Work files live in ``--work`` (default
``runs/device``, ignored by git); the committed results seed it, so a cold machine
continues from what the last session committed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_BUDGET_S = 480.0  # one call of at most ~8 minutes
CONTINUE_BUDGET_S = 300.0
PACK_RESERVE_S = 15.0  # kept for the last pack
KILL_GRACE_S = 20.0  # after SIGINT, before SIGKILL


@dataclass
class Step:
    """One time-boxed command. ``box_s``: its own limit; ``min_s``: not started with less left."""

    name: str
    box_s: float
    min_s: float
    argv: list[str]
    what: str


@dataclass
class StepResult:
    name: str
    what: str
    status: str  # ok | failed | timeout | partial | skipped | pending | interrupted
    seconds: float = 0.0
    box_s: float = 0.0
    rc: int | None = None
    log: str | None = None
    note: str = ""


@dataclass
class Settings:
    """What the steps run with (GPU defaults; :func:`smoke_settings` for the CPU check)."""

    device: str = "cuda"
    table_space: str = "xlarge"
    table_batch: int = 64
    dtype: str = "bf16"
    profile_args: list[str] = field(default_factory=lambda: ["--channels-last", "--passes", "3", "--windows", "5",
                                                            "--window-ms", "1", "--warmup", "2"])
    validate_archs: int = 100
    bench_args: list[str] = field(default_factory=lambda: ["--spaces", "xlarge", "--space", "xlarge"])
    search_args: list[str] = field(default_factory=lambda: ["--space", "xlarge", "--batch", "256", "--steps", "50",
                                                           "--ids", "200", "--images-per-id", "20", "--workers", "8"])
    tests: list[str] = field(default_factory=lambda: ["tests"])
    boxes: dict = field(default_factory=lambda: {"preflight": (60, 15), "gpu_tests": (90, 30), "bench_core": (180, 60),
                                                 "search": (150, 60), "table": (1e9, 45), "validate": (120, 45)})
    smoke: bool = False


def smoke_settings() -> Settings:
    return Settings(device="cpu", table_space="tiny", table_batch=8, dtype="fp32",
                    profile_args=["--passes", "2", "--windows", "1", "--window-ms", "0.5", "--warmup", "1"],
                    validate_archs=6, bench_args=["--smoke"], search_args=["--smoke"],
                    tests=["tests/test_latency_keys_table.py"],
                    boxes={"preflight": (30, 5), "gpu_tests": (60, 10), "bench_core": (90, 10), "search": (60, 10),
                           "table": (1e9, 5), "validate": (60, 5)}, smoke=True)


def table_name(tag: str, s: Settings) -> str:
    """``h200_fbnetv2_xlarge_b64_bf16``: the name the GPU recipes in ``search/`` use."""
    from dnas.space import load_space

    return f"{tag}_{load_space(s.table_space).name}_b{s.table_batch}_{s.dtype}"


class DeviceRun:
    """The steps of one mode, the clock, the work folder and the packing."""

    def __init__(self, mode: str, out: Path, work: Path, tag: str, budget: float, s: Settings,
                 table_limit_s: float | None = None):
        self.mode, self.out, self.work, self.tag, self.budget, self.s = mode, out, work, tag, budget, s
        self.table_limit_s = table_limit_s
        self.start = time.monotonic()
        self.results: list[StepResult] = []
        self.py = sys.executable
        self.res_dir = f"bench/results/{tag}"
        self.name = table_name(tag, s)
        self.table = work / "tables" / self.name
        self.logs = work / "logs" / mode
        for d in (out, work / "tables", work / "bench", work / "search", self.logs):
            d.mkdir(parents=True, exist_ok=True)

    # -- clock and state --------------------------------------------------------
    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def seed(self) -> None:
        """Copy the committed results (this tag's tables, bench.json, search.json) into the work folder."""
        for f in sorted((ROOT / "latency_tables").glob(f"{self.tag}_*")):
            if not (self.work / "tables" / f.name).exists():
                shutil.copy2(f, self.work / "tables" / f.name)
        for sub, name in (("bench", "bench.json"), ("bench", "bench.md"), ("search", "search.json")):
            src = ROOT / self.res_dir / sub / name
            if src.is_file() and not (self.work / sub / name).exists():
                shutil.copy2(src, self.work / sub / name)

    def table_state(self) -> dict:
        """``complete`` / ``partial`` / ``none`` and the progress of this run's table."""
        from dnas.latency.table import LatencyTable, partial_paths, table_paths

        if table_paths(self.table)[0].is_file():
            t = LatencyTable.load(self.table)
            return {"state": "complete", "path": str(table_paths(self.table)[0]), **t.progress(),
                    "validated": (self.work / "tables" / f"{self.name}.validate.json").is_file(),
                    "calibrated": t.calibration is not None}
        if partial_paths(self.table)[0].is_file():
            t = LatencyTable.load(self.table, allow_incomplete=True)
            return {"state": "partial", "path": str(partial_paths(self.table)[0]), **t.progress(),
                    "continue": t.continue_command(f"latency_tables/{self.name}")}
        return {"state": "none"}

    # -- running ----------------------------------------------------------------
    def run_step(self, step: Step) -> StepResult:
        left = self.left() - PACK_RESERVE_S
        box = min(step.box_s, left)
        if box < step.min_s:
            r = StepResult(step.name, step.what, "pending", box_s=round(max(box, 0), 1),
                           note=f"{max(left, 0):.0f} s left, needs >= {step.min_s:.0f} s: the next run")
            return self._record(r)
        log_path = self.logs / f"{step.name}.log"
        limit = max(box - 25, 1) if self.table_limit_s is None else min(max(box - 25, 1), self.table_limit_s)
        argv = [a.replace("{BOX}", f"{limit:g}") for a in step.argv]
        print(f"[device_run +{time.monotonic() - self.start:.0f}s] {step.name}: start (box {box:.0f} s): "
              f"{' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        with log_path.open("w") as log:
            # its own process group (same session): SIGINT reaches the step and its workers
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, process_group=0,
                                    env=self.env())
            timed_out = False
            try:
                rc = proc.wait(timeout=box)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = _stop(proc)
            except KeyboardInterrupt:  # the run itself is stopped: stop the step first, record it
                rc = _stop(proc)
                self.results.append(StepResult(step.name, step.what, "interrupted", round(time.monotonic() - t0, 1),
                                               round(box, 1), rc, str(log_path.relative_to(self.work)),
                                               _tail(log_path)))
                raise
        seconds = time.monotonic() - t0
        status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
        note = "" if status == "ok" else _tail(log_path)
        r = StepResult(step.name, step.what, status, round(seconds, 1), round(box, 1), rc,
                       str(log_path.relative_to(self.work)), note)
        return self._record(r)

    def env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", DNAS_CACHE=str(self.work / "cache"))
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def skip(self, name: str, what: str, why: str) -> StepResult:
        return self._record(StepResult(name, what, "skipped", note=why))

    def _record(self, r: StepResult) -> StepResult:
        self.results.append(r)
        print(f"[device_run +{time.monotonic() - self.start:.0f}s] {r.name}: {r.status} after {r.seconds:.0f} s"
              + (f" ({r.note.splitlines()[-1][:200]})" if r.note else ""), flush=True)
        self.pack()
        return r

    # -- the steps ----------------------------------------------------------------
    def step(self, name: str, argv: list[str], what: str) -> Step:
        box, least = self.s.boxes[name]
        return Step(name, float(box), float(least), argv, what)

    def preflight(self) -> bool:
        r = self.run_step(self.step("preflight", [self.py, "-m", "bench.preflight", "--device", self.s.device],
                                    "versions, nvidia-smi, torch.cuda, a tiny op on the device"))
        if (self.logs / "preflight.log").is_file():
            shutil.copy2(self.logs / "preflight.log", self.work / "preflight.txt")
            self.pack()
        return r.status == "ok"

    def gpu_tests(self) -> None:
        self.run_step(self.step("gpu_tests", [self.py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                                              "--continue-on-collection-errors", *self.s.tests],
                                "pytest -m gpu"))

    def bench_core(self) -> None:
        self.run_step(self.step("bench_core", [self.py, "-m", "bench.run", "--what", "supernet,arch,dcs,timm",
                                               "--resume", *self.s.bench_args, "--out", str(self.work / "bench")],
                                "search step vs widest static net, arch vs weight step, DCS overhead, timm parity"))

    def bench_complete(self) -> bool:
        """Every item of ``bench_core`` is in ``bench.json`` with status ok."""
        from bench.report import load_report

        ok = {k.split("/")[0] for k, r in load_report(self.work / "bench")["results"].items() if r["status"] == "ok"}
        return {"supernet", "arch", "dcs", "timm"} <= ok

    def search(self) -> None:
        if (self.work / "search" / "search.json").is_file():
            self.skip("search", "short latency-targeted search", "search.json from an earlier run")
            return
        self.run_step(self.step("search", [self.py, "-m", "bench.search_run", *self.s.search_args,
                                           "--out", str(self.work / "search")],
                                "~50 search steps with a hard latency target"))

    def profile(self, reserve_s: float = 0.0) -> None:
        """The table, leaving ``reserve_s`` for the validation when it could still fit."""
        what = f"latency table {self.name} (complete or continued later)"
        if self.table_state()["state"] == "complete":
            self.skip("table", what, "complete already")
            return
        name, (box, least) = "table", self.s.boxes["table"]
        box = min(box, self.left() - PACK_RESERVE_S - reserve_s)
        argv = [self.py, "-m", "dnas.cli.latency", "profile", "--supernet", self.s.table_space,
                "--device", self.s.device, "--batch", str(self.s.table_batch), "--dtype", self.s.dtype,
                *self.s.profile_args, "--checkpoint-every", "15", "--no-progress", "--time-limit", "{BOX}",
                "--out", str(self.table)]
        r = self.run_step(Step(name, max(box, 0.0), float(least), argv, what))
        state = self.table_state()
        if r.status == "ok" and state["state"] == "partial":
            r.status = "partial"
        if state["state"] != "none":
            r.note = (f"{state['measured']} of {state['total']} entries, {100 * state['fraction']:.1f}% of the "
                      f"measurements" + (f"; continue: {state['continue']}" if state.get("continue") else "")
                      + (f"\n{r.note}" if r.note and r.status not in ("ok", "partial") else ""))
        self.pack()

    def validate(self) -> None:
        what = f"validate {self.name} ({self.s.validate_archs} archs + min + max, calibration stored)"
        state = self.table_state()
        if state["state"] != "complete":
            self.skip("validate", what, "the table is not complete yet")
            return
        report = self.work / "tables" / f"{self.name}.validate.json"
        if report.is_file():
            self.skip("validate", what, "validated already")
            return
        self.run_step(self.step("validate", [
            self.py, "-m", "dnas.cli.latency", "validate", "--supernet", self.s.table_space, "--table",
            str(self.table) + ".csv", "--archs", str(self.s.validate_archs), "--passes", "2", "--save-calibration",
            "--no-progress", "--out", str(report), "--plot", str(report.with_suffix(".png"))], what))

    # -- packing --------------------------------------------------------------------
    def summary(self) -> dict:
        return {"mode": self.mode, "tag": self.tag, "smoke": self.s.smoke, "budget_s": self.budget,
                "elapsed_s": round(time.monotonic() - self.start, 1), "settings": asdict(self.s),
                "steps": [asdict(r) for r in self.results], "table": self.table_state(),
                "headline": _headline(self.work)}

    def pack(self) -> None:
        """Write the summary and the tarball into ``out`` (cheap: called after every step)."""
        from bench.device_report import summary_markdown

        data = self.summary()
        (self.out / "summary.json").write_text(json.dumps(data, indent=2, default=str))
        (self.out / "summary.md").write_text(summary_markdown(data))
        stage = Path(tempfile.mkdtemp(prefix="device-pack-"))
        try:
            res = stage / self.res_dir
            (stage / "latency_tables").mkdir(parents=True)
            for f in (self.work / "tables").glob(f"{self.tag}_*"):
                shutil.copy2(f, stage / "latency_tables" / f.name)
            _copy(self.work / "bench", res / "bench", ("bench.json", "bench.md", "profile_*.txt"))
            _copy(self.work / "search", res / "search", ("search.json",))
            _copy(self.work / "search" / "run", res / "search", ("metrics.csv", "config.yaml", "final_arch.yaml",
                                                                  "arch_history.csv", "summary.json"))
            _copy(self.work / "search" / "run" / "plots", res / "search" / "plots", ("*.png",))
            _copy(self.logs, res / "logs" / self.mode, ("*.log",))
            shutil.copy2(self.out / "summary.json", _mk(res) / f"summary_{self.mode}.json")
            shutil.copy2(self.out / "summary.md", res / f"summary_{self.mode}.md")
            tmp = self.out / f".results_{self.mode}.tar.gz"
            with tarfile.open(tmp, "w:gz") as tar:
                for p in sorted(stage.rglob("*")):
                    if p.is_file():
                        tar.add(p, arcname=str(p.relative_to(stage)))
            tmp.replace(self.out / f"results_{self.mode}.tar.gz")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        for src in (self.work / "bench" / "bench.json", self.work / "bench" / "bench.md",
                    self.work / "search" / "search.json", self.work / "preflight.txt"):
            if src.is_file():
                shutil.copy2(src, self.out / src.name)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _copy(src: Path, dst: Path, patterns) -> None:
    if not src.is_dir():
        return
    for pattern in patterns:
        for f in src.glob(pattern):
            if f.is_file():
                shutil.copy2(f, _mk(dst) / f.name)


def _tail(path: Path, n: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def _stop(proc: subprocess.Popen) -> int:
    """SIGINT to the step's process group (a profile saves its incomplete table), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode if proc.returncode is not None else -9


def _headline(work: Path) -> dict:
    from bench.device_report import headline

    return headline(work)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.device_run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="run", choices=("run", "continue", "preflight"),
                   help="run: the whole first run; continue: the table from where it stopped, then validate it")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder whose files come back (default $OUT)")
    p.add_argument("--work", default=str(ROOT / "runs" / "device"), help="work folder (default runs/device)")
    p.add_argument("--tag", default="h200", help="device tag of the table names (default h200)")
    p.add_argument("--budget", type=float, help=f"seconds in all (default {RUN_BUDGET_S:g} for run, "
                   f"{CONTINUE_BUDGET_S:g} for continue)")
    p.add_argument("--smoke", action="store_true", help="the same steps on the CPU, tiny space and settings")
    p.add_argument("--table-space", help="space of the table steps (default xlarge; tiny with --smoke): later "
                   "sessions fill the other tables with continue --table-space fbnetv2 ...")
    p.add_argument("--table-batch", type=int, help="batch of the table steps (default 64; 8 with --smoke)")
    p.add_argument("--table-limit", type=float, help="at most this many seconds of table profiling (default: "
                   "all the time left)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.out:
        print("device_run: --out (or $OUT) is required", file=sys.stderr)
        return 2
    s = smoke_settings() if args.smoke else Settings()
    if args.table_space:
        s.table_space = args.table_space
    if args.table_batch:
        s.table_batch = args.table_batch
    budget = args.budget or (CONTINUE_BUDGET_S if args.mode == "continue" else RUN_BUDGET_S)
    run = DeviceRun(args.mode, Path(args.out), Path(args.work), args.tag, budget, s, args.table_limit)

    def on_term(signum, frame):  # the caller's time limit: pack what there is, then stop
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        run.seed()
        if not run.preflight():
            print("device_run: preflight failed; see preflight.txt", flush=True)
            return 1
        if args.mode == "run":
            run.gpu_tests()
            run.bench_core()
            run.search()
            run.profile()
            run.validate()
        elif args.mode == "continue":
            run.profile(reserve_s=s.boxes["validate"][1] + 30)
            run.validate()
            if not run.bench_complete():  # the first run's benchmarks were cut short: the rest
                run.bench_core()
    except KeyboardInterrupt:
        print("device_run: interrupted; packing what there is", flush=True)
    finally:
        run.pack()
    bad = [r.name for r in run.results if r.status in ("failed", "timeout", "interrupted")]
    print(f"device_run: {args.mode} done in {time.monotonic() - run.start:.0f} s; "
          f"{', '.join(f'{r.name} {r.status}' for r in run.results)}; table {run.table_state()['state']}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
