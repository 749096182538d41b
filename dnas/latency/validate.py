"""``dnas-latency validate``: does the table's sum predict whole-network latency?

Samples random architectures of a space (plus its min and max), builds each derived
plain network (:class:`dnas.models.PlainNet`), measures it end to end with the table's
own protocol (:mod:`dnas.latency.timing`, shuffled round-robin passes) and compares
with the table sum over its entries (:func:`dnas.latency.keys.derived_entries`):
Spearman rho, MAPE and the fraction within +-10%, raw and after a fitted linear
calibration ``measured ~= a + b * sum`` (a robust Theil-Sen fit). Only when asked
(``--save-calibration``) is the calibration stored in the table's metadata, where lookups
apply it (:meth:`LatencyTable.calibrate`). A table profiled on another machine is refused
unless forced: its latencies do not describe the machine that measures.

The whole networks run in the table's runtime (eager PyTorch, or onnxruntime with its
provider: each network exported once, :mod:`dnas.latency.onnx_timing`) unless another
one is asked for: an eager table against onnxruntime timings says how much the
runtime's fusions break the sum of per-op latencies.

NOTE: the calibrated figures are in-sample (fitted on the same architectures); with two
parameters and ~100 architectures the optimism is small.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np
import torch

from dnas.errors import DnasError
from dnas.latency.keys import derived_entries
from dnas.latency.onnx_timing import ExportedModels, check_timing, measure_in_runtime
from dnas.latency.table import LatencyTable
from dnas.latency.timing import TimingConfig, device_info, round_robin, summarize


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson correlation of the average ranks)."""
    rx, ry = rankdata(x), rankdata(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def fit_linear(pred, meas) -> tuple[float, float]:
    """Robust line ``meas ~= a + b * pred`` (Theil-Sen: median of pairwise slopes).

    NOTE: Theil-Sen instead of least squares: a few architectures measured while the
    machine was busy (a shared CPU) would otherwise tilt the line; the median ignores
    up to ~29% of such outliers. When the slope is not positive (the sums do not rank the
    architectures at all) or the fit is degenerate, falls back to a scale-only
    calibration ``a = 0, b = median(meas / pred)``, so a calibrated latency stays
    increasing in the table sum.
    """
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    scale = (0.0, float(np.median(meas / pred))) if len(pred) and (pred > 0).all() else (0.0, 1.0)
    i, j = np.triu_indices(len(pred), k=1)
    dx = pred[j] - pred[i]
    ok = dx != 0
    if not ok.any():
        return scale
    b = float(np.median((meas[j] - meas[i])[ok] / dx[ok]))
    if not b > 0:
        return scale
    return float(np.median(meas - b * pred)), b


def fidelity(pred, meas) -> dict:
    """Spearman rho, MAPE (%), fraction within +-10% and worst error (%) of ``pred`` vs ``meas``."""
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    err = (pred - meas) / meas
    return {"spearman": spearman(pred, meas), "mape_pct": float(100 * np.mean(np.abs(err))),
            "within_10pct": float(np.mean(np.abs(err) <= 0.10)), "max_abs_err_pct": float(100 * np.max(np.abs(err))),
            "ratio_sum_to_measured": float(np.median(pred / meas))}


def sample_archs(space, n: int, seed: int = 0) -> dict[str, dict]:
    """``name -> indices``: ``min``, ``max`` and ``n`` random architectures (duplicates skipped)."""
    archs = {"min": space.sample_indices("min"), "max": space.sample_indices("max")}
    seen = {repr(v) for v in archs.values()}
    i = 0
    while len(archs) < n + 2 and i < 20 * (n + 2):
        idx = space.sample_indices("random", seed=seed * 1_000_003 + i)
        i += 1
        if repr(idx) not in seen:
            seen.add(repr(idx))
            archs[f"rand{i - 1:04d}"] = idx
    return archs


def check_machine(table: LatencyTable, cfg: TimingConfig, force: bool = False) -> str | None:
    """Compare the table's machine with the one measuring now.

    Returns:
        ``None`` on the same machine; with ``force``, the mismatch as a warning line.

    Raises:
        DnasError: the machines differ (device type or name) and ``force`` is not set.
    """
    here, there = device_info(cfg)["device_name"], table.meta.get("device_name")
    type_here = torch.device(cfg.device).type
    type_there = str(table.meta.get("device") or type_here).split(":")[0]
    if here == there and type_here == type_there:
        return None
    what = (f"{table.source}: profiled on {there} ({table.meta.get('device')}), but this machine measures on "
            f"{here} ({cfg.device})")
    if not force:
        raise DnasError(f"{what}; its latencies do not describe this machine: profile a table here "
                        "(dnas-latency profile), or pass --force to compare anyway")
    return f"WARNING: {what}"


def validate_table(space, table: LatencyTable, archs: int = 100, seed: int = 0, passes: int | None = None,
                   num_classes: int | None = None, attention: str | bool | None = None, bnneck: bool | None = None,
                   progress: bool = True, timing: TimingConfig | None = None, force: bool = False) -> dict:
    """Measure sampled architectures end to end and compare with the table sums.

    Args:
        space: the space the table covers (its hash is checked).
        table: the table to validate.
        archs: number of random architectures (``min`` and ``max`` are added).
        seed: sampling and shuffling seed.
        passes: round-robin passes (default: the table's).
        num_classes: classifier size (default: the first the table covers).
        attention, bnneck: network variant (default: the space's).
        progress: tqdm progress bar, one step per architecture measured (only on a terminal).
        timing: protocol override (default: the table's protocol, its runtime included).
        force: measure even when this machine is not the table's (see :func:`check_machine`).

    Returns:
        The report dict (``raw``/``calibrated`` metrics, ``calibration``, per-arch rows).
    """
    from dnas.models.plain import PlainNet
    from dnas.space import SearchSpace

    table.check_space(space)
    proto = dict(table.meta.get("protocol", {}))
    cfg = timing or TimingConfig.from_dict(proto)
    check_timing(cfg)
    mismatch = check_machine(table, cfg, force)
    passes = int(passes or proto.get("passes", 3))
    if num_classes is None:
        num_classes = (table.meta.get("num_classes") or [space.num_classes])[0]
    num_classes = int(num_classes)
    from dnas.space.schema import resolve_attention

    attention = resolve_attention(space.attention, attention)
    bnneck = space.bnneck if bnneck is None else bnneck
    chosen = sample_archs(space, archs, seed)
    arch_spaces = {name: SearchSpace.from_dict(space.arch_from_indices(idx), f"{space.name}:{name}")
                   for name, idx in chosen.items()}
    pred = {name: table.total(e.key for e in derived_entries(a, attention, num_classes, bnneck))
            for name, a in arch_spaces.items()}

    def build(name: str) -> torch.nn.Module:
        with torch.device(cfg.device if cfg.runtime == "eager" else "cpu"):
            return PlainNet(arch_spaces[name], num_classes=num_classes, attention=attention, bnneck=bnneck)

    def measure(name: str) -> float:
        try:
            if cfg.runtime == "eager":
                return measure_in_runtime(build(name), space.input_size, cfg)
            path = exported.path(name, lambda: build(name), space.input_size, cfg)  # once per arch
            return measure_in_runtime(None, space.input_size, cfg, onnx_path=path)
        except RuntimeError as exc:
            raise DnasError(f"measuring arch {name} on {cfg.device} ({cfg.method}) failed: "
                            f"{str(exc).splitlines()[0]}") from None

    with ExportedModels() as exported:
        samples = round_robin(list(chosen), measure, passes, seed, desc=f"validate {space.name}",
                              progress=progress, unit="arch")
    names = list(chosen)
    meas = {n: summarize(samples[n]) for n in names}
    p = np.array([pred[n] for n in names])
    m = np.array([meas[n][0] for n in names])
    a, b = fit_linear(p, m)
    return {
        "table": table.source, "space": space.name, "space_hash": space.structure_hash(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device_name": table.meta.get("device_name"), "measured_on": device_info(cfg)["device_name"],
        "device_mismatch": mismatch, "table_method": table.method, "measured_method": cfg.method,
        "timing": cfg.to_dict(), "passes": passes, "seed": seed,
        "num_classes": num_classes, "attention": attention, "bnneck": bnneck, "n_archs": len(names),
        "raw": fidelity(p, m), "calibration": {"a": a, "b": b}, "calibrated": fidelity(a + b * p, m),
        "archs": [{"name": n, "predicted_ms": pred[n], "measured_ms": meas[n][0], "spread": meas[n][1],
                   "indices": chosen[n]} for n in names],
    }


def format_report(report: dict) -> str:
    """Readable summary lines of a validate report."""
    lines = [f"validate {report['table']}: measured on {report.get('measured_on')} ({report['n_archs']} archs, "
             f"{report['timing']['method']}, batch {report['timing']['batch']}, {report['timing']['dtype']}); "
             f"table profiled on {report['device_name']}"]
    for name in ("raw", "calibrated"):
        r = report[name]
        lines.append(f"  {name:<10} spearman {r['spearman']:.4f}  MAPE {r['mape_pct']:.2f}%  "
                     f"within 10% {100 * r['within_10pct']:.1f}%  max err {r['max_abs_err_pct']:.1f}%  "
                     f"sum/measured {r['ratio_sum_to_measured']:.3f}")
    cal = report["calibration"]
    lines.append(f"  calibration: measured ~= {cal['a']:.5g} + {cal['b']:.5g} * sum (ms)")
    if report.get("table_method", report["timing"]["method"]) != report["timing"]["method"]:
        lines.append(f"  NOTE: the table was profiled with {report['table_method']}, the networks measured with "
                     f"{report['timing']['method']}")
    if report.get("measured_on") != report["device_name"] or report.get("device_mismatch"):
        lines.append(f"  {report.get('device_mismatch') or 'WARNING: the machines differ'} (forced)")
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> Path:
    """Scatter plot (PNG) of table sum vs measured latency, with y = x and the calibration line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnas.io import atomic_write_bytes

    p = np.array([r["predicted_ms"] for r in report["archs"]])
    m = np.array([r["measured_ms"] for r in report["archs"]])
    cal = report["calibration"]
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.scatter(p, m, s=12, alpha=0.7, label="architectures")
    lo, hi = float(min(p.min(), m.min())), float(max(p.max(), m.max()))
    xs = np.linspace(lo, hi, 50)
    ax.plot(xs, xs, "k--", lw=1, label="y = x")
    ax.plot(xs, cal["a"] + cal["b"] * xs, "r-", lw=1, label=f"{cal['a']:.3g} + {cal['b']:.3g} x")
    raw, calr = report["raw"], report["calibrated"]
    ax.set_xlabel("table sum (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.set_title(f"{report['space']} measured on {report.get('measured_on')}\n"
                 f"rho {raw['spearman']:.3f}  MAPE {raw['mape_pct']:.1f}% (cal. {calr['mape_pct']:.1f}%)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue())


def store_calibration(table: LatencyTable, report: dict) -> None:
    """Write the report's calibration (and its figures) into the table's metadata file."""
    cal = report["calibration"]
    if not (math.isfinite(cal["a"]) and math.isfinite(cal["b"]) and cal["b"] > 0):
        raise DnasError(f"{table.source}: calibration {cal} is not usable (slope must be > 0)")
    table.set_calibration(cal["a"], cal["b"], {
        "fitted_on": report["date"], "n_archs": report["n_archs"], "num_classes": report["num_classes"],
        "raw": report["raw"], "calibrated": report["calibrated"]})
    table.save_meta()


__all__: list[str] = ["check_machine", "fidelity", "fit_linear", "format_report", "plot_report", "sample_archs", "spearman",
                      "store_calibration", "validate_table"]
