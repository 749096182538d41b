"""The training metrics of an epoch as data (docs/architecture.md, "The training engine"):
the running sums of a step's named loss parts keyed by ``(phase, name)``, the counts of
each phase, the skipped steps, and the one rule that names their ``metrics.csv`` columns
(:func:`metric_column`).

Column names (unchanged since the first runs): a one-phase run (retraining) names a part
by itself (``loss``, ``ce``); a run of several phases (the search) prefixes the phase
(``weights_loss``, ``arch_ce``). The accuracy of a phase is always ``{phase}_acc``.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

COUNTS = ("correct", "seen", "steps")


def metric_column(phase: str, name: str, phases: Sequence[str]) -> str:
    """The ``metrics.csv`` column of the named part ``name`` of ``phase`` in a run of ``phases``."""
    return name if len(phases) == 1 else f"{phase}_{name}"


def accuracy_column(phase: str) -> str:
    """The ``metrics.csv`` column of a phase's accuracy (the same in runs of one and of several phases)."""
    return f"{phase}_acc"


class EpochSums:
    """The running sums of one epoch: every named part per ``(phase, name)`` in the order
    the steps first returned them, the counts (:data:`COUNTS`) per phase and the
    skipped (non-finite) steps."""

    def __init__(self) -> None:
        self.parts: dict[tuple[str, str], float] = {}
        self.counts: dict[tuple[str, str], float] = {}
        self.skipped = 0.0

    def add_step(self, phase: str, parts: dict[str, float], correct: float, seen: float) -> None:
        """Add one finite step of ``phase``: its named parts (``loss`` first) and its counts."""
        for name, v in parts.items():
            self.parts[phase, name] = self.parts.get((phase, name), 0.0) + v
        for name, v in zip(COUNTS, (correct, seen, 1.0)):
            self.counts[phase, name] = self.counts.get((phase, name), 0.0) + float(v)

    def add_skipped(self) -> None:
        self.skipped += 1.0

    def count(self, phase: str, name: str = "steps") -> float:
        return self.counts.get((phase, name), 0.0)

    def names(self) -> set[str]:
        """Every part name summed this epoch, whatever its phase."""
        return {name for _, name in self.parts}

    def means(self, phase: str) -> dict[str, float]:
        """``{name: mean over the phase's steps}``, in first-seen order (the phase ran)."""
        n = self.count(phase)
        return {name: v / n for (p, name), v in self.parts.items() if p == phase}

    # -- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Plain lists (``weights_only`` checkpoints), the order kept."""
        return {"parts": [[p, n, v] for (p, n), v in self.parts.items()],
                "counts": [[p, n, v] for (p, n), v in self.counts.items()], "skipped": self.skipped}

    @classmethod
    def from_state(cls, state: dict, phases: Iterable[str]) -> EpochSums:
        """Restore :meth:`state_dict`, or the flat ``acc`` of checkpoints written before the
        sums were keyed by phase (``{column: sum, "phase/count": n, "skipped": n}``)."""
        s = cls()
        if "parts" in state and "counts" in state:
            s.parts = {(p, n): float(v) for p, n, v in state["parts"]}
            s.counts = {(p, n): float(v) for p, n, v in state["counts"]}
            s.skipped = float(state.get("skipped", 0.0))
            return s
        phases = list(phases)
        for key, v in state.items():
            if key == "skipped":
                s.skipped = float(v)
            elif "/" in key:
                phase, _, name = key.partition("/")
                s.counts[phase, name] = float(v)
            elif len(phases) == 1:
                s.parts[phases[0], key] = float(v)
            else:
                phase = next(p for p in phases if key.startswith(f"{p}_"))
                s.parts[phase, key[len(phase) + 1:]] = float(v)
        return s


def nan_parts(phase: str, names: set[str], phases: Sequence[str]) -> dict[str, float]:
    """The columns of a phase that did not run this epoch (the search's warm-up): NaN, not 0."""
    return {metric_column(phase, name, phases): math.nan for name in sorted({"loss"} | names)}
