"""The recipe keys every training run shares (paper sections 3.4 and 4.2), as config
dataclasses the search and retraining recipes extend:

- :class:`RunConfig`: data, input size, attention modules, label smoothing and the
  system keys the engine reads (device, amp, epochs, checkpoints, ...);
- :class:`ReIDRunConfig`: the Re-ID keys of the search and of Re-ID retraining (PK
  batches, the eq. 4 loss, the validation protocol, the embedded set).

Each subclass adds its keys and its checks (:meth:`RunConfig.checks`); ``validate``
raises one :class:`dnas.errors.ConfigError` naming the key and what was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class RunConfig:
    """Keys of every training run.

    Data and model: data (``--data`` spec: ``synthetic``, ``market1501:/path``, ...;
        :mod:`dnas.data.registry`), height/width (input size; default: the space's or
        the arch's), workers (DataLoader workers), attention (``none``, ``self`` or
        ``dcs`` modules; default: the space's or arch's), attention_form (``linear`` or
        ``softmax``), use_dcs (the legacy boolean: false = attention none),
        label_smoothing (of the CE).
    System: epochs, seed, deterministic (deterministic kernels: bit-exact resume on
        CPU), max_steps_per_epoch (0 = whole epochs; for smoke tests), device
        ``auto|cpu|cuda``, amp (bf16 autocast on CUDA), channels_last (CUDA), compile
        (torch.compile), grad_clip (max gradient norm; 0 = off), max_bad_steps
        (consecutive non-finite losses before the run stops), checkpoint_every (steps;
        0 = end of epoch only), eval_every (epochs; the last epoch is always evaluated).
    """

    data: str = "synthetic"
    height: Optional[int] = None
    width: Optional[int] = None
    workers: int = 0
    attention: Optional[Literal["none", "self", "dcs"]] = None
    attention_form: Optional[Literal["linear", "softmax"]] = None
    use_dcs: Optional[bool] = None
    label_smoothing: float = 0.1
    epochs: int = 1
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0
    max_bad_steps: int = 5
    checkpoint_every: int = 0
    eval_every: int = 1

    def checks(self) -> list[tuple[bool, str, str]]:
        """``(ok, key, what was expected)`` of every cross-field check; subclasses extend it."""
        return [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            ((self.height is None or self.height >= 16) and (self.width is None or self.width >= 8), "height/width",
             "at least 16 x 8 pixels"),
            (self.workers >= 0, "workers", "an integer >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "a number in [0, 1)"),
            (self.grad_clip >= 0, "grad_clip", "a number >= 0 (0 = off)"),
            (self.max_bad_steps >= 1, "max_bad_steps", "an integer >= 1"),
            (self.eval_every >= 1, "eval_every", "an integer >= 1"),
            (self.checkpoint_every >= 0 and self.max_steps_per_epoch >= 0, "checkpoint_every/max_steps_per_epoch",
             "integers >= 0"),
        ]

    def validate(self) -> None:
        """Cross-field checks that the type system cannot express.

        Raises:
            ConfigError: naming the key and what was expected.
        """
        from dnas.errors import ConfigError

        for ok, key, expected in self.checks():
            if not ok:
                raise ConfigError(f"key {key!r}: expected {expected}")


@dataclass
class ReIDRunConfig(RunConfig):
    """Keys of the runs that train on Re-ID data (the search, Re-ID retraining).

    Batches: p identities x k images (PK sampler). Loss (eq. 4,
        :class:`dnas.losses.ReIDLoss`): CE + triplet_weight * batch-hard triplet
        (triplet_margin) + ib_eta * IBB when use_ibb (soft assignments of L2-normalised
        features at temperature ib_temperature; without use_ibb the IB loss and bound
        are still reported). bnneck: BN on the embedding before the classifier.
    Model selection: val_ids_fraction of the training identities (at least
        val_min_ids; seeded by val_seed, apart from seed) are held out as a validation
        query/gallery; the periodic evaluations use it (``val_*`` columns) and
        checkpoint-best.pt is chosen by ``val_mAP``. The test query/gallery is
        evaluated after the last epoch (``test_*`` columns), or at every evaluation with
        eval_test_every_epoch (curves only, never used for selection).
        val_ids_fraction=0 disables the split. eval_max_queries caps the queries of
        each evaluation (0 = all).
    Data: msmt17_use_val (MSMT17 only: train on list_train + list_val; default false:
        list_train only, as torchreid and fast-reid); synthetic_ids /
        synthetic_images_per_id: size of the embedded set (0 = its defaults);
        data_seed: the embedded set's seed (default 0 for the search and retraining
        alike; ``seed`` never changes the data, nor does it change the validation
        split, which is a function of the data and val_seed only).
    Augmentation of the training images: flip_prob, pad (pad + random crop; default:
        10 pixels per 256 of input height), erasing_prob (random erasing).
    """

    p: int = 16
    k: int = 4
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    ib_eta: float = 0.1
    ib_temperature: float = 0.1
    use_ibb: bool = True
    bnneck: bool = True
    val_ids_fraction: float = 0.05
    val_min_ids: int = 8
    val_seed: int = 0
    eval_test_every_epoch: bool = False
    eval_max_queries: int = 0
    msmt17_use_val: bool = False
    synthetic_ids: int = 0
    synthetic_images_per_id: int = 0
    data_seed: int = 0
    flip_prob: float = 0.5
    pad: Optional[int] = None
    erasing_prob: float = 0.5

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (self.p >= 2 and self.k >= 2, "p/k", "p >= 2 identities and k >= 2 images per batch (triplet)"),
            (self.triplet_margin >= 0 and self.triplet_weight >= 0, "triplet_margin/triplet_weight",
             "numbers >= 0"),
            (self.ib_eta >= 0 and self.ib_temperature > 0, "ib_eta/ib_temperature",
             "ib_eta >= 0 and ib_temperature > 0"),
            (self.eval_max_queries >= 0, "eval_max_queries", "an integer >= 0 (0 = all)"),
            (0 <= self.flip_prob <= 1 and 0 <= self.erasing_prob <= 1, "flip_prob/erasing_prob",
             "probabilities in [0, 1]"),
            (self.pad is None or self.pad >= 0, "pad", "an integer >= 0 (or null: 10 px per 256 px of height)"),
            (0 <= self.val_ids_fraction < 1, "val_ids_fraction", "a number in [0, 1) (0 = no validation split)"),
            (self.val_min_ids >= 1, "val_min_ids", "an integer >= 1"),
        ]
