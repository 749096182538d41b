"""Results of the benchmarks and their two renderings: ``bench.json`` and ``bench.md``.

A result is a dict::

    {"key": "supernet/fbnetv2_xlarge", "title": "...", "status": "ok" | "skipped" | "error",
     "figures": {"supernet_step_ms": 412.0, ...},           # every measured number
     "checks": [{"name": "...", "measured": 1.12, "op": "<=", "limit": 1.25,
                 "target": "<= 1.25", "met": true}, ...],   # targets (op "report": none)
     "notes": ["..."], "error": "..."}

``bench.json`` holds ``{"environment": {...}, "results": {key: result}}``; writing into
a directory that already has one merges by key (later runs replace earlier results of
the same key), so the GPU parts can fill one report in several calls.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

from dnas.io import atomic_write_json, atomic_write_text

OPS = {"<=": lambda v, lim: v <= lim, ">=": lambda v, lim: v >= lim}


def check(name: str, measured: float | None, op: str = "report", limit: float | None = None,
          unit: str = "") -> dict:
    """One row of the report: a measured figure against a target (``op`` ``report``: none)."""
    met = None
    if op in OPS and measured is not None and math.isfinite(measured):
        met = bool(OPS[op](measured, limit))
    shown = limit * 100 if unit == "%" and limit is not None else limit  # fractions shown as percentages
    target = "report" if op == "report" else f"{op} {shown:g}{unit}"
    return {"name": name, "measured": measured, "op": op, "limit": limit, "target": target, "met": met,
            "unit": unit}


def result(key: str, title: str, figures: dict | None = None, checks: Iterable[dict] = (),
           notes: Iterable[str] = (), status: str = "ok", error: str | None = None) -> dict:
    out = {"key": key, "title": title, "status": status, "figures": dict(figures or {}),
           "checks": list(checks), "notes": list(notes)}
    if error:
        out["error"] = error
    return out


def load_report(out_dir: Path) -> dict:
    path = Path(out_dir) / "bench.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            if isinstance(data.get("results"), dict):
                return data
        except ValueError:
            pass
    return {"environment": {}, "results": {}}


def write_report(out_dir: str | Path, environment: dict, results: list[dict]) -> dict:
    """Merge ``results`` into ``out_dir/bench.json`` and rewrite ``bench.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = load_report(out_dir)
    report["environment"] = environment
    for r in results:
        r = dict(r, measured_at=environment.get("date"), device_name=environment.get("device_name"),
                 settings=environment.get("settings"))
        report["results"][r["key"]] = r
    report["summary"] = summarize(report["results"].values())
    atomic_write_json(out_dir / "bench.json", _finite(report))
    atomic_write_text(out_dir / "bench.md", markdown(report))
    return report


def summarize(results: Iterable[dict]) -> dict:
    checks = [c for r in results for c in r["checks"] if c["op"] != "report"]
    return {"targets": len(checks), "met": sum(c["met"] is True for c in checks),
            "missed": sum(c["met"] is False for c in checks)}


def _finite(obj):
    """NaN/inf become ``None`` (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if unit == "%":
            return f"{100 * v:+.1f}%"
        return f"{v:.3f}{unit}" if abs(v) < 100 else f"{v:.1f}{unit}"
    return f"{v}{unit}"


format_figure = _fmt  # a measured figure as bench.md shows it (fractions with unit "%" as percentages)


def markdown(report: dict) -> str:
    """The report as a Markdown table: what, measured, target, met?"""
    env = report["environment"]
    s = env.get("settings", {})
    lines = [f"# dnas benchmarks: {env.get('device_name', '?')}", "",
             f"- date {env.get('date')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}, driver {env.get('driver')}, timm {env.get('timm')}, "
             f"onnxruntime {env.get('onnxruntime')}",
             f"- batch {s.get('batch')}, {s.get('steps')} timed steps after {s.get('warmup')} warm-up steps "
             f"(median), amp {'bf16' if s.get('amp') and str(s.get('device', '')).startswith('cuda') else 'off'}, "
             f"channels_last {s.get('channels_last') and str(s.get('device', '')).startswith('cuda')}"]
    if s.get("smoke"):
        lines.append("- **smoke run** (tiny space, CPU): checks the scripts, not the targets")
    summ = report.get("summary", {})
    lines += [f"- targets met: {summ.get('met', 0)} of {summ.get('targets', 0)}", "",
              "| what | measured | target | met? |", "|---|---|---|---|"]
    for r in report["results"].values():
        if r["status"] != "ok":
            why = r.get("error") or "; ".join(r["notes"]) or r["status"]
            lines.append(f"| {r['title']} | {r['status']}: {why} | | |")
            continue
        for c in r["checks"]:
            met = {True: "yes", False: "**no**", None: "-"}[c["met"]]
            lines.append(f"| {r['title']}: {c['name']} | {_fmt(c['measured'], c.get('unit', ''))} | "
                         f"{c['target']} | {met} |")
    lines += ["", "## Figures", ""]
    for r in report["results"].values():
        lines.append(f"### {r['title']} (`{r['key']}`, {r['status']})")
        for k, v in r["figures"].items():
            lines.append(f"- {k}: {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)}")
        for n in r["notes"]:
            lines.append(f"- note: {n}")
        lines.append("")
    return "\n".join(lines) + "\n"
