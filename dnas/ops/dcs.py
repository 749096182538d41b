"""DCS-Attention: differentiable channel selection for the attention weights
(paper sections 3.1-3.2; docs/method.md section 3).

For tokens ``X`` (N x C) of a feature map: sampling logits ``pi = X W_pi + b_pi``;
in training a binary mask ``M = [sigmoid((pi + G1 - G2) / tau_m) > 0.5]`` with a
straight-through gradient, in inference ``M = [pi > 0]``. ``G1 - G2`` is drawn as one
logistic variable (the same distribution, one draw). Only the selected channels
enter the affinity; every channel is aggregated. Two forms of the affinity:

- ``linear`` (default, the simplified non-local block of section 3.1 with
  ``C(x) = N``): ``A = (X*M)(X*M)^T / N``, ``Y = A X``, associated in whichever order
  is cheaper for the shapes (:func:`affinity_order`): ``(X*M) ((X*M)^T X) / N`` in
  2 C^2 N MACs (a C x C intermediate, never the N x N matrix) where ``C <= N``, and
  ``((X*M)(X*M)^T / N) X`` in 2 N^2 C where the tokens are fewer than the channels
  (a late, wide, low-resolution position). The same product either way;
- ``softmax`` (transformer attention): ``A = softmax((X*M)(X*M)^T / sqrt(C))``,
  ``Y = A X`` with the fused attention kernel, O(N^2 C).

The module output is ``x + BN(DW3x3(Y))``, BN weight 0 at init (a new module is the
identity). ``select=False`` gives plain self-attention at the same position (``M = 1``,
no ``pi`` layer): the "(Self-Attention)" rows of the paper's Tables V/VI.

The same module serves the supernet (with a width mask, and the expected width for the
softmax scale, so that a one-hot width choice equals the derived module exactly) and the
derived network.

``selection_rank=r`` factorises the selection layer, ``pi = (X A) B + b`` with A: C x r
and B: r x C (:class:`FactorisedSelection`; the fixed backbones' arch files choose r per
family, docs/method.md section 9); the default is the full C x C layer.

NOTE: the output transform (a depthwise 3x3 conv + BN) and the softmax form's
``1/sqrt(C)`` scale are our choices; the paper gives neither. The depthwise transform
keeps the added MACs near the paper's deltas where a 1x1 conv would not
(docs/method.md, "DCS-Attention cost"). ``tau_m`` defaults to 1.0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dnas.ops.registry import PLAIN_OPS
from dnas.space.schema import ATTENTIONS, linear_affinity_macs  # noqa: F401 - re-exported
from dnas.space.schema import AFFINITY_ORDERS, ATTENTION_FORMS, affinity_order


def gumbel_like(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Gumbel(0, 1) noise shaped like ``t``: ``-log(E)`` with ``E ~ Exp(1)``."""
    e = torch.empty_like(t).exponential_(generator=generator)
    return -e.clamp_min(torch.finfo(t.dtype).tiny).log()


class _StraightThroughBinary(torch.autograd.Function):
    """The training mask ``M = [sigmoid((pi + L) / tau) > 0.5] = [pi + L > 0]`` from logits
    ``pi`` and uniforms ``u`` with ``L = log(1 - u) - log(u)`` (Logistic(0, 1), the law of
    ``G1 - G2``): forward ``[u < sigmoid(pi)]`` (exactly 0/1, the same event, without the
    logarithms), backward the straight-through gradient ``d sigmoid((pi + L) / tau) / d pi``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, u: torch.Tensor, tau: float) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(logits, u)
        ctx.tau = tau
        return (u < torch.sigmoid(logits)).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        logits, u = ctx.saved_tensors
        # L = log(1 - u) - log(u) = -logit(u): one vectorised op (log1p is ~10x slower on CPU)
        soft = torch.sigmoid((logits - torch.logit(u)) / ctx.tau)
        return grad * soft * (1.0 - soft) / ctx.tau, None, None


def linear_affinity_output(k: torch.Tensor, v: torch.Tensor, order: str | None = None) -> torch.Tensor:
    """``A X`` with ``A = K K^T / N``, channels-first, in either association.

    Args:
        k: (B, C, N) selected channels ``(X*M)^T``.
        v: (B, C, N) all channels ``X^T``.
        order: ``channels``, ``tokens`` or ``None`` (the cheaper, :func:`affinity_order`).

    Returns:
        (B, C, N): ``(A X)^T``; ``channels``: ``(K^T X / N)^T K^T`` (a C x C
        intermediate), ``tokens``: ``X^T (K K^T / N)`` (N x N; ``A`` is symmetric).
    """
    c, n = k.shape[-2:]
    order = affinity_order(c, n) if order is None else order
    if order == "channels":
        kv = torch.bmm(k, v.transpose(1, 2)) / n  # (B, C, C) = K^T X / N
        return torch.bmm(kv.transpose(1, 2), k)  # (B, C, N)
    if order == "tokens":
        a = torch.bmm(k.transpose(1, 2), k) / n  # (B, N, N) = K K^T / N
        return torch.bmm(v, a)  # (B, C, N) = X^T A^T
    raise ValueError(f"affinity order {order!r}: expected one of {', '.join(AFFINITY_ORDERS)} or None")


class FactorisedSelection(nn.Module):
    """The selection layer at rank ``r``: ``pi = (X A) B + b`` with ``A``: C x r (``a``,
    no bias) and ``B``: r x C (``b``, with the bias ``b``): 2 C r + C parameters and
    2 N C r MACs per image instead of C^2 + C and N C^2. Still a logit per token and
    channel; the mask and its gradient are the full-rank layer's.

    NOTE: the paper's ``W_pi`` is a full C x C matrix; the rank is a cost option of ours
    (``selection_rank``), fitted to the paper's Table I (docs/method.md section 9).
    """

    def __init__(self, chs: int, rank: int):
        super().__init__()
        self.rank = rank
        self.a = nn.Linear(chs, rank, bias=False)
        self.b = nn.Linear(rank, chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) of a map x (B, C, H, W): both factors as 1x1 convolutions."""
        h = F.conv2d(x, self.a.weight[:, :, None, None])  # (B, r, H, W) = X A
        return F.conv2d(h, self.b.weight[:, :, None, None], self.b.bias)  # (B, C, H, W)


@PLAIN_OPS.register("dcs")
class DCSAttention(nn.Module):
    """DCS-Attention on a (B, C, H, W) map; ``in_chs == out_chs``, ``stride == 1``.

    Args:
        in_chs, out_chs, stride: registry signature (must be C, C, 1).
        tau_m: temperature of the binary Gumbel-sigmoid mask.
        form: ``linear`` (non-local, 2 N C min(N, C) MACs) or ``softmax`` (O(N^2 C)).
        select: channel selection (DCS); ``False`` is plain self-attention.
        order: association of the linear form, ``channels`` or ``tokens``; ``None``
            (default) picks the cheaper from the shapes of each call
            (:func:`affinity_order`). The same function either way (tests compare them).
        selection_rank: rank ``r`` of the selection layer, ``pi = (X A) B + b``
            (:class:`FactorisedSelection`); ``None`` (default): the full C x C layer.
    """

    def __init__(self, in_chs: int, out_chs: int | None = None, stride: int = 1, tau_m: float = 1.0,
                 form: str = "linear", select: bool = True, order: str | None = None,
                 selection_rank: int | None = None):
        super().__init__()
        out_chs = in_chs if out_chs is None else out_chs
        if out_chs != in_chs or stride != 1:
            raise ValueError("DCSAttention keeps its shape: in_chs == out_chs and stride == 1")
        if form not in ATTENTION_FORMS:
            raise ValueError(f"attention form {form!r}: expected one of {', '.join(ATTENTION_FORMS)}")
        if order is not None and order not in AFFINITY_ORDERS:
            raise ValueError(f"affinity order {order!r}: expected one of {', '.join(AFFINITY_ORDERS)} or None")
        self.chs, self.tau_m, self.form, self.select, self.order = in_chs, tau_m, form, bool(select), order
        if selection_rank is not None and (isinstance(selection_rank, bool) or not isinstance(selection_rank, int)
                                           or not 1 <= selection_rank < in_chs):
            raise ValueError(f"selection_rank {selection_rank!r}: expected an integer in [1, {in_chs}) for "
                             f"{in_chs} channels, or None (full rank)")
        self.selection_rank = selection_rank if self.select else None
        # sampling logits, arch parameters in the search; absent for plain self-attention
        if not self.select:
            self.pi = None
        elif selection_rank is None:
            self.pi = nn.Linear(in_chs, in_chs)
        else:
            self.pi = FactorisedSelection(in_chs, selection_rank)
        self.proj = nn.Conv2d(in_chs, in_chs, 3, padding=1, groups=in_chs, bias=False)
        self.bn = nn.BatchNorm2d(in_chs)
        nn.init.zeros_(self.bn.weight)

    @property
    def attention(self) -> str:
        """``dcs`` or ``self``."""
        return "dcs" if self.select else "self"

    def channel_mask(self, x: torch.Tensor) -> torch.Tensor:
        """Binary channel-selection mask M (B, C, H, W) of a map x (B, C, H, W).

        ``pi`` is the linear layer (full or factorised) applied to every token (1x1
        convolutions); in
        training ``M = [sigmoid((pi + G1 - G2) / tau_m) > 0.5] = [pi + L > 0]`` with
        ``L = G1 - G2`` logistic noise, straight-through; in inference ``M = [pi > 0]``.
        """
        if isinstance(self.pi, FactorisedSelection):
            logits = self.pi(x)  # (B, C, H, W)
        else:
            logits = F.conv2d(x, self.pi.weight[:, :, None, None], self.pi.bias)  # (B, C, H, W)
        if not self.training:
            return (logits > 0).to(x.dtype)
        return _StraightThroughBinary.apply(logits, torch.rand_like(logits), self.tau_m)

    def forward(self, x: torch.Tensor, width_mask: torch.Tensor | None = None,
                eff_width: torch.Tensor | float | None = None) -> torch.Tensor:
        """Args:
            x: (B, C, H, W).
            width_mask: (C,) supernet width mask applied to the residual branch.
            eff_width: expected number of active channels for the softmax form's
                ``1/sqrt(C)`` scale (the linear form's ``1/N`` needs none).
        """
        b, c, h, w = x.shape
        k = x * self.channel_mask(x) if self.select else x  # (B, C, H, W) selected channels only
        if self.form == "linear":
            y = linear_affinity_output(k.flatten(2), x.flatten(2), self.order).view(b, c, h, w)  # A X
        else:
            y = self._softmax_output(k.flatten(2).transpose(1, 2), x.flatten(2).transpose(1, 2),
                                     c if eff_width is None else eff_width)  # (B, N, C)
            y = y.transpose(1, 2).reshape(b, c, h, w)
        out = self.bn(self.proj(y))
        if width_mask is not None:
            out = out * width_mask.view(1, -1, 1, 1).to(out.dtype)
        return x + out

    @staticmethod
    def _softmax_output(k: torch.Tensor, v: torch.Tensor, width: torch.Tensor | float) -> torch.Tensor:
        """``softmax(k k^T / sqrt(width)) v`` with the fused kernel; (B, N, C)."""
        k = k.unsqueeze(1)  # (B, 1, N, C)
        if torch.is_tensor(width):  # supernet: expected width is a function of the arch logits
            q, scale = k * width.rsqrt().to(k.dtype), 1.0
        else:
            q, scale = k, 1.0 / math.sqrt(float(width))
        return F.scaled_dot_product_attention(q, k, v.unsqueeze(1), scale=scale).squeeze(1)
