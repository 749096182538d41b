"""Trainer pieces shared by ImageNet pretraining and Re-ID finetuning (paper section 4.2):
optimizer with one explicit weight-decay rule, EMA of the weights, mixup, checkpoints,
pretrained-weight loading, the per-step learning rate (warm-up + cosine or step, from
:meth:`TrainConfig.lr_at`) and the epoch/step loop with exact resume.

Exact resume: the data of a step depend only on (seed, epoch, batch position)
(:mod:`dnas.data.seeded`); mixup draws from a generator seeded by the same position;
the only other randomness (DCS-Attention's Gumbel noise) comes from the global RNG,
whose state is in every checkpoint with the model, optimizer(s), EMA, IB tracker,
position and running sums. A run killed at any point and resumed from its last
checkpoint ends bit-identical on CPU with ``deterministic``.
"""
from __future__ import annotations

import copy
import logging
import math
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from dnas.errors import CheckpointError, DnasError
from dnas.io import atomic_torch_save, safe_torch_load
from dnas.retrain.config import TrainConfig
from dnas.data.seeded import seeded_loader
from dnas.runtime import (Runtime, all_reduce_mean, autocast, epoch_batches, prepare_model, rng_state,
                          set_rng_state)

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
DROP_PREFIXES = ("head.classifier.", "head.neck.")  # task-specific head: never transferred


# -- schedule and optimizer ------------------------------------------------------------
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups by one rule: weight decay on tensors with >= 2 dims (conv/linear
    weights), none on biases and norm parameters; frozen tensors are left out."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: TrainConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.rmsprop_alpha, eps=cfg.rmsprop_eps,
                                   momentum=cfg.momentum)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=tuple(cfg.adam_betas))


class ModelEma:
    """Exponential moving average of a model's weights and buffers.

    ``ema = d * ema + (1 - d) * w`` after every optimizer step, with the warm-up
    ``d = min(decay, (1 + n) / (10 + n))`` (n = updates so far); integer buffers are
    copied.

    Args:
        model: the (unwrapped) model.
        decay: the EMA decay.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                e.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


# -- checkpoints and pretrained weights -------------------------------------------------
def save_checkpoint(run_dir: Path, state: dict, kind: str, best: bool = False) -> None:
    """Write ``checkpoint-last.pt`` (and ``-best.pt``) atomically."""
    state = {"version": CHECKPOINT_VERSION, "kind": kind, **state}
    atomic_torch_save(state, Path(run_dir) / LAST)
    if best:
        atomic_torch_save(state, Path(run_dir) / BEST)


def load_checkpoint(path: Path, kind: str | None = None) -> dict:
    """Load a retrain checkpoint (a file, or a run directory's ``checkpoint-last.pt``).

    Raises:
        CheckpointError: missing, unreadable, another format, or another kind of run.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise CheckpointError(f"{path}: not a dnas-retrain checkpoint (version {CHECKPOINT_VERSION})")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"{path}: a {state.get('kind')} checkpoint, expected {kind}")
    return state


def read_weights(source: str | Path) -> tuple[dict, str]:
    """Weights to start from: an ``imagenet`` run (its ``final/model.pt``, else its last
    checkpoint, EMA weights preferred), a ``dnas-derive`` directory (``model.pt``), a
    retrain checkpoint file or a plain state-dict file.

    Returns:
        ``(state_dict, description of the file read)``.

    Raises:
        CheckpointError: nothing usable at ``source``.
    """
    path = Path(source)
    if path.is_dir():
        for cand in (path / "final" / "model.pt", path / LAST, path / "model.pt"):
            if cand.is_file():
                path = cand
                break
        else:
            raise CheckpointError(f"{source}: no final/model.pt, {LAST} or model.pt in this directory")
    state = safe_torch_load(path)
    if isinstance(state, Mapping) and state.get("version") == CHECKPOINT_VERSION and "model" in state:
        if state.get("ema"):
            return dict(state["ema"]["model"]), f"{path} (EMA weights)"
        return dict(state["model"]), str(path)
    if not (isinstance(state, Mapping) and state and all(torch.is_tensor(v) for v in state.values())):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor) or a dnas-retrain checkpoint")
    return dict(state), str(path)


def load_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """Load transferable weights into ``model``; drop the source's classifier and BNNeck.

    DCS-Attention modules present on one side only (``use_dcs`` differs) are dropped
    or left freshly initialised; any other missing or extra key, or any shape
    mismatch, is an error.

    Returns:
        ``{"source", "loaded", "dropped", "fresh"}``: keys loaded, source keys dropped,
        model keys left at their initialisation.

    Raises:
        CheckpointError: the weights do not fit the architecture (naming key and shapes).
    """
    own = model.state_dict()
    dropped = sorted(k for k in state if k.startswith(DROP_PREFIXES) or (k not in own and k.startswith("dcs.")))
    unexpected = sorted(k for k in state if k not in own and k not in dropped)
    fresh = sorted(k for k in own if (k not in state or k.startswith(DROP_PREFIXES))
                   and (k.startswith(DROP_PREFIXES) or k.startswith("dcs.")))
    missing = sorted(k for k in own if k not in state and k not in fresh)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: pretrained weights do not fit the architecture ({what}); "
                              "pretrain the same derived arch")
    loaded = sorted(k for k in own if k not in fresh)
    for k in loaded:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(state[k].shape)}, the architecture "
                                  f"needs {tuple(own[k].shape)}; pretrain the same derived arch")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return {"source": source, "loaded": loaded, "dropped": dropped, "fresh": fresh}


# -- the training loop --------------------------------------------------------------------
class Trainer:
    """One retraining run; subclasses define the loss, the evaluation and extra state.

    Args:
        cfg: the resolved recipe.
        rt: the runtime (device, rank).
        data: :class:`dnas.data.DataLoaders`.
        net: the plain network (weights initialised or pretrained).
        global_batch: images per optimizer step over all processes.
        progress: show tqdm bars (only on a TTY, rank 0).
    """

    kind = "retrain"
    best_key = "loss"
    best_mode: str | None = None  # "max" / "min" best_key; None: "min" for a *loss key, else "max"

    def __init__(self, cfg: TrainConfig, rt: Runtime, data, net: nn.Module, global_batch: int,
                 progress: bool = True):
        self.cfg, self.rt, self.data = cfg, rt, data
        self.progress = progress and sys.stderr.isatty() and rt.is_main
        self.net = net
        self.model = prepare_model(net, rt, cfg.channels_last, cfg.compile)
        self.base_lr = cfg.base_lr(global_batch)
        self.opt = build_optimizer(cfg, self.net, self.base_lr)
        self.ema = ModelEma(self.net, cfg.ema_decay) if cfg.ema else None
        self.sampler = data.train_sampler
        self.loader = seeded_loader(data.train, self.sampler)
        self.epoch, self.pos, self.step, self.bad_steps = 0, 0, 0, 0
        self.best_metric, self.best_epoch, self.last_eval = -math.inf, -1, {}
        self.acc: dict = {}

    # -- hooks -------------------------------------------------------------------------
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor):
        """Returns ``(loss, {part: scalar}, correct count)``; ``targets`` may be soft (mixup)."""
        raise NotImplementedError

    def evaluate(self) -> dict:
        raise NotImplementedError

    def evaluate_final(self, done: dict) -> dict:
        """Extra metrics after the last epoch (``done``: what :meth:`evaluate` returned),
        e.g. the test split of a Re-ID run."""
        return {}

    def selection_score(self, metrics: dict) -> float | None:
        """The score checkpoint-best.pt maximises (``best_key``, negated for ``min``), or
        ``None`` when the epoch's metrics lack it."""
        if self.best_key not in metrics:
            return None
        v = float(metrics[self.best_key])
        mode = self.best_mode or ("min" if self.best_key.endswith("loss") else "max")
        return v if mode == "max" else -v

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state`."""

    def after_backward(self) -> None:
        """Extra optimizer steps (e.g. the center-loss centers)."""

    @property
    def deploy_model(self) -> nn.Module:
        """The weights to evaluate and export (the EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.net

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "opt": self.opt.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "epoch": self.epoch, "pos": self.pos, "step": self.step, "bad_steps": self.bad_steps,
                "best_metric": self.best_metric, "best_epoch": self.best_epoch, "last_eval": dict(self.last_eval),
                "acc": dict(self.acc),
                "rng": rng_state(), "sampler": self.sampler.state_dict(self.pos),
                "num_classes": self.data.num_classes, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_classes"]) != self.data.num_classes:
            raise CheckpointError(f"checkpoint has {state['num_classes']} classes, the data have "
                                  f"{self.data.num_classes}")
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        if self.ema is not None:
            if not state.get("ema"):
                raise CheckpointError("the checkpoint has no EMA weights but the recipe asks for ema")
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.pos, self.step = int(state["epoch"]), int(state["pos"]), int(state["step"])
        self.bad_steps, self.best_metric = int(state["bad_steps"]), float(state["best_metric"])
        self.best_epoch = int(state.get("best_epoch", -1))
        self.last_eval, self.acc = dict(state["last_eval"]), dict(state["acc"])
        set_rng_state(state["rng"])
        self.load_extra_state(state)

    # -- one step ----------------------------------------------------------------------
    def _mixup(self, images: torch.Tensor, labels: torch.Tensor):
        """Mixed images, soft targets and the dominant hard labels (for triplet/IB)."""
        from dnas.data.transforms import mixup_batch

        if self.cfg.mixup_alpha <= 0:
            return images, labels, labels
        rng = np.random.default_rng([self.cfg.seed, 0x6D1, self.epoch, self.pos, self.rt.rank])
        mb = mixup_batch(images, labels, self.data.num_classes, self.cfg.mixup_alpha, rng)
        return mb.images, mb.targets, labels if mb.lam >= 0.5 else labels[mb.perm]

    def train_step(self, batch) -> None:
        images = batch[0].to(self.rt.device, non_blocking=True)  # (B, 3, H, W)
        labels = batch[1].to(self.rt.device, non_blocking=True)  # (B,)
        if self.cfg.channels_last and self.rt.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        images, targets, hard = self._mixup(images, labels)
        with autocast(self.rt.device, self.cfg.amp):
            loss, parts, correct = self.compute_loss(images, targets, hard)
        finite = all_reduce_mean(torch.isfinite(loss.detach()).float(), self.rt)
        a = self.acc
        if float(finite) < 1.0:  # every rank skips together (DDP)
            self.bad_steps += 1
            a["skipped"] = a.get("skipped", 0.0) + 1
            log.warning("epoch %d step %d: non-finite loss, step skipped (%d in a row)", self.epoch, self.pos,
                        self.bad_steps)
            if self.bad_steps >= self.cfg.max_bad_steps:
                raise DnasError(f"{self.bad_steps} non-finite losses in a row at epoch {self.epoch}: "
                                "lower lr, check the data, or disable amp")
            return
        self.bad_steps = 0
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.after_backward()
        if self.ema is not None:
            self.ema.update(self.net)
        for k, v in {"loss": loss, **parts}.items():
            a[k] = a.get(k, 0.0) + float(v.detach())
        a["correct"] = a.get("correct", 0.0) + float(correct)
        a["seen"] = a.get("seen", 0.0) + len(labels)
        a["steps"] = a.get("steps", 0.0) + 1

    def steps_in_epoch(self) -> int:
        total = self.sampler.num_batches(self.epoch)
        return min(total, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else total

    def run_epoch(self, on_step) -> None:
        """Train from the current position to the end of the epoch."""
        self.sampler.set_epoch(self.epoch, start_batch=self.pos)
        total = self.steps_in_epoch()
        if self.pos >= total:
            return
        self.net.train()
        for batch in epoch_batches(self.loader, self.pos, total, f"epoch {self.epoch}", self.progress):
            lr = self.cfg.lr_at(self.epoch + self.pos / max(total, 1), self.base_lr)
            for g in self.opt.param_groups:
                g["lr"] = lr
            self.train_step(batch)
            self.pos += 1
            self.step += 1
            on_step()

    def end_epoch(self) -> dict:
        """The epoch's training metrics (means over its steps)."""
        a = self.acc
        n = max(a.get("steps", 0.0), 1.0)
        m = {k: v / n for k, v in a.items() if k not in ("correct", "seen", "steps", "skipped")}
        m["train_acc"] = a.get("correct", 0.0) / max(a.get("seen", 0.0), 1.0)
        m["lr"] = self.opt.param_groups[0]["lr"]
        m["skipped_steps"] = a.get("skipped", 0.0)
        return m


# -- run directory -------------------------------------------------------------------------
def fit(t: Trainer, run_dir: Path, curve_keys: list[str], summary_line) -> None:
    """The epoch loop: train, close the epoch, evaluate, log, plot, checkpoint.

    Args:
        t: the trainer (possibly restored from a checkpoint).
        run_dir: the run directory.
        curve_keys: metrics plotted in ``plots/curves.png``.
        summary_line: ``(epoch, metrics) -> str`` printed after every epoch.
    """
    import time

    from dnas.runlog import RunLogger, plot_curves

    cfg, rt = t.cfg, t.rt
    logger = RunLogger(run_dir, enabled=rt.is_main)
    logger.truncate(t.epoch)

    def on_step() -> None:
        if cfg.checkpoint_every and t.step % cfg.checkpoint_every == 0 and rt.is_main:
            save_checkpoint(run_dir, t.state_dict(), t.kind)

    while t.epoch < cfg.epochs:
        t0 = time.time()
        t.run_epoch(on_step)
        metrics = t.end_epoch()
        if rt.is_main and ((t.epoch + 1) % cfg.eval_every == 0 or t.epoch + 1 == cfg.epochs):
            ev = t.evaluate()
            if t.epoch + 1 == cfg.epochs:
                ev.update(t.evaluate_final(ev))
            t.last_eval = {**ev, "epoch": t.epoch}
            metrics.update({k: v for k, v in t.last_eval.items() if k != "epoch"})
        metrics["epoch_time_s"] = time.time() - t0
        done = t.epoch
        t.epoch, t.pos, t.acc = t.epoch + 1, 0, {}
        if rt.is_main:
            score = t.selection_score(metrics)
            improved = score is not None and score > t.best_metric
            if improved:
                t.best_metric, t.best_epoch = score, done
            logger.log_epoch(done, metrics)
            (run_dir / "plots").mkdir(exist_ok=True)
            plot_curves(logger.rows, curve_keys, run_dir / "plots" / "curves.png", f"{t.kind} {run_dir.name}")
            save_checkpoint(run_dir, t.state_dict(), t.kind, best=improved)
            print(summary_line(done, metrics), flush=True)
        if rt.distributed:
            torch.distributed.barrier()
    logger.close()


def export_final(t: Trainer, run_dir: Path, arch: dict, extra: dict) -> dict:
    """Export the deploy weights into ``RUN/final`` the way ``dnas-derive`` does."""
    from dnas.export import build_model, export_derived

    model = build_model(arch)
    model.load_state_dict({k: v.detach().cpu() for k, v in t.deploy_model.state_dict().items()})
    return export_derived(run_dir / "final", arch, model, onnx=t.cfg.export_onnx, overwrite=True,
                          extra_summary={"run": str(run_dir), **extra})
