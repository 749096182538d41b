"""The search recipe (paper section 3.4 and 4.2; docs/method.md sections 4-5) as one
config dataclass. Recipes in ``search/*.yaml`` set any of these keys; ``--set key=value``
overrides them on the command line. The resolved config is written to the run dir.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional


@dataclass
class SearchConfig:
    """Every knob of ``dnas-search``.

    Space and data:
        supernet: space name or YAML path. data: ``--data`` spec (``synthetic``,
        ``market1501:/path``, ...). height/width: input size (default: the space's).
        p, k: identities and images per identity of a batch (batch = p * k).
        arch_fraction: share of training images for the architecture steps (0.2; the
        split keeps k images and two cameras per identity in each part where it can).
        workers: DataLoader workers. msmt17_use_val: MSMT17 only, train on
        list_train + list_val (default false: list_train only, as torchreid/fast-reid).
    Model selection: val_ids_fraction of the training identities (at least
        val_min_ids; seeded by val_seed, apart from seed) are held out as a validation
        query/gallery (one image per camera as query); checkpoint-best.pt is chosen by
        their mAP (``val_mAP``); the test query/gallery is evaluated once, after the
        last epoch (``test_*`` columns), or after every evaluation with
        eval_test_every_epoch (curves only, never used for selection).
        val_ids_fraction=0 disables the split (best: the lowest arch-split loss).
    Weights (SGD): w_lr is the lr per batch of 256 (scaled linearly with the batch);
        w_schedule ``step`` (x w_gamma at w_milestones epochs) or ``cosine``.
    Architecture (Adam): a_lr, a_betas, a_weight_decay, cosine schedule;
        warmup_epochs of weight-only training before the first architecture steps.
    Gumbel: tau0, multiplied by exp(-tau_decay) after every epoch.
    Loss: CE with label_smoothing + triplet_weight * batch-hard triplet(triplet_margin)
        + ib_eta * IBB (when use_ibb; soft
        assignments of L2-normalised features at temperature ib_temperature).
    Attention: ``attention`` none | self | dcs modules at the space's rows (default: the
        space's; ``self`` is plain self-attention, the paper's ablation), and
        ``attention_form`` linear | softmax (default: the space's); ``use_dcs`` is the
        legacy boolean (false = attention none).
    Latency: latency_table ``auto`` (default: a table of this space for this device,
        shipped or cached; else one profiled on first use when the estimate is at most
        latency_profile_budget_s seconds (default 300 on CPU, 7200 on CUDA; 0 = never);
        else the MACs proxy, with a warning; :mod:`dnas.latency.auto`), a table path
        (CSV), or ``none`` (no latency cost, only when asked). latency_source: the
        resolved cost (``table:PATH``, ``profiled:PATH``, ``proxy:macs`` or ``none``),
        written by the run into its config.yaml; a resumed run keeps it. latency_loss
        ``multiplicative`` (L * alpha * log(LAT)^beta), ``additive``
        (L + lambda * LAT / target) or ``hard`` (penalty above latency_target_ms).
    System: device ``auto|cpu|cuda``, amp (bf16 autocast on CUDA), channels_last,
        compile (torch.compile), grad_clip, max_bad_steps (consecutive NaN/inf
        losses before the run stops), checkpoint_every (steps; 0 = end of epoch only),
        eval_every (epochs), eval_max_queries (cap of the queries of each
        evaluation, validation and test).
    """

    supernet: str = "tiny"
    data: str = "synthetic"
    height: Optional[int] = None
    width: Optional[int] = None
    epochs: int = 4
    p: int = 8
    k: int = 4
    arch_fraction: float = 0.2
    val_ids_fraction: float = 0.05
    val_min_ids: int = 8
    val_seed: int = 0
    eval_test_every_epoch: bool = False
    msmt17_use_val: bool = False
    workers: int = 0
    seed: int = 0
    deterministic: bool = False
    max_steps_per_epoch: int = 0
    # weights
    w_lr: float = 0.1
    w_momentum: float = 0.9
    w_weight_decay: float = 4e-5
    w_schedule: Literal["step", "cosine"] = "step"
    w_milestones: list[int] = field(default_factory=lambda: [90, 180])
    w_gamma: float = 0.1
    # architecture
    a_lr: float = 0.01
    a_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    a_weight_decay: float = 5e-4
    warmup_epochs: int = 0
    # gumbel
    tau0: float = 5.0
    tau_decay: float = 0.045
    # loss
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_weight: float = 1.0
    ib_eta: float = 0.1
    ib_temperature: float = 0.1
    use_ibb: bool = True
    attention: Optional[Literal["none", "self", "dcs"]] = None
    attention_form: Optional[Literal["linear", "softmax"]] = None
    use_dcs: Optional[bool] = None
    bnneck: bool = True
    # latency
    latency_table: Optional[str] = "auto"
    latency_source: Optional[str] = None
    latency_profile_budget_s: Optional[float] = None
    latency_loss: Literal["multiplicative", "additive", "hard"] = "multiplicative"
    latency_alpha: float = 0.2
    latency_beta: float = 0.6
    latency_lambda: float = 0.1
    latency_target_ms: Optional[float] = None
    # system
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 5.0
    max_bad_steps: int = 5
    checkpoint_every: int = 0
    eval_every: int = 1
    eval_max_queries: int = 2000
    synthetic_ids: int = 0
    synthetic_images_per_id: int = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    @property
    def has_latency_cost(self) -> bool:
        """False only for ``latency_table: none`` (or null, as runs before ``auto`` wrote it)."""
        return bool(self.latency_table) and self.latency_table.strip().lower() != "none"

    def load_space(self):
        """The supernet's space with this recipe's attention settings applied."""
        from dnas.space import load_space
        from dnas.space.schema import attention_from_keys

        attention = attention_from_keys(self.attention, self.use_dcs, "search recipe")
        return load_space(self.supernet).with_attention(attention, self.attention_form)

    def validate(self) -> None:
        """Cross-field checks that the type system cannot express."""
        from dnas.errors import ConfigError

        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.p >= 2 and self.k >= 2, "p/k", "p >= 2 identities and k >= 2 images per batch (triplet)"),
            (0 < self.arch_fraction < 1, "arch_fraction", "a number in (0, 1)"),
            (0 <= self.val_ids_fraction < 1, "val_ids_fraction", "a number in [0, 1) (0 = no validation split)"),
            (self.val_min_ids >= 1, "val_min_ids", "an integer >= 1"),
            (self.w_lr > 0 and self.a_lr > 0, "w_lr/a_lr", "positive learning rates"),
            (self.tau0 > 0 and self.tau_decay >= 0, "tau0/tau_decay", "tau0 > 0 and tau_decay >= 0"),
            (self.max_bad_steps >= 1, "max_bad_steps", "an integer >= 1"),
            (self.ib_eta >= 0 and self.ib_temperature > 0, "ib_eta/ib_temperature",
             "ib_eta >= 0 and ib_temperature > 0"),
            (self.latency_loss == "multiplicative" or not self.has_latency_cost or self.latency_target_ms,
             "latency_target_ms", f"a target in ms with latency_loss={self.latency_loss}"),
            (self.latency_target_ms is None or self.latency_target_ms > 0, "latency_target_ms", "a positive number"),
            (self.latency_profile_budget_s is None or self.latency_profile_budget_s >= 0, "latency_profile_budget_s",
             "seconds >= 0 (0: never profile on first use)"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "fewer than epochs"),
            ((self.height is None or self.height >= 16) and (self.width is None or self.width >= 8), "height/width",
             "at least 16 x 8 pixels"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ConfigError(f"key {key!r}: expected {expected}")
