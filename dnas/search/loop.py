"""The bilevel DCS-DNAS search (paper section 3.4, eq. 5; docs/method.md sections 4-5), a
two-phase user of the training engine (:mod:`dnas.engine`).

Every epoch: weight steps (SGD) on the weight split with Gumbel-softmax choices, then
architecture steps (Adam on the width/expansion logits and the DCS ``pi`` layers) on
the architecture split with the latency cost. Loss: eq. 4 (:class:`dnas.losses.ReIDLoss`:
CE(label smoothing) + batch-hard triplet + eta * IBB), combined with the expected
latency by the recipe's form. The Gumbel temperature is multiplied by exp(-tau_decay)
after every epoch. Exact resume as in :mod:`dnas.engine.loop`; the Gumbel generator is
in every checkpoint.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from dnas.engine import Engine, LRSchedule, Phase, StepResult, build_optimizer
from dnas.evaluation import held_out_parts, ib_part
from dnas.losses import ReIDLoss
from dnas.models import Supernet
from dnas.outputs import SEARCH_RUN
from dnas.data.seeded import seeded_loader
from dnas.runtime import Runtime, seed_everything
from dnas.search.config import SearchConfig

log = logging.getLogger(__name__)
PHASES = ("weights", "arch")


def weight_schedule(cfg: SearchConfig, world_size: int) -> LRSchedule:
    """SGD lr: w_lr per 256 images, scaled linearly to the global batch; step or cosine."""
    return LRSchedule(cfg.w_lr * cfg.batch_size * world_size / 256, cfg.w_schedule, epochs=cfg.epochs,
                      milestones=tuple(cfg.w_milestones), gamma=cfg.w_gamma)


def arch_schedule(cfg: SearchConfig) -> LRSchedule:
    """Adam lr: flat during the warm-up epochs, then cosine to 0 at the last epoch."""
    return LRSchedule(cfg.a_lr, "cosine", epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_factor=1.0)


class Searcher(Engine):
    """One search run.

    Args:
        cfg: the resolved config.
        run_dir: output directory.
        rt: the runtime (device, rank).
        data: :class:`dnas.data.DataLoaders` with an architecture split.
        latency: a latency model with ``expected_ms(choice)`` or ``None``.
        space: the recipe's space (default: loaded from ``cfg``).
    """

    kind = SEARCH_RUN

    def __init__(self, cfg: SearchConfig, run_dir: Path, rt: Runtime, data, latency=None, progress: bool = True,
                 space=None):
        seed_everything(cfg.seed, cfg.deterministic)
        self.space = space if space is not None else cfg.load_space()
        super().__init__(cfg, rt, data, Supernet(self.space, num_classes=data.num_classes, bnneck=cfg.bnneck),
                         progress)
        self.run_dir, self.latency = Path(run_dir), latency
        # NOTE: one weight-decay rule for every optimizer (none on norms and biases, as the
        # FBNetV2/timm recipes do); the first search recipes decayed every weight tensor.
        self.add_optimizer("w_opt", build_optimizer("sgd", self.net.weight_parameters(), 0.0, cfg.w_weight_decay,
                                                    momentum=cfg.w_momentum, nesterov=True),
                           weight_schedule(cfg, rt.world_size), "w_lr")
        self.add_optimizer("a_opt", torch.optim.Adam(self.net.arch_parameters(), lr=cfg.a_lr,
                                                     betas=tuple(cfg.a_betas), weight_decay=cfg.a_weight_decay),
                           arch_schedule(cfg), "a_lr")
        self.add_phase(Phase("weights", seeded_loader(data.train, data.train_sampler), data.train_sampler,
                             ["w_opt"]))
        self.add_phase(Phase("arch", seeded_loader(data.arch, data.arch_sampler), data.arch_sampler, ["a_opt"],
                             reduce_grads=True))  # arch grads: mean over ranks
        self.loss = ReIDLoss.from_config(cfg, data.num_classes).to(rt.device)
        self.latency_loss = None
        if latency is not None:
            from dnas.latency.loss import LatencyLoss

            params = {"multiplicative": {"alpha": cfg.latency_alpha, "beta": cfg.latency_beta},
                      "additive": {"lam": cfg.latency_lambda, "target_ms": cfg.latency_target_ms},
                      "hard": {"lam": cfg.latency_lambda, "target_ms": cfg.latency_target_ms}}[cfg.latency_loss]
            self.latency_loss = LatencyLoss(cfg.latency_loss, params)
        self.gumbel = torch.Generator().manual_seed(cfg.seed + 7919)  # same on every rank
        # checkpoint-best.pt: the best val_mAP; without a validation split the lowest arch-split loss
        self.best_key, self.best_mode = (("val_mAP", "max") if data.validation is not None
                                         else (self.column("arch", "loss"), "min"))
        self.history: list[dict] | None = None  # arch_history.csv rows, read once (a resumed run's)

    @property
    def tau(self) -> float:
        return self.cfg.tau0 * math.exp(-self.cfg.tau_decay * self.epoch)

    def epoch_phases(self, epoch: int) -> list[str]:
        return list(PHASES) if epoch >= self.cfg.warmup_epochs else ["weights"]

    def extra_state(self) -> dict:
        return {"loss": self.loss.state_dict(), "tau": self.tau, "gumbel": self.gumbel.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.loss.to(self.rt.device)
        self.gumbel.set_state(state["gumbel"])

    def sample_choice(self, phase: str):
        """The choice of one step: during the warm-up with ``warmup_paths: uniform`` a
        uniformly drawn one-hot subnet, else a Gumbel-softmax sample (straight-through
        one-hot with ``gumbel_hard``)."""
        if phase == "weights" and self.epoch < self.cfg.warmup_epochs and self.cfg.warmup_paths == "uniform":
            return self.net.uniform_onehot_choice(generator=self.gumbel)
        return self.net.sample_choice(self.tau, hard=self.cfg.gumbel_hard, generator=self.gumbel)

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor, phase: str, cameras=None) -> StepResult:
        choice = self.sample_choice(phase)
        out = self.model(images, choice, return_features=True)
        task, parts = self.loss(out, labels, labels, accumulate=phase == "weights")
        loss = task
        if phase == "arch" and self.latency is not None:
            lat = self.latency.expected_ms(choice)
            loss = self.latency_loss(task, lat)
            parts["latency_ms"] = lat
        return StepResult(loss, parts, (out["logits"].argmax(1) == labels).sum())

    # -- the run loop's hooks (dnas.engine.fit) ------------------------------------------
    def evaluate(self, final: bool) -> dict:
        """``val_*`` metrics (the validation split) and, after the last epoch or with
        ``eval_test_every_epoch``, ``test_*`` metrics."""
        from dnas.evaluation import evaluate_reid, prefixed

        # NOTE: the supernet is evaluated under its expected architecture (softmax of the logits):
        # that is the mixture its weights and BN statistics were trained on; a one-hot argmax
        # subnet needs retraining (dnas-retrain) before its accuracy means anything.
        # With gumbel_hard the weights are trained on one-hot subnets: evaluate the argmax one.
        with torch.no_grad():
            choice = (self.net.onehot_choice(self.net.argmax_indices()) if self.cfg.gumbel_hard
                      else self.net.probs_choice())
        d, out = self.data, {}
        splits = [("val", d.val_query, d.val_gallery)] if d.validation is not None else []
        if final or self.cfg.eval_test_every_epoch:
            splits.append(("test", d.query, d.gallery))
        for name, query, gallery in splits:
            out.update(prefixed(evaluate_reid(self.net, query, gallery, self.rt.device,
                                              max_queries=self.cfg.eval_max_queries, progress=self.progress,
                                              choice=choice), name))
        return out

    def selection_score(self, metrics: dict, epoch: int) -> float | None:
        """What checkpoint-best maximises: ``val_mAP``; without a validation split, minus the
        arch-split loss (after the warm-up); never a test figure. ``None``: not this epoch."""
        if self.data.validation is None and epoch <= self.cfg.warmup_epochs:
            return None
        return super().selection_score(metrics, epoch)

    def after_epoch_logged(self, epoch: int, metrics: dict, run_dir: Path, plot: bool = True) -> None:
        """``arch_history.csv`` and ``plots/arch_heatmap.png``: the probabilities after the epoch."""
        from dnas.runlog import read_csv_rows, write_csv_rows
        from dnas.search.history import arch_probability_row, plot_arch_heatmaps

        path = run_dir / "arch_history.csv"
        if self.history is None:  # the first epoch of this process: a resume keeps the epochs before it
            self.history = [r for r in read_csv_rows(path) if int(r["epoch"]) < epoch]
        self.history.append({"epoch": epoch, **arch_probability_row(self.net)})
        write_csv_rows(path, self.history)
        if not plot:
            return
        (run_dir / "plots").mkdir(exist_ok=True)
        plot_arch_heatmaps(self.history, self.net, run_dir / "plots" / "arch_heatmap.png")

    def summary_line(self, epoch: int, m: dict) -> str:
        w, a = [self.column("weights", name) for name in ("loss", "ce", "triplet")], self.column("arch", "loss")
        parts = [f"epoch {epoch}/{self.cfg.epochs}", f"loss w {m[w[0]]:.3f}"
                 + ("" if math.isnan(m[a]) else f" a {m[a]:.3f}"), f"ce {m[w[1]]:.3f}", f"tri {m[w[2]]:.3f}"]
        parts += ib_part(m)
        if "expected_latency_ms" in m:
            parts.append(f"lat {m['expected_latency_ms']:.3f} ms")
        parts += held_out_parts(m) + [f"tau {m['tau']:.2f}", f"{m['epoch_time_s']:.1f}s"]
        return " | ".join(parts)

    def end_epoch(self) -> dict:
        """Close the IB epoch and summarise the epoch's metrics."""
        m = {"tau": self.tau, **super().end_epoch()}
        ib_stats = self.loss.ib.end_epoch()
        m["ib_loss"] = ib_stats["ib"]
        m["ibb_epoch"] = ib_stats["ibb"]
        m["sampled_latency_ms"] = m.pop(self.column("arch", "latency_ms"), float("nan"))
        if self.latency is not None:
            with torch.no_grad():
                net, lat = self.net, self.latency
                m["expected_latency_ms"] = float(lat.expected_ms(net.probs_choice()))
                m["argmax_latency_ms"] = float(lat.expected_ms(net.onehot_choice(net.argmax_indices())))
        return m
