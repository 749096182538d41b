"""Random architectures at a given latency: the equal-cost baseline of a search (paper
section 3.4; docs/method.md section 10, "Does the search beat chance?").

:func:`sample_in_band` draws architectures uniformly from a space and keeps those whose
lookup-table latency lies within ``tolerance`` (relative) of a target. Draw ``i`` of a
seed is a fixed function of ``(seed, i)``, so two bands that overlap share the
architectures of their overlap in the same order: a benchmark that moves its band a
little keeps most of its (already retrained) baselines.
"""
from __future__ import annotations

import json
import math
from typing import Callable

from dnas.errors import DnasError

MAX_DRAWS = 200_000


def arch_key(indices: dict) -> str:
    """A stable text key of an architecture's index choices (``{axis: [index per unit]}``)."""
    return json.dumps({k: [int(i) for i in v] for k, v in sorted(indices.items())}, separators=(",", ":"))


def sample_in_band(space, arch_ms: Callable[[dict], float], latency_ms: float, tolerance: float = 0.03,
                   count: int = 8, seed: int = 0, exclude: set[str] | None = None,
                   max_draws: int = MAX_DRAWS) -> list[tuple[dict, float]]:
    """``count`` distinct random architectures whose latency is within ``tolerance`` of ``latency_ms``.

    Args:
        space: a :class:`dnas.space.SearchSpace`.
        arch_ms: latency of index choices in ms (e.g. ``LatencyModel.arch_ms``).
        latency_ms: the band's centre.
        tolerance: relative half-width of the band (0.03: +-3%).
        count: how many architectures.
        seed: the draw sequence.
        exclude: :func:`arch_key` of architectures not to return (e.g. the searched ones).
        max_draws: draws before giving up.

    Returns:
        ``[(indices, latency_ms)]`` in draw order.

    Raises:
        DnasError: fewer than ``count`` distinct architectures found in the band.
    """
    if not (latency_ms > 0 and 0 < tolerance < 1 and count >= 1):
        raise DnasError(f"latency band {latency_ms!r} ms +- {tolerance!r}, count {count!r}: expected a positive "
                        "latency, a tolerance in (0, 1) and a count >= 1")
    lo, hi = latency_ms * (1 - tolerance), latency_ms * (1 + tolerance)
    seen, found = set(exclude or ()), []
    total = math.prod(len(sizes) for axis in space.axes.values() for sizes in axis.sizes) + len(seen)
    lat_min = lat_max = None
    for i in range(max_draws):
        if len(seen) >= total:  # a small space: every architecture has been seen
            break
        indices = space.sample_indices("random", seed=seed * 1_000_003 + i)
        key = arch_key(indices)
        if key in seen:
            continue
        seen.add(key)
        lat = float(arch_ms(indices))
        lat_min = lat if lat_min is None else min(lat_min, lat)
        lat_max = lat if lat_max is None else max(lat_max, lat)
        if lo <= lat <= hi:
            found.append((indices, lat))
            if len(found) == count:
                return found
    span = f"; the draws spanned {lat_min:.3f}-{lat_max:.3f} ms" if lat_min is not None else ""
    raise DnasError(f"only {len(found)} of {count} distinct architectures of space {space.name!r} lie within "
                    f"{latency_ms:.3f} ms +- {tolerance:.1%} ({lo:.3f}-{hi:.3f} ms) after {i + 1} draws{span}: "
                    "widen --tolerance or move --latency-ms")
