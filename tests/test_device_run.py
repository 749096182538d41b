"""bench/device_run.sh (the GPU session's run) in its CPU smoke mode: every step runs and
is timed, the table is left incomplete by a time limit and a second call continues and
validates it, what comes back is at most 8 plainly named files with the results packed
relative to the repository root; a step past its time box is stopped; a budget too small
for a step leaves it pending and still packs."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bench.device_run import DeviceRun, Step, smoke_settings

ROOT = Path(__file__).resolve().parents[1]
NAME = "smoke_tiny_b8_fp32"


def _device_run(tmp_path, *args, timeout=400):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device_run.sh"), *args, "--work", str(tmp_path / "work"),
                           "--tag", "smoke"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    return proc, summary


def _members(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return set(tar.getnames())


@pytest.mark.slow
def test_smoke_run_then_continue(tmp_path):
    proc, summary = _device_run(tmp_path, "smoke", "--table-limit", "0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["name"]: r["status"] for r in summary["steps"]}
    assert status == {"preflight": "ok", "gpu_tests": "ok", "bench_core": "ok", "search": "ok", "table": "partial",
                      "validate": "skipped"}, summary["steps"]
    assert all(r["seconds"] > 0 and r["box_s"] > 0 for r in summary["steps"] if r["status"] != "skipped")
    assert summary["table"]["state"] == "partial" and "dnas-latency profile --supernet tiny" in \
        summary["table"]["continue"]
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert files == {"summary.json", "summary.md", "results_run.tar.gz", "bench.json", "bench.md", "search.json",
                     "preflight.txt"}
    md = (out / "summary.md").read_text()
    assert "| table | partial |" in md and "## benchmark targets" in md and "## search" in md
    members = _members(out / "results_run.tar.gz")
    res = "bench/results/smoke"
    assert {f"latency_tables/{NAME}.partial.csv", f"latency_tables/{NAME}.partial.meta.json",
            f"{res}/bench/bench.json", f"{res}/search/search.json", f"{res}/search/metrics.csv",
            f"{res}/summary_run.json", f"{res}/logs/run/table.log"} <= members
    bench = json.loads((out / "bench.json").read_text())
    assert {k.split("/")[0] for k, r in bench["results"].items() if r["status"] == "ok"} == \
        {"supernet", "arch", "dcs", "timm"}
    assert json.loads((out / "search.json").read_text())["steps"] > 0

    proc, summary = _device_run(tmp_path, "continue", "--smoke", "--budget", "200")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = {r["name"]: r["status"] for r in summary["steps"]}
    assert status == {"preflight": "ok", "table": "ok", "validate": "ok"}, summary["steps"]
    assert summary["table"]["state"] == "complete" and summary["table"]["validated"]
    assert summary["table"]["calibrated"]
    members = _members(tmp_path / "out" / "results_continue.tar.gz")
    assert {f"latency_tables/{NAME}.csv", f"latency_tables/{NAME}.meta.json", f"latency_tables/{NAME}.validate.json",
            f"latency_tables/{NAME}.validate.png"} <= members
    assert not any(".partial." in m for m in members)


def test_a_budget_too_small_leaves_steps_pending_and_still_packs(tmp_path):
    proc, summary = _device_run(tmp_path, "smoke", "--budget", "10", timeout=120)
    assert proc.returncode == 1 and "preflight failed" in proc.stdout
    assert [(r["name"], r["status"]) for r in summary["steps"]] == [("preflight", "pending")]
    assert "needs >=" in summary["steps"][0]["note"]
    assert (tmp_path / "out" / "results_run.tar.gz").is_file() and (tmp_path / "out" / "summary.md").is_file()


def test_a_step_past_its_time_box_is_stopped(tmp_path):
    run = DeviceRun("run", tmp_path / "out", tmp_path / "work", "smoke", 100.0, smoke_settings())
    r = run.run_step(Step("sleeper", 1.0, 0.5, [sys.executable, "-c", "import time; print('up', flush=True); "
                                                 "time.sleep(60)"], "sleeps past its box"))
    assert r.status == "timeout" and 1.0 <= r.seconds < 30
    assert "up" in (tmp_path / "work" / r.log).read_text()
    r = run.run_step(Step("quick", 30.0, 0.5, [sys.executable, "-c", "raise SystemExit(3)"], "fails"))
    assert r.status == "failed" and r.rc == 3
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [s["name"] for s in data["steps"]] == ["sleeper", "quick"]


def test_vendor_copies_the_pure_python_packages_the_device_lacks(tmp_path):
    from bench.vendor import PACKAGES, vendor

    lines = vendor(tmp_path / "vendor")
    assert len(lines) == len(PACKAGES) and all("->" in line for line in lines), lines
    assert not list((tmp_path / "vendor").rglob("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import fvcore.nn, yacs, iopath, termcolor; "
            "print(fvcore.__file__)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "vendor")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(tmp_path / "vendor")), proc.stderr[-2000:]
