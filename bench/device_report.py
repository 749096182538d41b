"""The summary of a device run (:mod:`bench.device_run`): which steps ran and how long
each took, the latency table's progress, and the headline figures against the
targets of ``bench/README.md`` (from ``bench.json`` and ``search.json``), as
``summary.json`` and a readable ``summary.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.report import format_figure


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def headline(work: Path) -> dict:
    """``{"checks": [...], "search": {...}}``: every target check of ``bench.json`` and the
    figures of ``search.json`` that say whether the search ran and moved (or ``{}``)."""
    out: dict = {}
    bench = _load(Path(work) / "bench" / "bench.json")
    if bench:
        rows = []
        for key, r in sorted(bench.get("results", {}).items()):
            if r.get("status") != "ok":
                rows.append({"key": key, "name": r.get("status"), "measured": None, "target": "",
                             "met": None, "note": (r.get("error") or "; ".join(r.get("notes", [])))[:200]})
                continue
            for c in r.get("checks", []):
                rows.append({"key": key, "name": c["name"], "measured": c["measured"], "target": c["target"],
                             "met": c["met"], "unit": c.get("unit", "")})
        out["checks"] = rows
    search = _load(Path(work) / "search" / "search.json")
    if search:
        lat = search.get("expected_latency_ms", {})
        out["search"] = {
            "steps": search.get("steps"), "wall_s": search.get("wall_s"), "data_prep_s": search.get("data_prep_s"),
            "weights_step_ms": (search.get("weights_step") or {}).get("median_after_first_epoch_ms"),
            "arch_step_ms": (search.get("arch_step") or {}).get("median_after_first_epoch_ms"),
            "peak_mib": search.get("peak_mib"), "latency_source": search.get("latency_source"),
            "expected_latency_before_ms": lat.get("before_uniform"), "after_ms": lat.get("after"),
            "target_ms": lat.get("target"), "moved_toward_target": search.get("moved_toward_target")}
    return out


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}{unit}"
    return f"{v}{unit}"


def summary_markdown(data: dict) -> str:
    """``summary.md`` of a :meth:`bench.device_run.DeviceRun.summary` dict."""
    lines = [f"# device run `{data['mode']}` ({'smoke, CPU' if data['smoke'] else 'GPU'}), tag `{data['tag']}`", "",
             f"budget {data['budget_s']:.0f} s, elapsed {data['elapsed_s']:.0f} s", "",
             "| step | status | seconds | time box s | what | note |", "|---|---|---|---|---|---|"]
    for r in data["steps"]:
        note = (r.get("note") or "").replace("\n", " / ").replace("|", "\\|")[:300]
        lines.append(f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {r['box_s']:.0f} | {r['what']} | {note} |")
    t = data.get("table", {})
    lines += ["", "## latency table", ""]
    if t.get("state") == "none":
        lines.append("not started")
    else:
        lines.append(f"`{t['path']}`: {t['state']}, {t['measured']} of {t['total']} entries measured, "
                     f"{t['finished']} with all {t['passes']} passes ({100 * t['fraction']:.1f}% of the measurements)")
        if t.get("continue"):
            lines.append(f"\ncontinue with `{t['continue']}` (or `bash bench/device_run.sh continue`)")
        if t.get("state") == "complete":
            lines.append(f"\nvalidated: {_fmt(t.get('validated'))}, calibration stored: {_fmt(t.get('calibrated'))}")
    head = data.get("headline", {})
    if head.get("checks"):
        lines += ["", "## benchmark targets", "", "| item | what | measured | target | met? |", "|---|---|---|---|---|"]
        for c in head["checks"]:
            lines.append(f"| {c['key']} | {c['name']} | {format_figure(c['measured'], c.get('unit', ''))} | "
                         f"{c['target']} | "
                         f"{_fmt(c['met'])} |" + (f" {c['note']}" if c.get("note") else ""))
    if head.get("search"):
        s = head["search"]
        lines += ["", "## search", "", f"{_fmt(s['steps'])} steps in {_fmt(s['wall_s'])} s (data "
                  f"{_fmt(s['data_prep_s'])} s); weight step {_fmt(s['weights_step_ms'])} ms, arch step "
                  f"{_fmt(s['arch_step_ms'])} ms (medians after the first epoch); peak {_fmt(s['peak_mib'])} MiB; "
                  f"cost {s['latency_source']}; expected "
                  f"latency {_fmt(s['expected_latency_before_ms'])} -> {_fmt(s['after_ms'])} ms (target "
                  f"{_fmt(s['target_ms'])}; moved toward it: {_fmt(s['moved_toward_target'])})"]
    return "\n".join(lines) + "\n"


__all__ = ["headline", "summary_markdown"]
