"""The one training engine of ``dnas-search`` and ``dnas-retrain`` (docs/architecture.md,
"The training engine").

- :mod:`dnas.engine.optim`: the parameter-group rule, the optimizers and the
  learning-rate schedule (:class:`LRSchedule`).
- :mod:`dnas.engine.checkpoint`: atomic, ``weights_only`` checkpoint files.
- :mod:`dnas.engine.metrics`: the running sums of an epoch keyed by ``(phase, name)``
  and the one rule naming their ``metrics.csv`` columns.
- :mod:`dnas.engine.loop`: :class:`Engine`, the step and the positioned epoch loop
  with exact resume; :func:`fit`, the run loop with evaluation, logs, plots and
  checkpoints, which returns the run's outcome (:class:`RunResult`,
  :mod:`dnas.engine.result`).
- :mod:`dnas.engine.run`: :class:`dnas.engine.run.TrainingRun`, a run in its directory
  that a command drives (prepare, fit, finish).

The search (:class:`dnas.search.loop.Searcher`) is a two-phase user (``weights``,
``arch``), retraining (:class:`dnas.retrain.common.Trainer`) a one-phase user.
"""
from dnas.engine.checkpoint import BEST, LAST, load_checkpoint, save_checkpoint
from dnas.engine.loop import Engine, Phase, StepResult, fit
from dnas.engine.optim import LRSchedule, build_optimizer, param_groups
from dnas.engine.result import RunResult

__all__ = ["BEST", "LAST", "Engine", "LRSchedule", "Phase", "RunResult", "StepResult", "build_optimizer", "fit",
           "load_checkpoint", "param_groups", "save_checkpoint"]
