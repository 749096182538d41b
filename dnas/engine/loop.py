"""The training engine of the search (paper section 3.4, eq. 5) and of retraining (section
4.2): the step, the positioned epoch loop with exact resume, and the run loop with
evaluation, logs, plots and checkpoints (docs/architecture.md, "The training engine").

A user subclasses :class:`Engine`, registers its optimizers (with their learning-rate
schedules) and its phases (a loader, a sampler and the optimizers a step of that phase
updates), and implements :meth:`Engine.forward_loss`. The search has two phases per
epoch (``weights``, ``arch``), retraining one (``train``).

The step: autocast, the loss and its named parts, a non-finite check that every rank
agrees on (all ranks skip together under DDP; ``max_bad_steps`` in a row, or an epoch
with no finite step of a phase, stop the run with a line naming the non-finite parts),
backward, gradient clipping, optional all-reduce of gradients outside DDP's
synchronisation, the optimizer steps, and running sums of the named parts.

Exact resume: the data of a step depend only on (seed, epoch, phase, batch position)
(:mod:`dnas.data.seeded`), and a checkpoint holds every other piece of state (model,
optimizers, position, running sums, RNGs and the user's :meth:`Engine.extra_state`), so
a run killed at any point and resumed from its last checkpoint ends bit-identical on
CPU with ``deterministic``.

Epochs are numbered from 1 in everything a user reads (progress bars, the per-epoch
line, ``metrics.csv``, TensorBoard, plots, ``summary.json``); :attr:`Engine.epoch`
counts the epochs completed.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dnas.engine.checkpoint import save_checkpoint
from dnas.engine.metrics import EpochSums, accuracy_column, metric_column, nan_parts
from dnas.engine.optim import LRSchedule
from dnas.engine.result import RunResult
from dnas.errors import CheckpointError, DnasError
from dnas.memory import check_training
from dnas.outputs import COMMANDS
from dnas.runlog import RunLogger, plot_curves
from dnas.runtime import Runtime, all_reduce_mean, autocast, epoch_batches, prepare_model, rng_state, set_rng_state

log = logging.getLogger(__name__)
PLOT_EVERY_S = 30.0  # the run's figures are redrawn at most this often (and after the last epoch)


@dataclass
class Phase:
    """A part of every epoch: its batches and the optimizers one of its steps updates.

    ``reduce_grads``: average the updated parameters' gradients over ranks by hand
    (parameters whose gradients DDP does not synchronise, e.g. the architecture's).
    """

    name: str
    loader: Any
    sampler: Any
    optimizers: Sequence[str]
    reduce_grads: bool = False


@dataclass
class StepResult:
    """What :meth:`Engine.forward_loss` returns: the loss to minimise, its named parts
    (scalars; averaged over the epoch's steps) and the correctly classified count."""

    loss: torch.Tensor
    parts: dict = field(default_factory=dict)
    correct: torch.Tensor | int = 0


class Engine:
    """The shared training machinery; see the module docstring.

    Args:
        cfg: a recipe with ``epochs``, ``amp``, ``channels_last``, ``compile``,
            ``grad_clip``, ``max_bad_steps``, ``max_steps_per_epoch``,
            ``checkpoint_every`` and ``eval_every``.
        rt: the runtime (device, rank).
        data: :class:`dnas.data.DataLoaders`.
        net: the network being trained (unwrapped).
        progress: tqdm bars (only on a TTY, rank 0).
    """

    kind = "run"
    best_key = "loss"
    best_mode: str | None = None  # "max" / "min" best_key; None: "min" for a *loss key, else "max"

    def __init__(self, cfg, rt: Runtime, data, net: nn.Module, progress: bool = True):
        self.cfg, self.rt, self.data, self.net = cfg, rt, data, net
        size = getattr(cfg, "size", None)  # ImageNet: a square crop
        check_training(net, getattr(cfg, "batch_size", None), rt.device, f"{COMMANDS.get(self.kind, self.kind)} run",
                       (size, size) if size else (getattr(cfg, "height", None), getattr(cfg, "width", None)),
                       2 if cfg.amp and rt.device.type == "cuda" else 4)
        self.progress = progress and sys.stderr.isatty() and rt.is_main
        self.model = prepare_model(net, rt, cfg.channels_last, cfg.compile)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedules: dict[str, LRSchedule] = {}
        self.lr_metrics: dict[str, str] = {}
        self.phases: dict[str, Phase] = {}
        self.epoch, self.pos, self.step, self.bad_steps = 0, 0, 0, 0
        self.phase = ""
        self.best_metric, self.best_epoch, self.last_eval = -math.inf, None, {}
        self.sums = EpochSums()  # the running sums of the current epoch
        self.part_names: set[str] = set()  # every named part a step returned (metrics of skipped phases)
        self.last_bad = "a non-finite loss"  # what the last skipped step's loss had

    # -- set-up -----------------------------------------------------------------------
    def add_optimizer(self, name: str, opt: torch.optim.Optimizer, schedule: LRSchedule, lr_metric: str) -> None:
        """Register an optimizer (its checkpoint key ``name``; ``lr_metric``: its lr column)."""
        self.optimizers[name], self.schedules[name], self.lr_metrics[name] = opt, schedule, lr_metric
        for g in opt.param_groups:
            g["lr"] = schedule.at(0.0)

    def add_phase(self, phase: Phase) -> None:
        self.phases[phase.name] = phase
        self.phase = self.phase or phase.name

    # -- hooks ------------------------------------------------------------------------
    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor, phase: str,
                     cameras: torch.Tensor | None = None) -> StepResult:
        """The loss of a batch; ``cameras``: the images' camera ids when the loader has them."""
        raise NotImplementedError

    def epoch_phases(self, epoch: int) -> list[str]:
        """The phases epoch ``epoch`` (0-based) runs, in order (default: all)."""
        return list(self.phases)

    def after_step(self, phase: str) -> None:
        """Called after the optimizer steps of a phase (e.g. EMA, center-loss centers)."""

    def evaluate(self, final: bool) -> dict:
        """Held-out metrics after an epoch (``final``: the last one); rank 0 only."""
        return {}

    def selection_score(self, metrics: dict, epoch: int) -> float | None:
        """The score ``checkpoint-best.pt`` maximises (``best_key``, negated for ``min``),
        or ``None`` when the epoch's metrics lack it."""
        if self.best_key not in metrics or metrics[self.best_key] is None:
            return None
        v = float(metrics[self.best_key])
        if math.isnan(v):
            return None
        mode = self.best_mode or ("min" if self.best_key.endswith("loss") else "max")
        return v if mode == "max" else -v

    def after_epoch_logged(self, epoch: int, metrics: dict, run_dir: Path, plot: bool = True) -> None:
        """Rank 0, after ``metrics.csv`` got the epoch's row (e.g. the search's arch history);
        ``plot``: whether the run's figures are redrawn this epoch (:data:`PLOT_EVERY_S`)."""

    def summary_line(self, epoch: int, metrics: dict) -> str:
        return f"epoch {epoch}/{self.cfg.epochs} | loss {metrics.get('loss', math.nan):.3f}"

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state`."""

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), **{k: o.state_dict() for k, o in self.optimizers.items()},
                "epoch": self.epoch, "phase": self.phase, "pos": self.pos, "step": self.step,
                "bad_steps": self.bad_steps, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "last_eval": dict(self.last_eval), "acc": self.sums.state_dict(), "rng": rng_state(),
                "sampler": {p.name: p.sampler.state_dict(self.pos if p.name == self.phase else 0)
                            for p in self.phases.values()},
                "num_classes": self.data.num_classes, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_classes"]) != self.data.num_classes:
            raise CheckpointError(f"checkpoint has {state['num_classes']} classes, the data have "
                                  f"{self.data.num_classes}")
        self.net.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state[k])
        self.epoch, self.pos, self.step = int(state["epoch"]), int(state["pos"]), int(state["step"])
        self.phase = state.get("phase") or next(iter(self.phases))
        self.bad_steps, self.best_metric = int(state["bad_steps"]), float(state["best_metric"])
        self.best_epoch = state.get("best_epoch")
        self.last_eval, self.sums = dict(state.get("last_eval") or {}), EpochSums.from_state(state["acc"], self.phases)
        set_rng_state(state["rng"])
        self.load_extra_state(state)

    def resume_line(self, run_dir: Path) -> str:
        where = f"epoch {self.epoch + 1}/{self.cfg.epochs}"
        if len(self.phases) > 1:
            where += f", {self.phase} phase"
        return f"resumed {run_dir}: {self.epoch} epochs done; continuing at {where}, batch {self.pos}"

    # -- one step ---------------------------------------------------------------------
    def column(self, phase: str, name: str) -> str:
        """The ``metrics.csv`` column of ``phase``'s part ``name`` (:func:`metric_column`)."""
        return metric_column(phase, name, list(self.phases))

    def train_step(self, batch, phase: str) -> None:
        """One optimizer step of ``phase`` on ``batch`` (images, labels, ...)."""
        images = batch[0].to(self.rt.device, non_blocking=True)  # (B, 3, H, W)
        labels = batch[1].to(self.rt.device, non_blocking=True)  # (B,)
        cameras = batch[2].to(self.rt.device, non_blocking=True) if len(batch) > 2 else None  # (B,)
        if self.cfg.channels_last and self.rt.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(self.rt.device, self.cfg.amp):
            out = self.forward_loss(images, labels, phase, cameras)
        self.part_names.update(out.parts)
        finite = all_reduce_mean(torch.isfinite(out.loss.detach()).float(), self.rt)
        if float(finite) < 1.0:  # every rank skips together (DDP)
            self.bad_steps += 1
            self.sums.add_skipped()
            self.last_bad = non_finite_parts(out)
            log.warning("epoch %d %s step %d: non-finite loss (%s), step skipped (%d in a row)", self.epoch + 1,
                        phase, self.pos, non_finite_parts(out), self.bad_steps)
            if self.bad_steps >= self.cfg.max_bad_steps:
                raise DnasError(f"{self.bad_steps} non-finite losses in a row at epoch {self.epoch + 1}, {phase} "
                                f"phase ({self.last_bad}): lower the learning rate or that part's weight, check the "
                                "data, or disable amp")
            return
        self.bad_steps = 0
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)
        out.loss.backward()
        spec = self.phases[phase]
        opts = [self.optimizers[n] for n in spec.optimizers]
        params = [p for o in opts for g in o.param_groups for p in g["params"]]
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if spec.reduce_grads and self.rt.distributed:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad, self.rt))
        for o in opts:
            o.step()
        self.after_step(phase)
        parts = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in {"loss": out.loss, **out.parts}.items()}
        self.sums.add_step(phase, parts, out.correct, len(labels))

    # -- epochs -----------------------------------------------------------------------
    def steps_in_epoch(self, phase: str) -> int:
        total = self.phases[phase].sampler.num_batches(self.epoch)
        return min(total, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else total

    def run_phase(self, phase: str, on_step) -> None:
        """Train ``phase`` from the current position to the end of its epoch."""
        spec = self.phases[phase]
        spec.sampler.set_epoch(self.epoch, start_batch=self.pos)
        total = self.steps_in_epoch(phase)
        if self.pos >= total:
            return
        self.net.train()
        desc = f"epoch {self.epoch + 1}/{self.cfg.epochs}" + (f" {phase}" if len(self.phases) > 1 else "")
        for batch in epoch_batches(spec.loader, self.pos, total, desc, self.progress):
            e = self.epoch + self.pos / max(total, 1)
            for name, o in self.optimizers.items():
                lr = self.schedules[name].at(e)
                for g in o.param_groups:
                    g["lr"] = lr
            self.train_step(batch, phase)
            self.pos += 1
            self.step += 1
            on_step()

    def run_epoch(self, on_step) -> None:
        """The rest of the current epoch: its phases from the current one on."""
        order = self.epoch_phases(self.epoch)
        start = order.index(self.phase) if self.phase in order else 0
        for phase in order[start:]:
            if phase != self.phase:
                self.phase, self.pos = phase, 0
            self.run_phase(phase, on_step)

    def end_epoch(self) -> dict:
        """The epoch's training metrics: means of the named parts over each phase's steps
        (NaN for a phase that did not run), accuracies, learning rates, skipped steps."""
        s, m, phases = self.sums, {}, list(self.phases)
        names = self.part_names | s.names()
        for phase in phases:
            n = s.count(phase)
            if n:
                m.update({metric_column(phase, name, phases): v for name, v in s.means(phase).items()})
            else:  # a phase that did not run this epoch (the search's warm-up)
                m.update(nan_parts(phase, names, phases))
            m[accuracy_column(phase)] = s.count(phase, "correct") / s.count(phase, "seen") if n else math.nan
        for name, o in self.optimizers.items():
            m[self.lr_metrics[name]] = o.param_groups[0]["lr"]
        m["skipped_steps"] = s.skipped
        return m

    def next_epoch(self) -> None:
        self.epoch, self.pos, self.sums = self.epoch + 1, 0, EpochSums()
        self.phase = next(iter(self.phases))


def non_finite_parts(out: StepResult) -> str:
    """Which named parts of a step's loss are not finite (``"ibb nan, triplet inf"``), or
    that the parts are finite and their weighted sum is not."""
    def value(v) -> float:
        return float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)

    bad = [f"{k} {value(v):g}" for k, v in out.parts.items() if not math.isfinite(value(v))]
    if bad:
        return "loss part " + ", ".join(bad)
    shown = ", ".join(f"{k} {value(v):.4g}" for k, v in out.parts.items())
    return f"loss {value(out.loss):g} though its parts are finite ({shown}): a weight of the sum overflows"


def fit(e: Engine, run_dir: Path, curve_keys: list[str], title: str) -> RunResult:
    """The run loop: train, close the epoch, evaluate, log, plot, checkpoint, print.

    Args:
        e: the engine (possibly restored from a checkpoint).
        run_dir: the run directory.
        curve_keys: metrics plotted in ``plots/curves.png``.
        title: the plots' title.

    Returns:
        The run's outcome (:class:`RunResult`; on ranks other than 0 without history).
    """
    cfg, rt = e.cfg, e.rt
    logger = RunLogger(run_dir, enabled=rt.is_main)
    logger.truncate(e.epoch)

    def on_step() -> None:
        if cfg.checkpoint_every and e.step % cfg.checkpoint_every == 0 and rt.is_main:
            save_checkpoint(run_dir, e.state_dict(), e.kind)

    last_plot = -math.inf
    while e.epoch < cfg.epochs:
        t0 = time.time()
        e.run_epoch(on_step)
        for phase in e.epoch_phases(e.epoch):  # an epoch with no finite step of a phase has nothing to report
            if e.sums.count(phase) == 0 and e.sums.skipped > 0:
                raise DnasError(f"epoch {e.epoch + 1}: every step of the {phase} phase had a non-finite loss "
                                f"({e.last_bad}): lower the learning rate or that part's weight, check the data, "
                                "or disable amp")
        metrics = e.end_epoch()
        number = e.epoch + 1  # the epoch just trained, from 1
        if rt.is_main and (number % cfg.eval_every == 0 or number == cfg.epochs):
            ev = e.evaluate(final=number == cfg.epochs)
            e.last_eval = {**ev, "epoch": number}
            metrics.update(ev)
        metrics["epoch_time_s"] = time.time() - t0
        e.next_epoch()
        if rt.is_main:
            score = e.selection_score(metrics, number)
            improved = score is not None and score > e.best_metric
            if improved:
                e.best_metric, e.best_epoch = score, number
            logger.log_epoch(number, metrics)
            # a figure takes 1-2 s to draw: redraw at the last epoch and at most every PLOT_EVERY_S
            plot = number == cfg.epochs or time.time() - last_plot >= PLOT_EVERY_S
            e.after_epoch_logged(number, metrics, run_dir, plot=plot)
            if plot:
                (run_dir / "plots").mkdir(exist_ok=True)
                plot_curves(logger.rows, curve_keys, run_dir / "plots" / "curves.png", title)
                last_plot = time.time()
            save_checkpoint(run_dir, e.state_dict(), e.kind, best=improved)
            print(e.summary_line(number, metrics), flush=True)
        if rt.distributed:
            torch.distributed.barrier()
    logger.close()
    return RunResult(history=logger.history(), best_epoch=e.best_epoch, selected_by=e.best_key,
                     last_eval=dict(e.last_eval))
