"""Retraining pieces shared by ImageNet pretraining and Re-ID finetuning (paper section
4.2): the one-phase user of the training engine (:class:`Trainer`; :mod:`dnas.engine`:
the step, the epoch loop with exact resume, checkpoints), EMA of the weights, mixup and
the final export (pretrained weights: :mod:`dnas.weights`).

Exact resume as in :mod:`dnas.engine.loop`; mixup draws from a generator seeded by the
step's position; the only other randomness (DCS-Attention's Gumbel noise) comes from the
global RNG, whose state is in every checkpoint.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from dnas.architectures import build_model
from dnas.data.seeded import seeded_loader
from dnas.data.transforms import mixup_batch
from dnas.engine import Engine, Phase, StepResult, build_optimizer
from dnas.errors import CheckpointError
from dnas.export import export_derived
from dnas.retrain.config import TrainConfig
from dnas.runtime import Runtime

log = logging.getLogger(__name__)


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


# -- the training loop --------------------------------------------------------------------
class Trainer(Engine):
    """One retraining run, a one-phase (``train``) user of :class:`dnas.engine.Engine`;
    subclasses define the loss (:meth:`compute_loss`), the evaluation and extra state.

    Args:
        cfg: the resolved recipe.
        rt: the runtime (device, rank).
        data: :class:`dnas.data.DataLoaders`.
        net: the plain network (weights initialised or pretrained).
        global_batch: images per optimizer step over all processes.
        progress: show tqdm bars (only on a TTY, rank 0).
        arch: the arch dict of ``net`` (exported at the end of the run).
    """

    def __init__(self, cfg: TrainConfig, rt: Runtime, data, net: nn.Module, global_batch: int,
                 progress: bool = True, arch: dict | None = None):
        super().__init__(cfg, rt, data, net, progress)
        self.base_lr = cfg.base_lr(global_batch)
        opt = build_optimizer(cfg.optimizer, self.net, self.base_lr, cfg.weight_decay, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, betas=cfg.adam_betas, rmsprop_alpha=cfg.rmsprop_alpha,
                              rmsprop_eps=cfg.rmsprop_eps)
        self.add_optimizer("opt", opt, cfg.lr_schedule(self.base_lr), "lr")
        self.add_phase(Phase("train", seeded_loader(data.train, data.train_sampler), data.train_sampler, ["opt"]))
        self.ema = ModelEma(self.net, cfg.ema_decay) if cfg.ema else None
        self.arch = arch

    # -- hooks -------------------------------------------------------------------------
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                     cameras: torch.Tensor | None = None):
        """Returns ``(loss, {part: scalar}, correct count)``; ``targets`` may be soft (mixup);
        ``cameras``: the images' camera ids (for models with a camera embedding)."""
        raise NotImplementedError

    def evaluate_held_out(self) -> dict:
        raise NotImplementedError

    def evaluate_final(self, done: dict) -> dict:
        """Extra metrics after the last epoch (``done``: what :meth:`evaluate_held_out`
        returned), e.g. the test split of a Re-ID run."""
        return {}

    def evaluate(self, final: bool) -> dict:
        ev = self.evaluate_held_out()
        if final:
            ev.update(self.evaluate_final(ev))
        return ev

    @property
    def deploy_model(self) -> nn.Module:
        """The weights to evaluate and export (the EMA when enabled)."""
        return self.ema.module if self.ema is not None else self.net

    def state_dict(self) -> dict:
        return {**super().state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.ema is not None:
            if not state.get("ema"):
                raise CheckpointError("the checkpoint has no EMA weights but the recipe asks for ema")
            self.ema.load_state_dict(state["ema"])

    # -- one step ----------------------------------------------------------------------
    def _mixup(self, images: torch.Tensor, labels: torch.Tensor):
        """Mixed images, soft targets and the dominant hard labels (for triplet/IB)."""
        if self.cfg.mixup_alpha <= 0:
            return images, labels, labels
        rng = np.random.default_rng([self.cfg.seed, 0x6D1, self.epoch, self.pos, self.rt.rank])
        mb = mixup_batch(images, labels, self.data.num_classes, self.cfg.mixup_alpha, rng)
        return mb.images, mb.targets, labels if mb.lam >= 0.5 else labels[mb.perm]

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor, phase: str,
                     cameras: torch.Tensor | None = None) -> StepResult:
        # NOTE: with mixup, a mixed image keeps the camera of its first image
        images, targets, hard = self._mixup(images, labels)
        return StepResult(*self.compute_loss(images, targets, hard, cameras))

    def after_step(self, phase: str) -> None:
        if self.ema is not None:
            self.ema.update(self.net)


def export_final(t: Trainer, run_dir: Path, arch: dict, extra: dict) -> dict:
    """Export the deploy weights into ``RUN/final`` the way ``dnas-derive`` does."""
    model = build_model(arch)
    model.load_state_dict({k: v.detach().cpu() for k, v in t.deploy_model.state_dict().items()})
    return export_derived(run_dir / "final", arch, model, onnx=t.cfg.export_onnx, overwrite=True,
                          extra_summary={"run": str(run_dir), **extra})
