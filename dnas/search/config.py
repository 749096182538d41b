"""The search recipe (paper section 3.4 and 4.2; docs/method.md sections 4-5) as one
config dataclass. Recipes in ``search/*.yaml`` set any of these keys; ``--set key=value``
overrides them on the command line. The resolved config is written to the run dir.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from dnas.engine.config import ReIDRunConfig


@dataclass
class SearchConfig(ReIDRunConfig):
    """Every knob of ``dnas-search``; the keys of every run (data, attention, system) and
    of every Re-ID run (PK batches, the loss, the validation protocol) are documented in
    :class:`dnas.engine.config.RunConfig` and :class:`dnas.engine.config.ReIDRunConfig`.

    Space: supernet (space name or YAML path); height/width default to the space's input
        size; attention and attention_form default to the space's. arch_fraction: share
        of training images for the architecture steps (0.2; the split keeps k images and
        two cameras per identity in each part where it can). Without a validation split
        checkpoint-best.pt is the lowest arch-split loss.
    Weights (SGD): w_lr is the lr per batch of 256 (scaled linearly with the batch);
        w_schedule ``step`` (x w_gamma at w_milestones epochs) or ``cosine``;
        w_weight_decay on conv/linear weights only (not norms and biases).
    Architecture (Adam): a_lr, a_betas, a_weight_decay, cosine schedule;
        warmup_epochs of weight-only training before the first architecture steps.
    Gumbel: tau0, multiplied by exp(-tau_decay) after every epoch; gumbel_hard: one-hot
        (straight-through) samples instead of soft ones, in both phases (the supernet is
        then evaluated as its argmax subnet). warmup_paths: what the warm-up epochs train,
        ``gumbel`` (the Gumbel-softmax samples of the search) or ``uniform`` (one uniformly
        drawn one-hot subnet per step, so that every subnet's shared weights are trained
        as a subnet; docs/method.md section 10).
    Latency: latency_table ``auto`` (default: a table of this space for this device,
        shipped or cached; else one profiled on first use when the estimate is at most
        latency_profile_budget_s seconds (default 300 on CPU, 7200 on CUDA; 0 = never);
        else the MACs proxy, with a warning; :mod:`dnas.latency.auto`), a table path
        (CSV), or ``none`` (no latency cost, only when asked). latency_source: the
        resolved cost (``table:PATH``, ``profiled:PATH``, ``proxy:macs`` or ``none``),
        written by the run into its config.yaml; a resumed run keeps it. latency_loss
        ``multiplicative`` (L * alpha * log(LAT)^beta), ``additive``
        (L + lambda * LAT / target) or ``hard`` (penalty above latency_target_ms).
    """

    supernet: str = "tiny"
    epochs: int = 4
    p: int = 8
    arch_fraction: float = 0.2
    eval_max_queries: int = 2000
    grad_clip: float = 5.0
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
    gumbel_hard: bool = False
    warmup_paths: Literal["gumbel", "uniform"] = "gumbel"
    # latency
    latency_table: Optional[str] = "auto"
    latency_source: Optional[str] = None
    latency_profile_budget_s: Optional[float] = None
    latency_loss: Literal["multiplicative", "additive", "hard"] = "multiplicative"
    latency_alpha: float = 0.2
    latency_beta: float = 0.6
    latency_lambda: float = 0.1
    latency_target_ms: Optional[float] = None

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

    def checks(self) -> list[tuple[bool, str, str]]:
        return super().checks() + [
            (0 < self.arch_fraction < 1, "arch_fraction", "a number in (0, 1)"),
            (self.w_lr > 0 and self.a_lr > 0, "w_lr/a_lr", "positive learning rates"),
            (self.tau0 > 0 and self.tau_decay >= 0, "tau0/tau_decay", "tau0 > 0 and tau_decay >= 0"),
            (self.latency_loss == "multiplicative" or not self.has_latency_cost or self.latency_target_ms,
             "latency_target_ms", f"a target in ms with latency_loss={self.latency_loss}"),
            (self.latency_target_ms is None or self.latency_target_ms > 0, "latency_target_ms", "a positive number"),
            (self.latency_profile_budget_s is None or self.latency_profile_budget_s >= 0, "latency_profile_budget_s",
             "seconds >= 0 (0: never profile on first use)"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "fewer than epochs"),
        ]
