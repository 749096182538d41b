"""The DCS-DNAS supernet (paper section 3.4, Tables III/IV; docs/method.md sections 2-3).

Every bottleneck is a :class:`SuperInvertedResidual` at its largest widths (and largest
kernel). A width group (rows sharing a channel range) has one width choice, every block
one expansion choice and one choice per op-kwarg axis of the space (``kernel``);
DCS-Attention modules follow the rows the space marks. The choice travels as an
argument (:class:`ArchChoice`: ``{axis: weights per unit}`` over the space's
:attr:`~dnas.space.SearchSpace.axes`, Gumbel-softmax weights or one-hots), never as
hidden state; the temperature is an argument of :meth:`Supernet.sample_choice`. The
logits of axis ``a`` are ``arch_<a>_logits.<unit>``.

Residual adds: inside a width group the widths are equal by construction (weight 1).
Where a stride-1 block's input and output widths come from different choices with
overlapping options (row 1 after the stem; row 8 after row 7), the derived net has a
residual exactly when the two chosen widths are equal, so the supernet weights the
residual by the probability of that event (1 or 0 for one-hot choices).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from dnas.ib import input_representation
from dnas.memory import check_build
from dnas.models.head import ClassifierHead
from dnas.models.plain import stage_ends
from dnas.ops.blocks import ConvBNReLU
from dnas.ops.dcs import DCSAttention, gumbel_like
from dnas.ops.registry import SUPER_OPS
from dnas.ops.super_blocks import KWARG_MASKS, option_masks
from dnas.space import SearchSpace
from dnas.space.schema import resolve_attention


class ArchChoice(dict):
    """Weights over options by axis: ``{"width": [(K_g,) per width group], "expansion":
    [(E_b,) per block], "kernel": [(K_b,) per block], ...}`` (the space's axes, in order).

    A plain dict; ``choice.width`` reads ``choice["width"]``.
    """

    def __getattr__(self, name: str) -> list[torch.Tensor]:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"choice has no axis {name!r} (axes: {', '.join(self)})") from None

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ArchChoice":
        """The choice with ``fn`` applied to every weight tensor (e.g. ``.double()``)."""
        return ArchChoice({axis: [fn(w) for w in ws] for axis, ws in self.items()})

    def tensors(self) -> list[torch.Tensor]:
        """Every weight tensor, axis by axis."""
        return [w for ws in self.values() for w in ws]


def logits_name(axis: str) -> str:
    """Attribute name of an axis' logits (``arch_width_logits``; state-dict keys ``<name>.<unit>``)."""
    return f"arch_{axis}_logits"


class Supernet(nn.Module):
    """Args:
        space: a :class:`SearchSpace`.
        num_classes: classifier outputs (default: the space's).
        attention: ``none``, ``self`` or ``dcs`` modules at the space's ``dcs_after``
            rows (default: the space's ``attention``; a bool is the legacy ``use_dcs``).
        bnneck: BN on the embedding before the classifier (default: the space's).
    """

    def __init__(self, space: SearchSpace, num_classes: int | None = None, attention: str | bool | None = None,
                 bnneck: bool | None = None):
        super().__init__()
        self.space = space
        self.attention = resolve_attention(space.attention, attention)
        self.num_classes = int(num_classes or space.num_classes)
        check_build(space, self.num_classes, self.attention, "supernet")  # before any tensor is made
        self.bnneck = space.bnneck if bnneck is None else bnneck
        self.axes = list(space.axes)
        for name, axis in space.axes.items():
            setattr(self, logits_name(name), nn.ParameterList(nn.Parameter(torch.zeros(len(o))) for o in axis.options))
        self._arch_prefixes = tuple(f"{logits_name(a)}." for a in self.axes)
        self._kwarg_axes = [(a.name, a.kwarg) for a in space.axes.values() if a.kwarg]
        self.group_max = [max(o) for o in space.group_options]
        for g, opts in enumerate(space.group_options):
            self.register_buffer(f"_width_mask{g}", option_masks(opts, self.group_max[g]), persistent=False)
            self.register_buffer(f"_width_value{g}", torch.tensor(opts, dtype=torch.float32), persistent=False)
        stem = space.stem
        self.stem = ConvBNReLU(3, stem["out_chs"], stem["stride"], kernel_size=stem["kernel_size"])
        blocks, self._residual = [], []
        for b in space.blocks:
            in_max, mid_max = max(b.in_options), max(b.mid_options)
            largest = {k: max(opts) for k, opts in b.op_kwargs}
            blocks.append(SUPER_OPS.build(b.op, in_max, self.group_max[b.out_group], b.stride, mid_chs=mid_max,
                                          **largest))
            self.register_buffer(f"_mid_mask{b.index}", option_masks(b.mid_options, mid_max), persistent=False)
            for _, kwarg in self._kwarg_axes:
                opts = b.kwarg_options(kwarg)
                if opts is not None:  # a single option too: its logit then takes part (a zero gradient, as DDP needs)
                    self.register_buffer(f"_{kwarg}_mask{b.index}", KWARG_MASKS[kwarg](opts, largest[kwarg]),
                                         persistent=False)
            self._residual.append(self._residual_rule(b))
        self.blocks = nn.ModuleList(blocks)
        self._ends = stage_ends(space)
        self.dcs = nn.ModuleDict({
            str(s): DCSAttention(self.group_max[space.stage_group[s]], tau_m=space.tau_m, form=space.attention_form,
                                 select=self.attention == "dcs") for s in space.dcs_stages
        }) if self.use_dcs else nn.ModuleDict()
        last_group = space.stage_group[len(space.stages) - 1]
        self.embedding_dim = int(space.head["out_chs"])  # width of ``global_feat`` and ``embedding``
        self.head = ClassifierHead(self.group_max[last_group], space.head["out_chs"], self.num_classes, self.bnneck)

    @property
    def use_dcs(self) -> bool:
        """Whether attention modules (``self`` or ``dcs``) are built."""
        return self.attention != "none"

    def _residual_rule(self, b) -> str | torch.Tensor | None:
        if b.stride != 1:
            return None
        if b.in_group == b.out_group:
            return "same"
        eq = torch.tensor([[float(i == o) for o in b.out_options] for i in b.in_options])  # (K_in, K_out)
        if eq.sum() == 0:
            return None
        self.register_buffer(f"_residual_eq{b.index}", eq, persistent=False)
        return "eq"

    # -- parameters ---------------------------------------------------------------
    def is_arch_parameter(self, name: str) -> bool:
        """The logits of every axis and the DCS ``pi`` layers are architecture parameters."""
        return name.startswith(self._arch_prefixes) or (name.startswith("dcs.") and ".pi." in name)

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if self.is_arch_parameter(n))

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if not self.is_arch_parameter(n))

    # -- choices ------------------------------------------------------------------
    def logits(self) -> dict[str, list[nn.Parameter]]:
        """``{axis: [logits per unit]}``."""
        return {a: list(getattr(self, logits_name(a))) for a in self.axes}

    def _per_logit(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ArchChoice:
        return ArchChoice({a: [fn(x) for x in ls] for a, ls in self.logits().items()})

    def sample_choice(self, tau: float, hard: bool = False, generator: torch.Generator | None = None) -> ArchChoice:
        """Gumbel-softmax weights ``softmax((alpha + G) / tau)`` (straight-through one-hot with ``hard``).

        Args:
            tau: temperature.
            hard: forward one-hot, backward soft.
            generator: a CPU generator for the noise (share its seed across ranks for
                identical choices); ``None`` uses the global RNG of the logits' device.
        """
        def gs(logit: torch.Tensor) -> torch.Tensor:
            if generator is None:
                noise = gumbel_like(logit.detach())
            else:
                noise = gumbel_like(logit.detach().float().cpu(), generator).to(logit.device, logit.dtype)
            soft = torch.softmax((logit + noise) / tau, dim=0)
            if not hard:
                return soft
            onehot = torch.zeros_like(soft).scatter_(0, soft.argmax().view(1), 1.0)
            return onehot + (soft - soft.detach())  # exactly one-hot forward

        return self._per_logit(gs)

    def uniform_onehot_choice(self, generator: torch.Generator | None = None) -> ArchChoice:
        """A one-hot choice drawn uniformly per unit (every subnet equally likely): the
        single-path warm-up of the shared weights (``warmup_paths: uniform``)."""
        def pick(logit: torch.Tensor) -> torch.Tensor:
            i = int(torch.randint(logit.numel(), (1,), generator=generator))
            return torch.zeros_like(logit.detach()).index_fill_(0, torch.tensor([i], device=logit.device), 1.0)

        return self._per_logit(pick)

    def probs_choice(self) -> ArchChoice:
        """Softmax probabilities of the logits (no noise): the architecture distribution."""
        return self._per_logit(lambda x: torch.softmax(x, 0))

    def onehot_choice(self, indices: dict) -> ArchChoice:
        """One-hot weights for index choices ``{axis: [index per unit]}`` (every axis of the space)."""
        def oh(logit: torch.Tensor, i: int) -> torch.Tensor:
            return torch.zeros_like(logit.detach()).index_fill_(0, torch.tensor([i], device=logit.device), 1.0)

        missing = [a for a in self.axes if a not in indices]
        if missing:
            raise KeyError(f"index choice lacks axes {missing} (space {self.space.name!r} has {self.axes})")
        return ArchChoice({a: [oh(x, i) for x, i in zip(ls, indices[a], strict=True)]
                           for a, ls in self.logits().items()})

    def argmax_indices(self) -> dict:
        """Index choices of the most probable option everywhere: ``{axis: [index per unit]}``."""
        return {a: [int(x.argmax()) for x in ls] for a, ls in self.logits().items()}

    # -- forward ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, choice: ArchChoice | None = None, return_features: bool = False):
        """Args:
            x: (B, 3, H, W).
            choice: option weights (default: one-hot argmax of the logits).
            return_features: return the feature dict (``logits``, ``embedding``,
                ``global_feat``, ``ib_input``: the fixed input feature of the IB
                bound, :func:`dnas.ib.input_representation`) instead of the logits.
        """
        if choice is None:
            choice = self.onehot_choice(self.argmax_indices())
        masks = [choice["width"][g] @ getattr(self, f"_width_mask{g}") for g in range(len(self.group_max))]
        images = x  # (B, 3, H, W)
        x = self.stem(x)  # (B, stem, H/2, W/2)
        for spec, block in zip(self.space.blocks, self.blocks):
            mid_mask = choice["expansion"][spec.index] @ getattr(self, f"_mid_mask{spec.index}")
            x = block(x, mid_mask, masks[spec.out_group], self._residual_weight(spec, choice),
                      self._kwarg_masks(spec, choice))
            s = self._ends.get(spec.index)
            if s is not None and self.space.stages[s]["dcs_after"]:
                if self.use_dcs:
                    g = spec.out_group
                    eff_width = choice["width"][g] @ getattr(self, f"_width_value{g}")
                    x = self.dcs[str(s)](x, masks[g], eff_width)
        out = self.head(x)
        if not return_features:
            return out["logits"]
        out["ib_input"] = input_representation(images)  # the fixed input feature X of the IB bound
        return out

    def _kwarg_masks(self, spec, choice: ArchChoice) -> dict[str, torch.Tensor]:
        """Mixture masks of the block's op-kwarg axes (weights of one option are exactly 1)."""
        out = {}
        for axis, kwarg in self._kwarg_axes:
            name = f"_{kwarg}_mask{spec.index}"
            if hasattr(self, name):
                masks = getattr(self, name)  # (K, ...)
                out[kwarg] = torch.tensordot(choice[axis][spec.index].to(masks.dtype), masks, 1)
        return out

    def _residual_weight(self, spec, choice: ArchChoice) -> torch.Tensor | float | None:
        rule = self._residual[spec.index]
        if rule is None:
            return None
        if rule == "same":
            return 1.0
        eq = getattr(self, f"_residual_eq{spec.index}")
        w_out = choice["width"][spec.out_group]
        if spec.in_group is None:  # input is the stem (a single width)
            return eq[0] @ w_out
        return choice["width"][spec.in_group] @ eq @ w_out
