"""``dnas-latency profile``: measure every entry a space can produce into a table.

Entries come from :func:`dnas.latency.keys.space_entries` (stem, every block at every
combination of its in/mid/out width options at its stride and input resolution,
DCS-Attention at each width, head, classifier); each is built from the same plain ops
as the derived networks (:mod:`dnas.ops`, :class:`dnas.models.head.ClassifierHead`)
and timed with :mod:`dnas.latency.timing` in shuffled round-robin passes, in the
protocol's runtime: eager PyTorch, or exported to ONNX and run in onnxruntime
(:mod:`dnas.latency.onnx_timing`; the table's metadata then records the provider, the
onnxruntime version and the session options).

An interrupted profile resumes: the per-pass results are written atomically as an
incomplete table ``TABLE.partial.csv`` + ``TABLE.partial.meta.json``
(:mod:`dnas.latency.table`) every ``checkpoint_every_s`` seconds, when ``time_limit_s``
runs out, and on Ctrl-C; a new run with the same space and settings continues from
there (a run with other settings refuses to mix) and, once every entry has all its
passes, writes ``TABLE.csv`` and removes the partial files. The incomplete table is
meant to be committed, so that a table too long for one GPU session fills up over
several. (A ``TABLE.partial.json`` of older versions is read the same way.)
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from dnas.errors import DnasError, LatencyTableError
from dnas.latency.keys import Entry, block_op_kwargs, count_by_kind, space_entries
from dnas.latency.onnx_timing import check_timing, measure_in_runtime, runtime_mode, runtime_provenance
from dnas.latency.table import LatencyTable, complete_path, partial_paths, table_paths
from dnas.latency.timing import TimingConfig, device_info, round_robin, summarize
from dnas.models.head import ClassifierHead
from dnas.ops.blocks import ConvBNReLU
from dnas.ops.dcs import DCSAttention
from dnas.ops.registry import PLAIN_OPS

# settings a partial run must share with the run that resumes it
RESUME_KEYS = ("space_hash", "device_name", "torch", "cuda", "dtype", "batch", "channels_last", "method",
               "num_classes", "protocol", "onnxruntime")


class HeadPart(nn.Module):
    """The ``head`` entry: ClassifierHead's 1x1 conv + BN + ReLU and the global pool."""

    def __init__(self, head: ClassifierHead):
        super().__init__()
        self.conv = head.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))  # (B, out_chs)


class ClassifierPart(nn.Module):
    """The ``classifier`` entry: ClassifierHead's optional BNNeck and the Linear layer."""

    def __init__(self, head: ClassifierHead):
        super().__init__()
        self.neck, self.classifier = head.neck, head.classifier

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(g) if self.neck is not None else g)  # (B, num_classes)


def build_entry_module(entry: Entry, tau_m: float = 1.0) -> nn.Module:
    """The plain module an entry stands for (as the derived networks build it).

    Args:
        entry: a table entry.
        tau_m: DCS-Attention temperature (unused in eval mode; kept for fidelity).

    Returns:
        An ``nn.Module`` taking a tensor of shape ``(B, *entry.input_shape)``.
    """
    f = dict(entry.fields)
    if entry.kind == "stem":
        return ConvBNReLU(f["in_chs"], f["out_chs"], f["stride"], kernel_size=f["kernel_size"])
    if entry.kind == "block":
        return PLAIN_OPS.build(f["op"], f["in_chs"], f["out_chs"], f["stride"], **block_op_kwargs(f))
    if entry.kind == "dcs":
        return DCSAttention(f["in_chs"], tau_m=tau_m, form=f["form"], select=f["attention"] == "dcs")
    if entry.kind == "head":
        return HeadPart(ClassifierHead(f["in_chs"], f["out_chs"], 1))
    if entry.kind == "classifier":
        return ClassifierPart(ClassifierHead(8, f["in_chs"], f["out_chs"], bnneck=bool(f["bnneck"])))
    raise ValueError(f"unknown entry kind {entry.kind!r}")


def make_measure(entries: dict[str, Entry], cfg: TimingConfig, tau_m: float) -> Callable[[str], float]:
    """``key -> ms``: build the entry's module (on the device; on the CPU to export it for
    onnxruntime) and time it in the protocol's runtime."""
    dev = torch.device(cfg.device if cfg.runtime == "eager" else "cpu")

    def measure(key: str) -> float:
        entry = entries[key]
        try:
            with torch.device(dev):
                module = build_entry_module(entry, tau_m)
            return measure_in_runtime(module, entry.input_shape, cfg)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DnasError(f"measuring {key} on {cfg.device} ({cfg.dtype}, {cfg.method}) failed: {first}") from None

    return measure


def profile_meta(space, cfg: TimingConfig, passes: int, seed: int, num_classes: Sequence[int],
                 entries: Sequence[Entry]) -> dict:
    """Provenance block of a new table."""
    info = device_info(cfg)
    return {
        "space": space.name, "space_hash": space.structure_hash(), "space_source": str(space.source),
        "device": cfg.device, "device_name": info["device_name"], "driver": info["driver"],
        "cuda": info["cuda"], "torch": info["torch"], "host": info,
        "dtype": cfg.dtype, "batch": cfg.batch, "resolution": list(space.input_size[1:]),
        "input_size": list(space.input_size), "channels_last": cfg.channels_last, "method": cfg.method,
        **runtime_provenance(cfg), "mode": runtime_mode(cfg),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "num_classes": [int(n) for n in num_classes],
        "protocol": {**cfg.to_dict(), "passes": passes, "seed": seed},
        "counts": count_by_kind(entries),
    }


def partial_path(out: str | Path) -> Path:
    """Where an interrupted profile keeps its results: the incomplete table's CSV."""
    return partial_paths(out)[0]


def legacy_partial_path(out: str | Path) -> Path:
    """``TABLE.partial.json``: the resume file of older versions (read, never written)."""
    csv_path, _ = table_paths(out)
    return csv_path.with_name(csv_path.name[: -len(".csv")] + ".partial.json")


def remove_partial(out: str | Path) -> None:
    """Delete the incomplete table of ``out`` (both files) and a legacy resume file."""
    for path in (*partial_paths(out), legacy_partial_path(out)):
        path.unlink(missing_ok=True)


def _check_resume(path: Path, old: dict, meta: dict) -> None:
    for key in RESUME_KEYS:
        if old.get(key) != meta.get(key):
            raise LatencyTableError(f"{path}: partial profile made with {key}={old.get(key)!r}, this run has "
                                    f"{meta.get(key)!r}; delete it or pass --restart")


def load_partial_samples(out: str | Path, meta: dict) -> tuple[Path, dict[str, list[float]], dict] | None:
    """``(path, key -> per-pass ms, its metadata)`` of the incomplete table of ``out`` (or
    of a legacy ``TABLE.partial.json``), checked to share ``meta``'s settings; ``None``
    when there is none.

    Raises:
        LatencyTableError: unreadable, or made with other settings (:data:`RESUME_KEYS`).
    """
    path = partial_path(out)
    if path.is_file():
        table = LatencyTable.load(path, allow_incomplete=True)
        _check_resume(path, table.meta, meta)
        samples = {k: list(table.stats.get(k, {}).get("pass_ms") or [ms] * table.stats.get(k, {}).get("samples", 1))
                   for k, ms in table.entries.items()}
        return path, samples, table.meta
    path = legacy_partial_path(out)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        old, samples = data["meta"], data["samples"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LatencyTableError(f"{path}: unreadable partial profile ({exc}); delete it or pass --restart") from None
    _check_resume(path, old, meta)
    return path, {k: [float(v) for v in vals] for k, vals in samples.items()}, old


def samples_table(samples: dict[str, list[float]], meta: dict, passes: int) -> LatencyTable:
    """The table of per-pass ``samples`` (keys without any left out): complete when every
    key of ``meta["counts"]`` has ``passes`` samples, else an incomplete one."""
    values, stats = {}, {}
    for key, vals in samples.items():
        if vals:
            values[key], spread = summarize(vals)
            stats[key] = {"spread": spread, "samples": len(vals), "pass_ms": list(vals)}
    table = LatencyTable(values, meta, stats)
    total = sum(meta.get("counts", {}).values())
    if len(values) < total or any(len(v) < passes for v in samples.values()):
        table.meta["complete"] = False
        table.meta["progress"] = table.progress()
    return table


def profile_space(space, out: str | Path, cfg: TimingConfig, passes: int = 3, seed: int = 0,
                  num_classes: Sequence[int] | None = None, resume: bool = True, checkpoint_every_s: float = 30.0,
                  progress: bool = True, log: Callable[[str], None] = print,
                  time_limit_s: float | None = None) -> LatencyTable:
    """Measure every entry of ``space`` and write the table to ``out`` (atomically).

    With ``time_limit_s``, no measurement starts after that many seconds: what is done
    stays in the incomplete table ``NAME.partial.csv``, which is returned (its
    ``is_complete`` is False); the same call later continues it.

    Args:
        space: the :class:`dnas.space.SearchSpace` to cover.
        out: table path (``NAME`` or ``NAME.csv``; ``NAME.meta.json`` is written next to it).
        cfg: measurement protocol.
        passes: shuffled round-robin passes (the table holds the median over them).
        seed: shuffling seed.
        num_classes: classifier sizes to cover (default: the space's ``num_classes``).
        resume: continue from the incomplete table ``NAME.partial.csv`` when present.
        checkpoint_every_s: how often the partial results are written.
        progress: tqdm progress bar (drawn only when stderr is a terminal).
        log: where to print status lines.
        time_limit_s: stop starting measurements after this many seconds.

    Returns:
        The written :class:`LatencyTable`: complete, or incomplete after the time limit.
    """
    check_timing(cfg)
    if passes < 1:
        raise DnasError(f"passes {passes}: expected >= 1")
    sizes = [int(n) for n in (num_classes or [space.num_classes])]
    entries = {e.key: e for e in space_entries(space, num_classes=sizes)}
    meta = profile_meta(space, cfg, passes, seed, sizes, list(entries.values()))
    deadline = None if time_limit_s is None else time.monotonic() + float(time_limit_s)
    out = complete_path(out)  # NAME.partial.csv given: the table is still NAME.csv
    csv_path, _ = table_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    ppath = partial_path(out)
    samples: dict[str, list[float]] = {}
    found = load_partial_samples(out, meta) if resume else None
    if found:
        samples = {k: v[:passes] for k, v in found[1].items() if k in entries}
        done = sum(len(v) for v in samples.values())
        # provenance of a table measured over several sessions: when each one started
        meta["sessions"] = list(found[2].get("sessions") or [found[2].get("date")]) + [meta["date"]]
        log(f"continuing {found[0]}: {done} of {len(entries) * passes} measurements done "
            f"({len(samples)} of {len(entries)} entries measured)")

    def checkpoint(current: dict[str, list[float]]) -> None:
        samples_table(current, meta, passes).save(ppath)

    measure = make_measure(entries, cfg, space.tau_m)
    samples = round_robin(list(entries), measure, passes, seed, samples, checkpoint, checkpoint_every_s,
                          desc=f"profile {space.name}", progress=progress, deadline=deadline)
    table = samples_table(samples, meta, passes)
    if not table.is_complete:
        table.source = str(ppath)
        return table
    table.save(csv_path)
    remove_partial(out)
    return table
