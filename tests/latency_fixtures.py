"""Shared helpers of the latency tests: a measured CPU table of the ``tiny`` space (built
once per session, a few seconds) and synthetic tables with known, monotone values."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest

from dnas.latency.keys import parse_key, space_entries
from dnas.latency.table import LatencyTable, table_paths
from dnas.space import load_space

FAST_TIMING = dict(device="cpu", dtype="fp32", batch=2, warmup=1, windows=1, window_ms=0.2, threads=1)
_CACHE: dict[str, Path] = {}


def measured_tiny_table() -> Path:
    """Path of a CPU table of ``tiny`` measured with a very short protocol (cached)."""
    if "tiny" not in _CACHE:
        from dnas.latency.profile import profile_space
        from dnas.latency.timing import TimingConfig

        tmp = tempfile.mkdtemp(prefix="dnas-lat-")
        atexit.register(shutil.rmtree, tmp, True)
        out = Path(tmp) / "tiny_cpu"
        profile_space(load_space("tiny"), out, TimingConfig(**FAST_TIMING), passes=1, progress=False,
                      log=lambda m: None)
        _CACHE["tiny"] = table_paths(out)[0]
    return _CACHE["tiny"]


def copy_table(src: Path, dst_dir: Path, name: str = "table") -> Path:
    """Copy a table (CSV + meta) into ``dst_dir``; returns the new CSV path."""
    csv_src, meta_src = table_paths(src)
    csv_dst, meta_dst = table_paths(dst_dir / f"{name}.csv")
    shutil.copy(csv_src, csv_dst)
    shutil.copy(meta_src, meta_dst)
    return csv_dst


def synthetic_ms(key: str) -> float:
    """A deterministic latency that grows with every width: roughly MACs-proportional."""
    kind, f = parse_key(key)
    h, w = f.get("res", (1, 1))
    hw = h * w
    if kind == "block":
        s2 = f["stride"] ** 2
        macs = f["in_chs"] * f["mid_chs"] + (9 * f["mid_chs"] + f["mid_chs"] * f["out_chs"]) / s2
        return 1e-3 * (1 + hw * macs / 1e4)
    if kind == "dcs":  # linear: O(N C^2); softmax: O(N^2 C); the pi layer of DCS adds N C^2
        c = f["in_chs"]
        att = hw * c * c * 2 if f["form"] == "linear" else hw * hw * c
        return 1e-3 * (1 + (att + (hw * c * c if f["attention"] == "dcs" else 0)) / 1e5)
    if kind in ("stem", "head"):
        return 1e-3 * (1 + hw * f["in_chs"] * f["out_chs"] / 1e4)
    return 1e-3 * (1 + f["in_chs"] * f["out_chs"] / 1e4 + 0.5 * f["bnneck"])


def synthetic_table(space, num_classes=None) -> LatencyTable:
    """A table of :func:`synthetic_ms` values covering every entry of ``space``."""
    entries = {e.key: synthetic_ms(e.key) for e in space_entries(space, num_classes=num_classes)}
    meta = {"space": space.name, "space_hash": space.structure_hash(), "device": "synthetic",
            "device_name": "synthetic", "dtype": "fp32", "batch": 1, "method": "none",
            "num_classes": list(num_classes or [space.num_classes])}
    return LatencyTable(entries, meta, source=f"<synthetic {space.name}>")


@pytest.fixture
def tiny_table_path(tmp_path) -> Path:
    """A private copy of the measured tiny CPU table (tests may modify it)."""
    return copy_table(measured_tiny_table(), tmp_path)
