"""Latency lookup tables and the differentiable latency cost (paper eq. 5, FBNet LUTs).

- :mod:`dnas.latency.keys`: the one key function and the entries a space needs;
- :mod:`dnas.latency.table`: :class:`LatencyTable` (CSV + meta, provenance, calibration);
- :mod:`dnas.latency.timing`: the measurement protocol (CUDA graphs / eager, windows, median);
- :mod:`dnas.latency.onnx_timing`: the same protocol in onnxruntime (``--runtime onnxruntime``,
  providers cpu, cuda, tensorrt);
- :mod:`dnas.latency.profile`, :mod:`dnas.latency.validate`: ``dnas-latency profile|validate``
  (an unfinished profile is an incomplete table ``NAME.partial.csv``, continued later);
- :mod:`dnas.latency.whole_net`: ``dnas-latency time-net`` (one whole fixed network, no table);
- :mod:`dnas.latency.cost`: :class:`LatencyModel` (expected latency of the arch distribution);
- :mod:`dnas.latency.loss`: latency-aware search losses;
- :mod:`dnas.latency.auto`: ``latency_table: auto`` (a table for this device, one profiled
  on first use, or the MACs proxy of :mod:`dnas.latency.proxy`).

Importing this package does not import torch; the torch-based parts load on first use.
"""
from __future__ import annotations

from typing import Any

from dnas.latency.keys import Entry, count_by_kind, derived_entries, latency_key, space_entries
from dnas.latency.table import LatencyTable, table_paths

_LAZY = {"LatencyModel": "dnas.latency.cost", "expected_latency": "dnas.latency.cost",
         "LatencyLoss": "dnas.latency.loss", "latency_loss": "dnas.latency.loss",
         "TimingConfig": "dnas.latency.timing"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dnas.latency' has no attribute {name!r}")


__all__ = ["Entry", "LatencyLoss", "LatencyModel", "LatencyTable", "TimingConfig", "count_by_kind",
           "derived_entries", "expected_latency", "latency_key", "latency_loss", "space_entries", "table_paths"]
