"""ImageNet pretraining of a derived network (paper section 4.2: "pretrained on ImageNet").

Standard classification recipe: SGD (nesterov) or RMSProp per recipe, linear warm-up +
cosine decay, label-smoothed CE, random-resized crop + flip, optional mixup, optional
EMA of the weights; validation top-1 / top-5 every ``eval_every`` epochs. Data:
``imagenet:/path`` (ImageFolder ``train/`` + ``val/``) or the embedded
``synthetic-imagenet``.

Run directory: ``config.yaml``, ``arch.yaml`` (classification head, no BNNeck),
``metrics.csv``, ``tensorboard/``, ``plots/curves.png``, ``checkpoint-{last,best}.pt``
and ``final/`` (``dnas-derive`` layout, ``summary.json`` with top-1/top-5 and MACs),
ready for ``dnas-retrain reid --pretrained RUN``.

NOTE: the paper does not give its ImageNet recipe; ``retrain/imagenet_*.yaml`` follow
FBNetV2-style training (the values are documented in each recipe).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from dnas.architectures import build_model, read_arch
from dnas.data.loaders import ClassificationDataConfig, build_loaders, parse_data_spec
from dnas.data.registry import classification_spec
from dnas.data.synthetic import SyntheticImageFolderConfig
from dnas.engine import RunResult
from dnas.engine.run import TrainingRun
from dnas.errors import DnasError
from dnas.losses import cross_entropy_smooth
from dnas.outputs import IMAGENET_RUN
from dnas.retrain.common import Trainer, export_final
from dnas.retrain.config import ImageNetConfig, apply_attention, suffixed
from dnas.runtime import Runtime, autocast, seed_everything

log = logging.getLogger(__name__)
KIND = IMAGENET_RUN
CURVES = ["loss", "train_acc", "val_loss", "top1", "top5", "lr"]


def build_imagenet_data(cfg: ImageNetConfig, rt: Runtime, size: int):
    """Shuffled training batches and the validation loader of a classification spec."""
    synth = SyntheticImageFolderConfig(num_classes=cfg.synthetic_classes,
                                       train_per_class=cfg.synthetic_train_per_class)
    dcfg = ClassificationDataConfig(data=classification_spec(cfg.data), size=size, batch_size=cfg.batch_size,
                                    test_batch_size=cfg.test_batch_size, workers=cfg.workers, seed=cfg.seed,
                                    rank=rt.rank, world_size=rt.world_size, synthetic_imagefolder=synth)
    if dcfg.task != parse_data_spec(dcfg.data).task:  # before anything is read
        raise DnasError(f"--data {cfg.data}: dnas-retrain imagenet needs an ImageFolder set "
                        "(imagenet:/path or synthetic-imagenet); use 'dnas-retrain reid' for Re-ID data")
    data = build_loaders(dcfg)
    if rt.is_main:
        log.info("data: %s", data.splits.summary())
    return data


class ImageNetTrainer(Trainer):
    """Classification pretraining. See :class:`dnas.retrain.common.Trainer` for the args."""

    kind = KIND
    best_key = "top1"

    def __init__(self, cfg: ImageNetConfig, rt: Runtime, data, net, progress: bool = True, arch: dict | None = None):
        batch = data.train_sampler.batch_size
        super().__init__(cfg, rt, data, net, batch * rt.world_size, progress, arch)

    def compute_loss(self, images, targets, labels, cameras=None):
        logits = self.model(images).float()  # (B, K)
        loss = cross_entropy_smooth(logits, targets, self.cfg.label_smoothing)
        return loss, {}, (logits.argmax(1) == labels).sum()

    def summary_line(self, epoch: int, m: dict) -> str:
        parts = [f"epoch {epoch}/{self.cfg.epochs}", f"loss {m['loss']:.3f}", f"train acc {100 * m['train_acc']:.1f}"]
        if "top1" in m:
            parts.append(f"val top-1 {100 * m['top1']:.1f} top-5 {100 * m['top5']:.1f}")
        return " | ".join(parts + [f"lr {m['lr']:.2e}", f"{m['epoch_time_s']:.1f}s"])

    @torch.no_grad()
    def evaluate_held_out(self) -> dict:
        model = self.deploy_model
        was = model.training
        model.eval()
        n = correct1 = correct5 = 0
        loss = 0.0
        try:
            for batch in self.data.val:
                x = batch[0].to(self.rt.device, non_blocking=True)  # (B, 3, S, S)
                y = batch[1].to(self.rt.device, non_blocking=True)
                with autocast(self.rt.device, self.cfg.amp):
                    logits = model(x).float()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, 5)
                hit = top == y[:, None]
                correct1 += int(hit[:, 0].sum())
                correct5 += int(hit.any(dim=1).sum())
                n += len(y)
        finally:
            model.train(was)
        return {"top1": correct1 / max(n, 1), "top5": correct5 / max(n, 1), "val_loss": loss / max(n, 1)}


class ImageNetRun(TrainingRun):
    """ImageNet pretraining in its directory, driven by :func:`run_imagenet` (the arguments:
    :class:`dnas.engine.run.TrainingRun`)."""

    kind = KIND
    curves = CURVES
    legacy_protocol = False

    def build_engine(self) -> ImageNetTrainer:
        cfg, run_dir = self.cfg, self.run_dir
        seed_everything(cfg.seed, cfg.deterministic)
        arch = read_arch(str(run_dir / "arch.yaml") if self.resume else cfg.arch)
        size = cfg.size or arch["input_size"][1]
        data = build_imagenet_data(cfg, self.rt, size)
        if not self.resume:
            apply_attention(arch, cfg)
            arch.update(name=suffixed(arch["name"], "-imagenet"), num_classes=data.num_classes, bnneck=False,
                        input_size=[3, size, size])
        elif arch["num_classes"] != data.num_classes:
            raise DnasError(f"{run_dir}: trained on {arch['num_classes']} classes, --data has {data.num_classes}")
        seed_everything(cfg.seed, cfg.deterministic)
        return ImageNetTrainer(cfg, self.rt, data, build_model(arch), self.progress, arch)

    def start_files(self) -> dict:
        return {"arch.yaml": self.engine.arch}

    def finish(self, result: RunResult) -> dict:
        """The export into ``RUN/final`` with the last validation figures (rank 0); returns
        its ``summary.json`` (``{}`` on the other ranks)."""
        if not self.rt.is_main:
            return {}
        cfg = self.cfg
        extra = {k: result.last_eval.get(k) for k in ("top1", "top5")}
        return export_final(self.engine, self.run_dir, self.engine.arch,
                            {**extra, "data": cfg.data, "epochs": cfg.epochs, "ema": cfg.ema})


def run_imagenet(cfg: ImageNetConfig, run_dir: Path, resume: bool = False, progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Run (or resume) ImageNet pretraining into ``run_dir`` and export ``RUN/final``
    (:class:`ImageNetRun`; ``progress``: tqdm bars on a TTY); returns the final
    ``summary.json`` content (rank 0; ``{}`` elsewhere)."""
    with ImageNetRun(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress) as run:
        run.prepare()
        return run.finish(run.fit())
