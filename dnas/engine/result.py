"""What a training run produced, the value :func:`dnas.engine.fit` returns
(docs/architecture.md, "The training engine"): the epochs as ``metrics.csv`` records
them, the epoch ``checkpoint-best.pt`` holds (chosen by the one rule,
:meth:`dnas.engine.Engine.selection_score`) and the last evaluation. A command's
summary and printout are made from it; the files are a record, never read back.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunResult:
    """The outcome of :func:`dnas.engine.fit`.

    Attributes:
        history: one row per epoch, numbered from 1, as ``metrics.csv`` records it
            (numbers at its precision, so that a resumed run reports what an
            uninterrupted one does; :func:`dnas.runlog.recorded_row`); a resumed run's
            earlier epochs are its record's.
        best_epoch: the epoch of ``checkpoint-best.pt`` (``None``: no epoch had a score).
        selected_by: the metric that chose it (``val_mAP``, ``arch_loss``, ``loss``, ...).
        last_eval: the last evaluation's metrics at full precision, with its ``epoch``.
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    selected_by: str = ""
    last_eval: dict = field(default_factory=dict)

    @property
    def best(self) -> dict:
        """The row of :attr:`best_epoch` (``{}``: none)."""
        return next((r for r in self.history if r.get("epoch") == self.best_epoch), {}) if self.best_epoch else {}

    @property
    def last(self) -> dict:
        """The row of the last epoch (``{}``: none)."""
        return self.history[-1] if self.history else {}
