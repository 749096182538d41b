"""Retraining recipes (paper section 4.2; docs/method.md sections 4 and 6) as config
dataclasses: :class:`ImageNetConfig` (pretraining) and :class:`ReIDConfig`
(finetuning). Recipes in ``retrain/*.yaml`` set any of these keys; ``--set key=value``
overrides them. The resolved config is written to the run directory.

NOTE: the paper gives the optimizer (Adam for Re-ID), the loss (eq. 4) and the
augmentations, but not the learning rates, epochs, warm-up or decay; the recipes
use the usual values of the Re-ID "bag of tricks" (Adam 3.5e-4, 10 warm-up epochs,
x0.1 at epochs 40 and 70 of 120) and of FBNetV2-style ImageNet training.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from dnas.engine.config import ReIDRunConfig, RunConfig
from dnas.engine.optim import LRSchedule
from dnas.space.schema import attention_from_keys


@dataclass
class TrainConfig(RunConfig):
    """Keys shared by both modes (and those of every run: :class:`dnas.engine.config.RunConfig`).

    Model: arch, the derived network (a ``dnas-derive`` directory, an ``arch.yaml`` or
        a fixed backbone's short name); height/width, attention and attention_form
        default to the arch's; the DCS ``pi`` layers train with the weights.
    Optimizer: ``sgd`` (momentum, nesterov), ``rmsprop`` (rmsprop_alpha, rmsprop_eps,
        momentum), ``adam`` / ``adamw`` (adam_betas). lr is the learning rate of a
        global batch of ``lr_reference_batch`` images, scaled linearly to the actual
        global batch (0: lr is used as is). weight_decay applies to weights with two or
        more dimensions (conv, linear), not to biases and norm parameters.
    Schedule (per step): linear warm-up from ``warmup_factor * lr`` over
        warmup_epochs, then ``cosine`` (down to ``min_lr_ratio * lr``) or ``step``
        (x gamma at each of milestones, in epochs).
    Regularisation: mixup_alpha (Beta(a, a) mixup; 0 = off), ema (keep an exponential
        moving average of the weights with ema_decay; evaluated and exported instead of
        the raw weights).
    Export: export_onnx (the final export also writes and checks ``model.onnx``).
    """

    arch: str = ""
    epochs: int = 120
    workers: int = 4
    # optimizer
    optimizer: Literal["sgd", "rmsprop", "adam", "adamw"] = "adam"
    lr: float = 3.5e-4
    lr_reference_batch: int = 0
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    rmsprop_alpha: float = 0.9
    rmsprop_eps: float = 1e-3
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # schedule
    warmup_epochs: float = 10.0
    warmup_factor: float = 0.01
    schedule: Literal["cosine", "step"] = "step"
    milestones: list[int] = field(default_factory=lambda: [40, 70])
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    # regularisation
    mixup_alpha: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9998
    eval_every: int = 10
    export_onnx: bool = True

    def base_lr(self, global_batch: int) -> float:
        """``lr`` scaled linearly from ``lr_reference_batch`` to the global batch (0: unscaled)."""
        return self.lr * global_batch / self.lr_reference_batch if self.lr_reference_batch else self.lr

    def lr_schedule(self, base: float):
        """The per-step learning rate (:class:`dnas.engine.LRSchedule`): linear warm-up from
        ``warmup_factor * base``, then cosine or step decay.

        Args:
            base: the peak learning rate (:meth:`base_lr`).
        """
        return LRSchedule(base, self.schedule, epochs=self.epochs, warmup_epochs=self.warmup_epochs,
                          warmup_factor=self.warmup_factor, milestones=tuple(self.milestones), gamma=self.gamma,
                          min_lr_ratio=self.min_lr_ratio)

    def checks(self) -> list[tuple[bool, str, str]]:
        return [(bool(self.arch), "arch", "a derived architecture (--arch DIR or arch.yaml)"), *super().checks(),
                (self.lr > 0, "lr", "a positive learning rate"),
                (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
                (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs",
                 f"a number in [0, epochs={self.epochs}], got {self.warmup_epochs}"),
                (0 < self.warmup_factor <= 1, "warmup_factor", "a number in (0, 1]"),
                (0 < self.gamma <= 1, "gamma", "a number in (0, 1]"),
                (0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a number in [0, 1]"),
                (self.mixup_alpha >= 0, "mixup_alpha", "a number >= 0 (0 disables mixup)"),
                (0 < self.ema_decay < 1, "ema_decay", "a number in (0, 1)"),
                (len(self.adam_betas) == 2, "adam_betas", "two numbers [beta1, beta2]")]


@dataclass
class ImageNetConfig(TrainConfig):
    """``dnas-retrain imagenet``: classification pretraining of a derived network.

    Data: ``imagenet:/path`` (ImageFolder ``train/`` and ``val/``) or
    ``synthetic-imagenet`` (``synthetic`` is read as ``synthetic-imagenet`` here).
    batch_size (per process), test_batch_size; size: the square crop side (default:
    the arch's input height; random-resized crop + flip for training, resize + center
    crop for validation). synthetic_classes / synthetic_train_per_class: size of the
    embedded set. Validation top-1 / top-5 every ``eval_every`` epochs.

    NOTE: crops are square (the standard ImageNet recipe); the network is fully
    convolutional with global pooling, so its weights load into a Re-ID model of any
    input size.
    """

    data: str = "synthetic-imagenet"
    size: Optional[int] = None
    batch_size: int = 256
    test_batch_size: int = 256
    optimizer: Literal["sgd", "rmsprop", "adam", "adamw"] = "sgd"
    lr: float = 0.1
    lr_reference_batch: int = 256
    weight_decay: float = 4e-5
    epochs: int = 360
    warmup_epochs: float = 5.0
    schedule: Literal["cosine", "step"] = "cosine"
    eval_every: int = 1
    synthetic_classes: int = 10
    synthetic_train_per_class: int = 60

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.batch_size >= 2 and self.test_batch_size >= 1, "batch_size", "an integer >= 2"),
            (self.size is None or self.size >= 16, "size", "at least 16 pixels"),
            (self.synthetic_classes >= 2 and self.synthetic_train_per_class >= 1, "synthetic_classes",
             "at least 2 classes and 1 image per class"),
        ]


@dataclass
class ReIDConfig(TrainConfig, ReIDRunConfig):
    """``dnas-retrain reid``: Re-ID finetuning of a derived network (eq. 4); the Re-ID keys
    (PK batches, the loss, the validation protocol) are :class:`dnas.engine.config.ReIDRunConfig`'s.

    Data: a Re-ID ``--data`` spec (``market1501:/path``, ..., ``synthetic``);
        test_batch_size (the augmentation keys are ReIDRunConfig's).
    Model: pretrained: weights to start from (an ``imagenet`` run directory, a
        ``dnas-derive`` directory, or a ``.pt`` state dict / checkpoint); the classifier
        (and BNNeck) of the source are dropped.
    Loss: eq. 4 with soft_margin (the soft-margin triplet) and center_weight * center
        loss (0 = off; centers trained by SGD with center_lr).
    Evaluation: every eval_every epochs and at the end (mAP, CMC rank-1/5/10, mINP);
        eval_flip averages flipped features. rerank: the final test evaluation (and
        ``--eval-only``) also reports k-reciprocal re-ranked figures
        (``test_rerank_*``, summary.json ``rerank``), beside the plain ones, which stay
        the reported figures. Without a validation split checkpoint-best.pt is the
        lowest training loss.
    """

    test_batch_size: int = 128
    pretrained: Optional[str] = None
    soft_margin: bool = False
    center_weight: float = 0.0
    center_lr: float = 0.5
    eval_flip: bool = False
    rerank: bool = False

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.center_weight >= 0 and self.center_lr > 0, "center_weight/center_lr",
             "center_weight >= 0 and center_lr > 0"),
        ]


def suffixed(name: str, suffix: str) -> str:
    """``name`` ending in ``suffix`` (added once)."""
    return name if name.endswith(suffix) else name + suffix


def apply_attention(arch: dict, cfg: TrainConfig) -> None:
    """Set the arch dict's ``attention``/``attention_form`` from the recipe, in place.

    The arch's own setting (``attention``, or the legacy ``use_dcs``) stays unless the
    recipe names one; the legacy key is dropped so the two cannot disagree.
    """
    own = attention_from_keys(arch.pop("attention", None), arch.pop("use_dcs", None), "arch") or "dcs"
    arch["attention"] = attention_from_keys(cfg.attention, cfg.use_dcs, "retrain recipe") or own
    if cfg.attention_form:
        arch["attention_form"] = cfg.attention_form
