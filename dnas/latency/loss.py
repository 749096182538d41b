"""Latency-aware search losses (paper eq. 5; docs/method.md section 5).

Three forms, chosen by name:

- ``multiplicative`` (FBNet, the paper's eq. 5): ``L * alpha * log(LAT)^beta`` with
  ``alpha = 0.2``, ``beta = 0.6``;
- ``additive``: ``L + lambda * LAT / target_ms``;
- ``hard``: ``L + lambda * relu(LAT / target_ms - 1)``: zero while the expected
  latency is at most ``target_ms`` ("at most 2 ms"), growing linearly above it.

``LAT`` is the expected latency in ms (:meth:`dnas.latency.LatencyModel.expected_ms`).

NOTE: FBNet's ``log(LAT)^beta`` is undefined for LAT < 1 ms (a negative base to a
fractional power) and zero at 1 ms, which kills the task loss; CPU tables of small
nets and GPU tables at batch 1 are in that range. We use ``log1p(LAT) = log(1 + LAT)``
instead: positive for every LAT > 0, smooth, with a gradient that never vanishes, and
within ``log(1 + 1/LAT)`` of ``log(LAT)`` for large LAT (< 0.1 above 10 ms). Clamping
LAT to ``>= 1 + eps`` was rejected: below 1 ms it would make the latency gradient zero,
so the search would stop trading accuracy for speed exactly on small tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from dnas.errors import ConfigError, brief

DEFAULTS: dict[str, dict[str, float | None]] = {
    "multiplicative": {"alpha": 0.2, "beta": 0.6},
    "additive": {"lam": 0.1, "target_ms": None},
    "hard": {"lam": 1.0, "target_ms": None},
}


@dataclass
class LatencyLoss:
    """A latency loss chosen by name, with its parameters checked once.

    Args:
        kind: ``multiplicative``, ``additive`` or ``hard``.
        params: overrides of :data:`DEFAULTS` for that kind (``alpha``, ``beta`` /
            ``lam``, ``target_ms``); ``target_ms`` is required for additive and hard.

    Raises:
        ConfigError: unknown kind or parameter, or a missing/invalid value.
    """

    kind: str = "multiplicative"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DEFAULTS:
            raise ConfigError(f"latency loss {self.kind!r}: expected one of {', '.join(DEFAULTS)}")
        unknown = set(self.params) - set(DEFAULTS[self.kind])
        if unknown:
            raise ConfigError(f"latency loss {self.kind!r}: unknown parameter(s) {sorted(unknown)} "
                              f"(allowed: {', '.join(DEFAULTS[self.kind])})")
        merged = {**DEFAULTS[self.kind], **{k: v for k, v in self.params.items() if v is not None}}
        for name, value in merged.items():
            if value is None:
                raise ConfigError(f"latency loss {self.kind!r}: parameter {name!r} is required")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
                raise ConfigError(f"latency loss {self.kind!r}: parameter {name!r} is {brief(value)}, "
                                  "expected a number >= 0 (finite)")
        if "target_ms" in merged and merged["target_ms"] <= 0:
            raise ConfigError(f"latency loss {self.kind!r}: target_ms must be > 0, "
                              f"got {brief(merged['target_ms'])}")
        self.resolved = {k: float(v) for k, v in merged.items()}

    def __call__(self, task_loss: torch.Tensor, lat_ms: torch.Tensor) -> torch.Tensor:
        """Combine the task loss with the expected latency (both scalar tensors)."""
        p = self.resolved
        lat = lat_ms.to(task_loss.dtype) if torch.is_tensor(lat_ms) else torch.as_tensor(lat_ms, dtype=task_loss.dtype)
        if self.kind == "multiplicative":
            return task_loss * p["alpha"] * torch.log1p(lat.clamp_min(0.0)).pow(p["beta"])
        if self.kind == "additive":
            return task_loss + p["lam"] * lat / p["target_ms"]
        return task_loss + p["lam"] * torch.relu(lat / p["target_ms"] - 1.0)

    def penalty_only(self, lat_ms: torch.Tensor) -> torch.Tensor:
        """The latency factor/term alone (for logging): the multiplier or the added term."""
        one = torch.ones((), dtype=torch.float32, device=lat_ms.device)
        if self.kind == "multiplicative":
            return self(one, lat_ms)
        return self(one, lat_ms) - 1.0


def latency_loss(task_loss: torch.Tensor, lat_ms: torch.Tensor, kind: str = "multiplicative",
                 **params: float) -> torch.Tensor:
    """Search loss from the task loss and the expected latency.

    Args:
        task_loss: scalar task loss ``L`` (CE + triplet + eta * IBB).
        lat_ms: scalar expected latency in ms.
        kind: ``multiplicative`` | ``additive`` | ``hard``.
        **params: ``alpha``, ``beta`` (multiplicative); ``lam``, ``target_ms``
            (additive, hard).

    Returns:
        The scalar search loss.
    """
    return LatencyLoss(kind, params)(task_loss, lat_ms)
