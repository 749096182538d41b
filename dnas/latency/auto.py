"""``latency_table: auto``: the latency cost of a search on whatever machine it runs on.

In order (the first that applies):

1. ``table:PATH``: a profiled table of this space (same structure hash) for this kind
   of device (``cpu`` / ``cuda``), among the shipped tables (``latency_tables/``) and the
   ones profiled before into the cache; preferred: the same device name, then the
   recipe's dtype (``bf16`` with ``amp`` on CUDA, else ``fp32``), then its batch
   (``p * k``), then a calibrated table. A table that does not cover the search (a
   missing key, a half-copied file) is skipped, and so is an incomplete table
   (``NAME.partial.csv``, :mod:`dnas.latency.table`): never used, only named in the log.
   Before all of these, an eager table (the runtime searches have always optimised
   for): a table of another runtime (onnxruntime) is taken only when it is the one
   there, or named as the recipe's table; the log line names the runtime either way.
2. ``profiled:PATH``: no such table, but profiling one is affordable: the estimated time
   (from the number of entries and their MACs, :func:`estimate_profile_s`, printed
   before it starts) is at most the budget (``latency_profile_budget_s``; default
   :data:`PROFILE_BUDGET_S`: 5 minutes on CPU, which covers ``tiny``, 2 hours on CUDA,
   which covers the paper spaces). The table is profiled for this device with a progress
   bar into ``$DNAS_CACHE/latency/<device>/<space>-<hash>_b<batch>_<dtype>.csv``
   (default cache ``~/.cache/dnas``); an interrupted profile resumes from its
   incomplete table ``*.partial.csv``; the next search finds the table under 1.
3. ``proxy:macs``: otherwise the MACs of each op over the same keys
   (:mod:`dnas.latency.proxy`), with a one-line warning that says how the objective
   differs and the ``dnas-latency profile`` command that makes a real table.

``latency_table: none`` is a search without a latency cost (``none``); a path is that
table (``table:PATH``); an incomplete one is refused (:class:`IncompleteTableError`:
the file, the entries missing, the command that continues it). The resolved source is
written to the run's ``config.yaml`` (``latency_source``) and ``summary.json``; a resumed
run loads the same source (:func:`load_latency_source`) instead of resolving again.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from dnas.errors import DnasError, LatencyTableError
from dnas.latency.keys import space_entries
from dnas.latency.table import IncompleteTableError, LatencyTable, find_table, table_exists, table_paths

log = logging.getLogger(__name__)

PROFILE_BUDGET_S = {"cpu": 300.0, "cuda": 7200.0}
AUTO_PASSES = 3
# estimate of one measurement: fixed cost (build, warm-up, capture) + windows of the module
MEASURE_OVERHEAD_S = {"cpu": 0.02, "cuda": 0.03}
MACS_PER_S = {"cpu": 8e9, "cuda": 5e13}  # sustained rates of small ops (CPU: ~1 core fp32)
PROXY_SOURCE = "proxy:macs"


@dataclass
class LatencyCost:
    """The resolved cost of a search.

    Attributes:
        source: ``table:PATH``, ``profiled:PATH``, ``proxy:macs`` or ``none``.
        table: the :class:`LatencyTable` (``None`` for ``none``).
        model: the :class:`dnas.latency.cost.LatencyModel` built on it (``None`` for ``none``).
        note: one line for the log (what it is, where it was measured).
    """

    source: str
    table: LatencyTable | None
    model: object | None
    note: str

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]


def latency_cache_dir() -> Path:
    """``$DNAS_CACHE/latency`` (default ``~/.cache/dnas/latency``)."""
    from dnas.data.synthetic import default_cache_dir

    return default_cache_dir() / "latency"


def device_name(device) -> str:
    """``AMD EPYC`` / ``NVIDIA H200``: what the tables' ``device_name`` holds."""
    import torch

    from dnas.latency.timing import _cpu_name

    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()


def device_slug(device) -> str:
    """Folder name of a device in the cache: ``cpu-amd-epyc``, ``cuda-nvidia-h200``."""
    import torch

    kind = torch.device(device).type
    return kind + "-" + (re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "unknown")


def auto_timing(device, batch: int, dtype: str, channels_last: bool):
    """The measurement protocol of a table profiled on first use (``dnas-latency profile``'s defaults)."""
    from dnas.latency.timing import TimingConfig

    return TimingConfig(device=str(device), dtype=dtype, batch=batch, channels_last=channels_last)


def cache_table_path(space, timing) -> Path:
    """Where the table profiled on first use for ``space`` and ``timing`` lives."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", space.name)
    name = f"{stem}-{space.structure_hash()[:12]}_b{timing.batch}_{timing.dtype}"
    if timing.channels_last:
        name += "_cl"
    if space.attention_form != "linear":
        name += f"_{space.attention_form}"
    return latency_cache_dir() / device_slug(timing.device) / f"{name}.csv"


def _candidates(space, kind: str) -> list[tuple[Path, dict, bool]]:
    """``(csv, meta, shipped)`` of every complete table of ``space`` for device ``kind``."""
    from dnas.resources import data_dir

    folders = [(data_dir("latency_tables"), True)]
    cache = latency_cache_dir()
    if cache.is_dir():
        folders += [(d, False) for d in sorted(cache.iterdir()) if d.is_dir() and d.name.startswith(kind + "-")]
    out = []
    for folder, shipped in folders:
        for meta_path in sorted(folder.glob("*.meta.json")) if folder.is_dir() else ():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or meta.get("space_hash") != space.structure_hash():
                continue
            if meta.get("complete") is False:
                log.info("latency cost: %s is an incomplete table (%s of %s entries measured); not used",
                         meta_path, meta.get("entries", "?"), sum((meta.get("counts") or {}).values()) or "?")
                continue
            if str(meta.get("device", "")).split(":")[0] != kind:
                continue
            csv_path = table_paths(meta_path)[0]
            if csv_path.is_file():
                out.append((csv_path, meta, shipped))
    return out


def runtime_name(meta: dict) -> str:
    """The runtime a table optimises for: ``eager PyTorch`` or ``onnxruntime (PROVIDER)``."""
    if (meta.get("runtime") or (meta.get("protocol") or {}).get("runtime") or "eager") == "eager":
        return "eager PyTorch"
    return f"onnxruntime ({meta.get('provider') or (meta.get('protocol') or {}).get('provider') or '?'})"


def _describe(meta: dict, where: str) -> str:
    cal = ", calibrated" if meta.get("calibration") else ""
    return (f"{where}; optimises for {runtime_name(meta)}: measured on {meta.get('device', '?')} "
            f"{meta.get('device_name', '?')}, batch {meta.get('batch', '?')}, {meta.get('dtype', '?')}, "
            f"{meta.get('method', '?')}{cal}, {str(meta.get('date', '?'))[:10]}")


def estimate_profile_s(space, timing, passes: int = 3, done: int = 0) -> tuple[int, float]:
    """``(entries, seconds)``: how long profiling ``space`` would take on ``timing.device``.

    Per measurement a fixed cost (module build, warm-up; graph capture on CUDA) plus the
    timing windows, each at least ``window_ms`` or one forward pass, a forward pass
    estimated from the entry's MACs at the batch (:data:`MACS_PER_S`). ``done``
    measurements (of a partial profile) are taken off, at the average cost.
    """
    from dnas.latency.proxy import entry_macs

    kind = "cuda" if timing.is_cuda else "cpu"
    entries = space_entries(space)
    per_pass = 0.0
    for e in entries:
        fwd = timing.batch * entry_macs(e) / MACS_PER_S[kind]
        per_pass += (MEASURE_OVERHEAD_S[kind] + max(1, timing.warmup) * fwd
                     + timing.windows * max(timing.target_window_ms / 1e3, fwd))
    total = len(entries) * passes
    left = max(0, total - done)
    return len(entries), per_pass * passes * (left / total if total else 0.0)


def _done_measurements(path: Path) -> int:
    """Measurements an interrupted profile into ``path`` holds already (0 when none)."""
    from dnas.latency.profile import legacy_partial_path, partial_path

    try:
        if partial_path(path).is_file():
            table = LatencyTable.load(partial_path(path), allow_incomplete=True)
            return sum(int(table.stats.get(k, {}).get("samples", 1)) for k in table.entries)
        return sum(len(v) for v in json.loads(legacy_partial_path(path).read_text())["samples"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError, LatencyTableError):
        return 0


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def profile_command(supernet: str, timing, out: Path) -> str:
    """The ``dnas-latency profile`` command that makes the table auto would profile."""
    cmd = f"dnas-latency profile --supernet {supernet} --device {timing.device} --batch {timing.batch} " \
          f"--dtype {timing.dtype}"
    return cmd + (" --channels-last" if timing.channels_last else "") + f" --out {out}"


def _model(table: LatencyTable, space, attention, bnneck: bool):
    from dnas.latency.cost import LatencyModel

    # NOTE: the classifier is left out of the cost: a deployed Re-ID net stops at the embedding
    return LatencyModel(table, space, attention=attention, num_classes=0, bnneck=bnneck)


def _load(path: Path, space, attention, bnneck: bool):
    table = LatencyTable.load(path, space=space)
    return table, _model(table, space, attention, bnneck)


def resolve_latency_cost(spec: str | None, space, device, *, supernet: str, batch: int, amp: bool = True,
                         channels_last: bool = False, attention=None, bnneck: bool = True,
                         budget_s: float | None = None, budget_cap_s: float | None = None, progress: bool = True,
                         passes: int | None = None) -> LatencyCost:
    """The cost of ``latency_table: spec`` (``auto``, ``none``/``None`` or a table path).

    Args:
        spec: the recipe's ``latency_table``.
        space: the search space (with the recipe's attention settings).
        device: the torch device the search runs on.
        supernet: the recipe's ``supernet`` as typed (for the profile command).
        batch: the recipe's batch (``p * k``): preferred, and profiled at.
        amp: bf16 on CUDA (preferred, and profiled at); fp32 otherwise.
        channels_last: profile NHWC on CUDA.
        attention, bnneck: as the supernet's (what the cost must cover).
        budget_s: profile on first use when the estimate is at most this (default
            :data:`PROFILE_BUDGET_S` of the device kind; ``0``: never).
        budget_cap_s: at most this in any case (DDP: the other ranks wait for the profile
            within the collective timeout).
        progress: progress bar while profiling.
        passes: round-robin passes of a profile on first use (default :data:`AUTO_PASSES`).

    Raises:
        DnasError: an explicit table that is not there.
        LatencyTableError: an explicit table that does not cover the space.
    """
    import torch

    if spec is None or str(spec).strip().lower() in ("", "none"):
        return LatencyCost("none", None, None, "no latency cost (latency_table: none): the search trades "
                                              "nothing for speed, the architecture step minimises the task loss only")
    if str(spec).strip().lower() != "auto":
        path = find_table(spec)
        if not table_exists(path):
            raise DnasError(f"latency table {spec} not found: profile one with 'dnas-latency profile --supernet "
                            f"{supernet} --device cuda --batch 64 --dtype bf16 --out {spec}', use "
                            "--set latency_table=auto (a table for this machine, or a MACs proxy), or search "
                            "without a latency cost: --set latency_table=none")
        path = path.resolve()
        try:
            table, model = _load(path, space, attention, bnneck)
        except IncompleteTableError as exc:
            raise IncompleteTableError(f"latency_table {spec}: {exc}; a search needs a complete table (or use "
                                       "--set latency_table=auto)", exc.path, exc.missing, exc.total,
                                       exc.command) from None
        return LatencyCost(f"table:{path}", table, model, _describe(table.meta, "the recipe's table"))
    dev = torch.device(device)
    kind = dev.type
    dtype = "bf16" if kind == "cuda" and amp else "fp32"
    timing = auto_timing(dev, batch, dtype, channels_last and kind == "cuda")
    here = device_name(dev)
    ranked = sorted(_candidates(space, kind), key=lambda c: (
        runtime_name(c[1]) == "eager PyTorch", c[1].get("device_name") == here, c[1].get("dtype") == dtype, c[1].get("batch") == batch,
        bool(c[1].get("calibration")), c[2]), reverse=True)
    for path, meta, shipped in ranked:
        try:
            table, model = _load(path, space, attention, bnneck)
        except LatencyTableError as exc:
            log.debug("latency table %s skipped: %s", path, exc)
            continue
        profiled = not shipped and meta.get("auto_profiled") is True
        where = "shipped" if shipped else ("cached, profiled on first use" if profiled else "cached")
        return LatencyCost(f"{'profiled' if profiled else 'table'}:{path.resolve()}", table, model,
                           _describe(meta, where))
    passes = AUTO_PASSES if passes is None else int(passes)
    out = cache_table_path(space, timing)
    n, est = estimate_profile_s(space, timing, passes, _done_measurements(out))
    budget = PROFILE_BUDGET_S[kind] if budget_s is None else float(budget_s)
    capped = budget_cap_s is not None and budget_cap_s < budget
    budget = min(budget, float(budget_cap_s)) if capped else budget
    what = f"{space.name} ({space.structure_hash()[:12]}) on {kind} ({here}) at batch {batch} {dtype}"
    if est <= budget:
        return _profile(space, timing, out, passes, progress, attention, bnneck, n, est, what)
    if budget > 0:
        cap = ", capped for DDP" if capped else ""
        reason = (f"profiling one would take about {_fmt_s(est)} ({n} entries x {passes} passes; "
                  f"latency_profile_budget_s={budget:g}{cap})")
    else:
        reason = "profiling on first use is off (latency_profile_budget_s=0)"
    from dnas.latency.proxy import PROXY_MACS_PER_MS, macs_table

    table = macs_table(space)
    model = _model(table, space, attention, bnneck)
    note = (f"no latency table for {what} and {reason}: the cost is the MACs of the ops (1 pseudo-ms = "
            f"{PROXY_MACS_PER_MS / 1e6:g} M MACs per image), not time measured on this device: memory-bound ops "
            f"(depthwise, attention) look cheaper than they run, and latency_target_ms counts pseudo-ms; "
            f"for a real table run '{profile_command(supernet, timing, out)}' (the next search picks it up)")
    return LatencyCost(PROXY_SOURCE, table, model, note)


def _profile(space, timing, out: Path, passes: int, progress: bool, attention, bnneck: bool, n: int, est: float,
             what: str) -> LatencyCost:
    from dnas.latency.profile import profile_space, remove_partial

    log.info("latency cost: no latency table for %s; profiling one on first use: %d entries x %d passes, about "
             "%s (estimate), into %s (cached for later searches; an interrupted profile resumes)",
             what, n, passes, _fmt_s(est), out)
    t0 = time.time()
    try:
        table = profile_space(space, out, timing, passes=passes, progress=progress, log=log.info)
    except LatencyTableError as exc:  # a partial profile of other settings: start it afresh
        log.warning("latency cost: %s; profiling afresh", exc)
        remove_partial(out)
        table = profile_space(space, out, timing, passes=passes, resume=False, progress=progress, log=log.info)
    table.meta["auto_profiled"] = True
    table.save_meta(out)
    took = time.time() - t0
    log.info("latency cost: profiled %s in %s", out, _fmt_s(took) if took >= 1 else f"{took:.2f} s")
    table, model = _load(out, space, attention, bnneck)
    return LatencyCost(f"profiled:{out.resolve()}", table, model, _describe(table.meta, "profiled on first use"))


def load_latency_source(source: str, space, attention=None, bnneck: bool = True) -> LatencyCost:
    """The cost a run recorded (``latency_source`` in its ``config.yaml``), for ``--resume``.

    Raises:
        DnasError: an unknown source, or its table is gone.
    """
    if source == "none":
        return resolve_latency_cost("none", space, "cpu", supernet=space.name, batch=1)
    if source == PROXY_SOURCE:
        from dnas.latency.proxy import macs_table

        table = macs_table(space)
        note = "the MACs proxy, as the run started (the MACs of the ops, not time measured on a device)"
        return LatencyCost(source, table, _model(table, space, attention, bnneck), note)
    kind, _, path = source.partition(":")
    if kind not in ("table", "profiled") or not path:
        raise DnasError(f"latency_source {source!r}: expected table:PATH, profiled:PATH, {PROXY_SOURCE} or none")
    if not table_paths(path)[0].is_file():
        raise DnasError(f"latency_source {source}: the table this run started with is gone; restore it to resume "
                        "with the same cost (or start a new run)")
    table, model = _load(Path(path), space, attention, bnneck)
    return LatencyCost(source, table, model, _describe(table.meta, "as the run started"))


__all__ = ["LatencyCost", "PROFILE_BUDGET_S", "cache_table_path", "estimate_profile_s", "latency_cache_dir",
           "load_latency_source", "profile_command", "resolve_latency_cost", "runtime_name"]
