"""The MACs proxy cost: a :class:`LatencyTable` over the same keys as a measured table,
whose values are the multiply-accumulates of each entry's module, not measured times.

It is what ``latency_table: auto`` falls back to when there is no table for the device
and profiling one is not affordable (:mod:`dnas.latency.auto`). Every entry of
:func:`dnas.latency.keys.space_entries` gets::

    ms = MACs of one image / PROXY_MACS_PER_MS

with ``PROXY_MACS_PER_MS = 1e7`` (one pseudo-millisecond per 10 M MACs, about one fp32
CPU core at batch 1). The constant only sets the scale of ``LAT`` (the multiplicative
loss uses ``log1p(LAT)``, the additive and hard losses divide by the target, which is
then in pseudo-ms too); the *relative* cost of two ops is their MACs ratio. What this
misses against a measured table: memory-bound ops (depthwise convs, BN, ReLU, the
attention's reshapes) and launch overhead cost time but few MACs, so narrow,
high-resolution ops look cheaper than they run, and nothing about the device is known.

The MACs are analytic, counted as fvcore counts the modules of
:func:`dnas.latency.profile.build_entry_module` (convs and linears: one MAC per
multiply-add; batch norm: two per element; the attention's matmuls; the global pool and
ReLU not counted; tests/test_latency_auto.py checks this against fvcore); a block op
without a formula here is counted with fvcore itself (slower, once per entry).
"""
from __future__ import annotations

from dnas.latency.keys import BLOCK_KERNEL, Entry, conv_out, space_entries
from dnas.latency.table import LatencyTable
from dnas.space.schema import linear_affinity_macs

PROXY_MACS_PER_MS = 1e7
PROXY_METHOD = "macs-proxy"


def _conv(h: int, w: int, cin: int, cout: int, k: int, stride: int, groups: int = 1) -> tuple[int, int, int]:
    """``(MACs, out_h, out_w)`` of conv(k, stride, padding k//2) + BN (2 per output element, as fvcore)."""
    ho, wo = conv_out(h, k, stride), conv_out(w, k, stride)
    return ho * wo * cout * (cin // groups) * k * k + 2 * ho * wo * cout, ho, wo


def entry_macs(entry: Entry) -> int:
    """MACs of one image through the module of ``entry`` (see the module docstring)."""
    f = dict(entry.fields)
    kind = entry.kind
    if kind == "stem":
        h, w = f["res"]
        return _conv(h, w, f["in_chs"], f["out_chs"], f["kernel_size"], f["stride"])[0]
    if kind == "block" and f["op"] == "ir":
        h, w = f["res"]
        cin, mid, cout, s = f["in_chs"], f["mid_chs"], f["out_chs"], f["stride"]
        pw, _, _ = _conv(h, w, cin, mid, 1, 1)
        dw, ho, wo = _conv(h, w, mid, mid, f.get("kernel_size", BLOCK_KERNEL), s, groups=mid)
        pwl, _, _ = _conv(ho, wo, mid, cout, 1, 1)
        return pw + dw + pwl
    if kind == "dcs":
        h, w = f["res"]
        n, c = h * w, f["in_chs"]
        select = f["attention"] == "dcs"
        pi = n * c * c if select else 0  # the 1x1 logits conv
        affinity = linear_affinity_macs(c, n) if f["form"] == "linear" else 2 * n * n * c  # the order run
        proj, _, _ = _conv(h, w, c, c, 3, 1, groups=c)
        return pi + affinity + proj
    if kind == "head":
        h, w = f["res"]
        return _conv(h, w, f["in_chs"], f["out_chs"], 1, 1)[0]
    if kind == "classifier":
        return f["in_chs"] * f["out_chs"] + (2 * f["in_chs"] if f["bnneck"] else 0)
    return _fvcore_macs(entry)


def _fvcore_macs(entry: Entry) -> int:  # an op added later without a formula here
    # torch on use: the formulas above (and the latency keys) are torch-free
    from dnas.latency.profile import build_entry_module
    from dnas.model_stats import count_macs

    return count_macs(build_entry_module(entry), list(entry.input_shape))


def macs_table(space, num_classes=None) -> LatencyTable:
    """The proxy table of ``space`` (every key the profiler would measure)."""
    entries = space_entries(space, num_classes=num_classes)
    values = {e.key: entry_macs(e) / PROXY_MACS_PER_MS for e in entries}
    meta = {"space": space.name, "space_hash": space.structure_hash(), "device": "proxy", "method": PROXY_METHOD,
            "macs_per_ms": PROXY_MACS_PER_MS,
            "note": f"not measured: ms = MACs of one image / {PROXY_MACS_PER_MS:g} (dnas.latency.proxy)"}
    return LatencyTable(values, meta, source=f"<MACs proxy of {space.name}>")
