"""The bilevel DCS-DNAS search loop (paper section 3.4, eq. 5; docs/method.md sections 4-5).

Every epoch: weight steps (SGD) on the weight split with Gumbel-softmax choices, then
architecture steps (Adam on the width/expansion logits and the DCS ``pi`` layers) on
the architecture split with the latency cost. Loss: CE(label smoothing) + batch-hard
triplet + eta * IBB, combined with the expected latency by the recipe's form. The
Gumbel temperature is multiplied by exp(-tau_decay) after every epoch.

Exact resume: the data of a step depend only on (seed, epoch, phase, batch position)
(:mod:`dnas.data.seeded`), and a checkpoint holds every other piece of state, so a run
killed at any point and resumed from its last checkpoint ends bit-identical on CPU with
``deterministic``.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch

from dnas.errors import DnasError
from dnas.ib import IBTracker
from dnas.losses import batch_hard_triplet, cross_entropy_smooth
from dnas.models import Supernet
from dnas.data.seeded import seeded_loader
from dnas.runtime import (Runtime, all_reduce_mean, autocast, epoch_batches, prepare_model, rng_state,
                          seed_everything, set_rng_state)
from dnas.search.config import SearchConfig

log = logging.getLogger(__name__)
PHASES = ("weights", "arch")


def weight_lr(cfg: SearchConfig, epoch: float, world_size: int) -> float:
    """SGD lr at a (fractional) epoch: w_lr per 256 images, scaled linearly; step or cosine."""
    base = cfg.w_lr * cfg.batch_size * world_size / 256
    if cfg.w_schedule == "cosine":
        return 0.5 * base * (1 + math.cos(math.pi * min(epoch / cfg.epochs, 1.0)))
    return base * cfg.w_gamma ** sum(epoch >= m for m in cfg.w_milestones)


def arch_lr(cfg: SearchConfig, epoch: float) -> float:
    """Adam lr: cosine over the epochs after the warm-up."""
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    t = min(max(epoch - cfg.warmup_epochs, 0.0) / span, 1.0)
    return 0.5 * cfg.a_lr * (1 + math.cos(math.pi * t))


class Searcher:
    """One search run.

    Args:
        cfg: the resolved config.
        run_dir: output directory.
        rt: the runtime (device, rank).
        data: :class:`dnas.data.DataLoaders` with an architecture split.
        latency: a latency model with ``expected_ms(choice)`` or ``None``.
    """

    def __init__(self, cfg: SearchConfig, run_dir: Path, rt: Runtime, data, latency=None, progress: bool = True):
        self.cfg, self.run_dir, self.rt, self.data, self.latency = cfg, Path(run_dir), rt, data, latency
        self.progress = progress and sys.stderr.isatty() and rt.is_main
        seed_everything(cfg.seed, cfg.deterministic)
        self.space = cfg.load_space()
        self.net = Supernet(self.space, num_classes=data.num_classes, bnneck=cfg.bnneck)
        self.model = prepare_model(self.net, rt, cfg.channels_last, cfg.compile)
        self.w_opt = torch.optim.SGD(self.net.weight_parameters(), lr=weight_lr(cfg, 0, rt.world_size),
                                     momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay, nesterov=True)
        self.a_opt = torch.optim.Adam(self.net.arch_parameters(), lr=cfg.a_lr, betas=tuple(cfg.a_betas),
                                      weight_decay=cfg.a_weight_decay)
        self.ib = IBTracker(data.num_classes, temperature=cfg.ib_temperature)
        self.latency_loss = None
        if latency is not None:
            from dnas.latency.loss import LatencyLoss

            params = {"multiplicative": {"alpha": cfg.latency_alpha, "beta": cfg.latency_beta},
                      "additive": {"lam": cfg.latency_lambda, "target_ms": cfg.latency_target_ms},
                      "hard": {"lam": cfg.latency_lambda, "target_ms": cfg.latency_target_ms}}[cfg.latency_loss]
            self.latency_loss = LatencyLoss(cfg.latency_loss, params)
        self.gumbel = torch.Generator().manual_seed(cfg.seed + 7919)  # same on every rank
        self.loaders = {"weights": seeded_loader(data.train, data.train_sampler),
                        "arch": seeded_loader(data.arch, data.arch_sampler)}
        self.samplers = {"weights": data.train_sampler, "arch": data.arch_sampler}
        # position and running state (all of it goes into checkpoints)
        self.epoch, self.phase, self.pos, self.step = 0, "weights", 0, 0
        self.bad_steps, self.best_metric = 0, -math.inf
        self.acc = self._new_accumulators()
        self.last_epoch_stats: dict = {}

    @staticmethod
    def _new_accumulators() -> dict:
        return {f"{p}_{k}": 0.0 for p in PHASES for k in ("loss", "ce", "triplet", "ibb", "correct", "seen", "steps")} | \
            {"lat_ms_sum": 0.0, "lat_steps": 0.0, "skipped": 0.0}

    # -- state ----------------------------------------------------------------------
    @property
    def tau(self) -> float:
        return self.cfg.tau0 * math.exp(-self.cfg.tau_decay * self.epoch)

    def state_dict(self) -> dict:
        return {
            "model": self.net.state_dict(), "w_opt": self.w_opt.state_dict(), "a_opt": self.a_opt.state_dict(),
            "ib": self.ib.state_dict(), "epoch": self.epoch, "phase": self.phase, "pos": self.pos,
            "step": self.step, "tau": self.tau, "bad_steps": self.bad_steps, "best_metric": self.best_metric,
            "acc": dict(self.acc), "rng": rng_state(), "gumbel": self.gumbel.get_state(),
            "sampler": {p: s.state_dict(self.pos if p == self.phase else 0) for p, s in self.samplers.items()},
            "num_classes": self.data.num_classes,
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_classes"]) != self.data.num_classes:
            raise DnasError(f"checkpoint has {state['num_classes']} classes, the data have {self.data.num_classes}")
        self.net.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.ib.load_state_dict(state["ib"])
        self.ib.to(self.rt.device)
        self.epoch, self.phase, self.pos, self.step = state["epoch"], state["phase"], state["pos"], state["step"]
        self.bad_steps, self.best_metric = state["bad_steps"], state["best_metric"]
        self.acc = dict(state["acc"])
        set_rng_state(state["rng"])
        self.gumbel.set_state(state["gumbel"])

    # -- one step -------------------------------------------------------------------
    def _forward_loss(self, images: torch.Tensor, labels: torch.Tensor, phase: str):
        cfg = self.cfg
        choice = self.net.sample_choice(self.tau, generator=self.gumbel)
        with autocast(self.rt.device, cfg.amp):
            out = self.model(images, choice, return_features=True)
        logits, feat = out["logits"].float(), out["global_feat"].float()
        ce = cross_entropy_smooth(logits, labels, cfg.label_smoothing)
        tri = batch_hard_triplet(feat, labels, cfg.triplet_margin)
        if cfg.use_ibb:
            x = out["ib_input"].float()
            ibb = self.ib.step(feat, x, labels) if phase == "weights" else self.ib.bound(feat, x, labels)
        else:
            ibb = torch.zeros((), device=logits.device)
            if phase == "weights":
                self.ib.update(feat, out["ib_input"].float(), labels)  # IB loss still reported
        task = ce + cfg.triplet_weight * tri + cfg.ib_eta * ibb
        lat = None
        loss = task
        if phase == "arch" and self.latency is not None:
            lat = self.latency.expected_ms(choice)
            loss = self.latency_loss(task, lat)
        parts = {"ce": ce, "triplet": tri, "ibb": ibb}
        correct = (logits.argmax(1) == labels).sum()
        return loss, parts, lat, correct

    def train_step(self, batch, phase: str) -> None:
        images = batch[0].to(self.rt.device, non_blocking=True)
        labels = batch[1].to(self.rt.device, non_blocking=True)
        if self.cfg.channels_last and self.rt.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        opt = self.w_opt if phase == "weights" else self.a_opt
        loss, parts, lat, correct = self._forward_loss(images, labels, phase)
        finite = all_reduce_mean(torch.isfinite(loss.detach()).float(), self.rt)
        if float(finite) < 1.0:  # every rank skips together (DDP)
            self.bad_steps += 1
            self.acc["skipped"] += 1
            log.warning("epoch %d %s step %d: non-finite loss, step skipped (%d in a row)",
                        self.epoch, phase, self.pos, self.bad_steps)
            if self.bad_steps >= self.cfg.max_bad_steps:
                raise DnasError(f"{self.bad_steps} non-finite losses in a row at epoch {self.epoch}: "
                                "lower w_lr/a_lr, check the data, or disable amp")
            return
        self.bad_steps = 0
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        if phase == "arch" and self.rt.distributed:  # arch grads: mean over ranks
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad, self.rt))
        opt.step()
        a = self.acc
        a[f"{phase}_loss"] += float(loss.detach())
        for k, v in parts.items():
            a[f"{phase}_{k}"] += float(v.detach())
        a[f"{phase}_correct"] += float(correct)
        a[f"{phase}_seen"] += len(labels)
        a[f"{phase}_steps"] += 1
        if lat is not None:
            a["lat_ms_sum"] += float(lat.detach())
            a["lat_steps"] += 1

    def _set_lrs(self, phase: str, frac: float) -> None:
        e = self.epoch + frac
        for g in self.w_opt.param_groups:
            g["lr"] = weight_lr(self.cfg, e, self.rt.world_size)
        for g in self.a_opt.param_groups:
            g["lr"] = arch_lr(self.cfg, e)

    # -- epochs ----------------------------------------------------------------------
    def run_phase(self, phase: str, on_step) -> None:
        sampler = self.samplers[phase]
        sampler.set_epoch(self.epoch, start_batch=self.pos)
        total = sampler.num_batches()
        if self.cfg.max_steps_per_epoch:
            total = min(total, self.cfg.max_steps_per_epoch)
        if self.pos >= total:
            return
        self.net.train()
        for batch in epoch_batches(self.loaders[phase], self.pos, total, f"epoch {self.epoch} {phase}", self.progress):
            self._set_lrs(phase, self.pos / max(total, 1))
            self.train_step(batch, phase)
            self.pos += 1
            self.step += 1
            on_step()

    def end_epoch(self) -> dict:
        """Close the IB epoch and summarise the epoch's metrics."""
        a = self.acc
        ib_stats = self.ib.end_epoch()
        m: dict = {"tau": self.tau, "w_lr": self.w_opt.param_groups[0]["lr"], "a_lr": self.a_opt.param_groups[0]["lr"]}
        for p in PHASES:
            n = max(a[f"{p}_steps"], 1)
            for k in ("loss", "ce", "triplet", "ibb"):
                m[f"{p}_{k}"] = a[f"{p}_{k}"] / n
            m[f"{p}_acc"] = a[f"{p}_correct"] / max(a[f"{p}_seen"], 1)
        m["ib_loss"] = ib_stats["ib"]
        m["ibb_epoch"] = ib_stats["ibb"]
        m["sampled_latency_ms"] = a["lat_ms_sum"] / a["lat_steps"] if a["lat_steps"] else float("nan")
        if self.latency is not None:
            with torch.no_grad():
                m["expected_latency_ms"] = float(self.latency.expected_ms(self.net.probs_choice()))
                m["argmax_latency_ms"] = float(self.latency.expected_ms(self.net.onehot_choice(self.net.argmax_indices())))
        m["skipped_steps"] = a["skipped"]
        return m
