"""``dnas-latency profile``: measure every entry a space can produce into a table.

Entries come from :func:`dnas.latency.keys.space_entries` (stem, every block at every
combination of its in/mid/out width options at its stride and input resolution,
DCS-Attention at each width, head, classifier); each is built from the same plain ops
as the derived networks (:mod:`dnas.ops`, :class:`dnas.models.head.ClassifierHead`)
and timed with :mod:`dnas.latency.timing` in shuffled round-robin passes.

An interrupted profile resumes: the per-pass results are written atomically to
``TABLE.partial.json`` every ``checkpoint_every_s`` seconds, and a new run with the same
space and settings continues from there (a run with other settings refuses to mix).
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from dnas.errors import DnasError, LatencyTableError
from dnas.io import atomic_write_json
from dnas.latency.keys import Entry, count_by_kind, space_entries
from dnas.latency.table import LatencyTable, table_paths
from dnas.latency.timing import TimingConfig, check_device, device_info, measure_module, round_robin, summarize
from dnas.models.head import ClassifierHead
from dnas.ops.blocks import ConvBNReLU
from dnas.ops.dcs import DCSAttention
from dnas.ops.registry import PLAIN_OPS

# settings a partial run must share with the run that resumes it
RESUME_KEYS = ("space_hash", "device_name", "torch", "cuda", "dtype", "batch", "channels_last", "method",
               "num_classes", "protocol")


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
        return PLAIN_OPS.build(f["op"], f["in_chs"], f["out_chs"], f["stride"], mid_chs=f["mid_chs"])
    if entry.kind == "dcs":
        return DCSAttention(f["in_chs"], tau_m=tau_m, form=f["form"], select=f["attention"] == "dcs")
    if entry.kind == "head":
        return HeadPart(ClassifierHead(f["in_chs"], f["out_chs"], 1))
    if entry.kind == "classifier":
        return ClassifierPart(ClassifierHead(8, f["in_chs"], f["out_chs"], bnneck=bool(f["bnneck"])))
    raise ValueError(f"unknown entry kind {entry.kind!r}")


def make_measure(entries: dict[str, Entry], cfg: TimingConfig, tau_m: float) -> Callable[[str], float]:
    """``key -> ms``: build the entry's module on the device and time it."""
    dev = torch.device(cfg.device)

    def measure(key: str) -> float:
        entry = entries[key]
        try:
            with torch.device(dev):
                module = build_entry_module(entry, tau_m)
            return measure_module(module, entry.input_shape, cfg)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DnasError(f"measuring {key} on {cfg.device} ({cfg.dtype}) failed: {first}") from None

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
        "mode": "eval (inference latency, torch.no_grad, BN not fused)",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "num_classes": [int(n) for n in num_classes],
        "protocol": {**cfg.to_dict(), "passes": passes, "seed": seed},
        "counts": count_by_kind(entries),
    }


def partial_path(out: str | Path) -> Path:
    """Where an interrupted profile keeps its results."""
    csv_path, _ = table_paths(out)
    return csv_path.with_name(csv_path.name[: -len(".csv")] + ".partial.json")


def _load_partial(path: Path, meta: dict) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text())
        old, samples = data["meta"], data["samples"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LatencyTableError(f"{path}: unreadable partial profile ({exc}); delete it or pass --restart") from None
    for key in RESUME_KEYS:
        if old.get(key) != meta.get(key):
            raise LatencyTableError(f"{path}: partial profile made with {key}={old.get(key)!r}, this run has "
                                    f"{meta.get(key)!r}; delete it or pass --restart")
    return {k: [float(v) for v in vals] for k, vals in samples.items()}


def profile_space(space, out: str | Path, cfg: TimingConfig, passes: int = 3, seed: int = 0,
                  num_classes: Sequence[int] | None = None, resume: bool = True, checkpoint_every_s: float = 30.0,
                  progress: bool = True, log: Callable[[str], None] = print) -> LatencyTable:
    """Measure every entry of ``space`` and write the table to ``out`` (atomically).

    Args:
        space: the :class:`dnas.space.SearchSpace` to cover.
        out: table path (``NAME`` or ``NAME.csv``; ``NAME.meta.json`` is written next to it).
        cfg: measurement protocol.
        passes: shuffled round-robin passes (the table holds the median over them).
        seed: shuffling seed.
        num_classes: classifier sizes to cover (default: the space's ``num_classes``).
        resume: continue from ``NAME.partial.json`` when present.
        checkpoint_every_s: how often the partial results are written.
        progress: tqdm progress bar.
        log: where to print status lines.

    Returns:
        The written :class:`LatencyTable`.
    """
    check_device(cfg)
    if passes < 1:
        raise DnasError(f"passes {passes}: expected >= 1")
    sizes = [int(n) for n in (num_classes or [space.num_classes])]
    entries = {e.key: e for e in space_entries(space, num_classes=sizes)}
    meta = profile_meta(space, cfg, passes, seed, sizes, list(entries.values()))
    csv_path, _ = table_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    ppath = partial_path(out)
    samples: dict[str, list[float]] = {}
    if resume and ppath.is_file():
        samples = {k: v for k, v in _load_partial(ppath, meta).items() if k in entries}
        log(f"resuming from {ppath}: {sum(len(v) for v in samples.values())} measurements done")

    def checkpoint(current: dict[str, list[float]]) -> None:
        atomic_write_json(ppath, {"meta": meta, "samples": {k: v for k, v in current.items() if v}})

    measure = make_measure(entries, cfg, space.tau_m)
    samples = round_robin(list(entries), measure, passes, seed, samples, checkpoint, checkpoint_every_s,
                          desc=f"profile {space.name}", progress=progress)
    values, stats = {}, {}
    for key, vals in samples.items():
        values[key], spread = summarize(vals)
        stats[key] = {"spread": spread, "samples": len(vals)}
    table = LatencyTable(values, meta, stats)
    table.save(csv_path)
    ppath.unlink(missing_ok=True)
    return table
