"""The benchmark scripts in smoke mode (tiny space, CPU, seconds): they run, and their
reports have the documented structure with positive finite figures."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ("supernet", "arch", "dcs", "timm", "onnx", "compile", "profile")


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _numbers(figures):
    for key, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield key, value


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    _run(["bench.run", "--what", "all", "--smoke", "--out", str(out)], out)
    return out, json.loads((out / "bench.json").read_text()), (out / "bench.md").read_text()


def test_smoke_json_structure(smoke_report):
    _, report, _ = smoke_report
    env = report["environment"]
    for key in ("device_name", "torch", "cuda", "date", "settings"):
        assert key in env
    assert env["settings"]["smoke"] is True
    results = report["results"]
    assert {k.split("/")[0] for k in results} == set(ITEMS)
    for key, r in results.items():
        assert r["status"] in ("ok", "skipped"), (key, r.get("error"))
        assert r["key"] == key and r["title"]
        if r["status"] == "skipped":
            assert r["notes"], key  # says why (e.g. timm not installed)
            continue
        for c in r["checks"]:
            assert set(c) >= {"name", "measured", "target", "op", "met"}
            if c["op"] != "report":
                assert isinstance(c["met"], bool), (key, c)
                assert math.isfinite(c["measured"]) and c["measured"] > -1, (key, c)


def test_smoke_figures_positive_finite(smoke_report):
    _, report, _ = smoke_report
    zero_ok = ("diff", "overhead", "dcs_modules")
    for key, r in report["results"].items():
        if r["status"] != "ok":
            continue
        numbers = dict(_numbers(r["figures"]))
        assert numbers, key
        for name, value in numbers.items():
            assert math.isfinite(value), (key, name, value)
            if not any(z in name for z in zero_ok):
                assert value > 0, (key, name, value)
    sup = report["results"]["supernet/tiny"]["figures"]
    assert sup["supernet_step_ms"] > 0 and sup["static_step_ms"] > 0 and sup["time_ratio"] > 0
    assert sup["proposal_max_rel_diff"] < 2e-2  # the patched-in proposal computes the same function


def test_smoke_markdown(smoke_report):
    out, report, md = smoke_report
    assert "| what | measured | target | met? |" in md
    assert "smoke run" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "measured" not in line]
    n_checks = sum(len(r["checks"]) if r["status"] == "ok" else 1 for r in report["results"].values())
    assert len(rows) == n_checks
    assert (out / "profile_tiny.txt").is_file()


def test_report_merges_by_key(smoke_report, tmp_path):
    out, report, _ = smoke_report
    target = tmp_path / "merged"
    target.mkdir()
    (target / "bench.json").write_text(json.dumps(report))
    _run(["bench.run", "--what", "dcs", "--smoke", "--out", str(target)], target)
    merged = json.loads((target / "bench.json").read_text())
    assert set(merged["results"]) == set(report["results"])
    assert merged["results"]["dcs/tiny"]["measured_at"] >= report["results"]["dcs/tiny"]["measured_at"]


def test_search_run_smoke(tmp_path):
    _run(["bench.search_run", "--smoke", "--out", str(tmp_path)], tmp_path)
    rep = json.loads((tmp_path / "search.json").read_text())
    assert rep["steps"] > 0 and rep["weights_step"]["median_ms"] > 0 and rep["arch_step"]["median_ms"] > 0
    lat = rep["expected_latency_ms"]
    assert 0 < lat["target"] < lat["before_uniform"] and lat["after"] > 0
    assert len(lat["per_epoch"]) == rep["epochs"]


def test_percentage_targets_read_as_percentages():
    """A fraction with unit "%" (0.10) reads "<= 10%" beside a measured +17.7%, not "<= 0.1%"."""
    from bench.report import check

    row = check("overhead", 0.177, "<=", 0.10, "%")
    assert row["target"] == "<= 10%" and row["met"] is False and row["limit"] == 0.10
    assert check("ratio", 1.1, "<=", 1.25)["target"] == "<= 1.25"


def test_interleaved_timing_pairs_each_round(monkeypatch):
    """time_interleaved: a machine that slows down round by round slows every variant alike;
    the paired ratio stays the true 1.5 while the medians drift."""
    import bench.common as common
    from bench.common import BenchSettings, time_interleaved

    clock = {"t": 0.0, "calls": 0}
    monkeypatch.setattr(common.time, "perf_counter", lambda: clock["t"])
    order = []

    def step(name, cost):
        def run():
            clock["calls"] += 1
            order.append(name)
            clock["t"] += cost * (1 + 0.5 * ((clock["calls"] - 1) // 2))  # drift: slower every round
        return run

    settings = BenchSettings(device="cpu", steps=4, warmup=0)
    out = time_interleaved({"none": step("none", 0.010), "dcs": step("dcs", 0.015)}, settings, "none")
    assert out["none"]["paired_ratio"] == 1.0 and out["dcs"]["steps"] == 4
    assert out["dcs"]["paired_ratio"] == pytest.approx(1.5) and out["none"]["median_ms"] > 10
    assert order[:4] == ["none", "dcs", "dcs", "none"]  # the order rotates round by round
