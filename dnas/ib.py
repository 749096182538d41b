"""The IB loss and its variational upper bound IBB (paper section 3.3, Theorem 3.1).

FORMULAS.md section 4. With learned features ``F_i`` (the embedding), input features
``X_i`` (pooled) and labels ``y_i``:

- class centroids from the previous epoch, ``C^F_a = mean{F_i : y_i = a}`` (same for X);
- soft assignments ``phi(F_i, a) = softmax_a(-||F_i - C^F_a||^2)`` (:func:`soft_assign`);
- the variational table ``Q(y | a) = sum_i phi(F_i, a)[y_i = y] / sum_i phi(F_i, a)``
  (:func:`q_from_sums`, :func:`q_from_assignments`);
- the bound, averaged over a batch (:func:`ib_bound`)::

      IBB = mean_i [ sum_a sum_b phi(F_i,a) phi(X_i,b) log phi(X_i,b)
                     - sum_a phi(F_i,a) log Q(y_i|a) ]

- the IB loss for reporting (:func:`ib_loss`): ``I(X;F) - I(F;Y)`` from the joint
  tables ``P(a,b) = mean_i phi(F_i,a) phi(X_i,b)`` and ``P(a,y) = mean_i phi(F_i,a)[y_i=y]``.

:class:`IBTracker` keeps the centroids and Q across epochs and accumulates what the
next epoch needs.

NOTE: two choices the paper leaves open. (1) ``Q`` gets an additive prior ``q_prior``
per cell (so ``log Q`` is finite when no soft mass reached a cell). (2) The first Q,
at the end of the first epoch, cannot come from soft assignments (there were no
centroids to assign to): it is estimated by placing every sample at its class centroid,
``Q(y|a) proportional to n_y phi(C_y, a)`` (``n_y`` images of class ``y``). From the
second epoch on, Q follows the paper.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AllReduce = Callable[[torch.Tensor], None]


def _as_vectors(x: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` as is; ``(B, C, H, W)`` global-average-pooled to ``(B, C)``."""
    return x.flatten(2).mean(dim=2) if x.dim() > 2 else x


def squared_distances(feats: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``||f_i - c_a||^2`` as ``(B, K)``, finite even for extreme inputs.

    Both sides are shifted by the centroids' mean (distances are translation
    invariant; this keeps the expansion ``|f|^2 + |c|^2 - 2 f.c`` accurate), the result
    is clamped at 0 and overflow is capped at the dtype's largest finite value.
    """
    shift = centroids.mean(dim=0, keepdim=True)
    f, c = feats - shift, centroids - shift
    d2 = (f * f).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * f @ c.t()  # (B, K)
    big = torch.finfo(d2.dtype).max
    return torch.nan_to_num(d2.clamp_min(0.0), nan=big, posinf=big)


def soft_assign(feats: torch.Tensor, centroids: torch.Tensor,
                valid: torch.Tensor | None = None) -> torch.Tensor:
    """Soft assignments ``phi(f_i, a) = softmax_a(-||f_i - c_a||^2)``.

    Computed with ``log_softmax`` (a logsumexp), so far-away centroids get 0, never NaN.

    Args:
        feats: ``(B, D)`` features (``(B, C, H, W)`` is average-pooled).
        centroids: ``(K, D)``.
        valid: ``(K,)`` bool, centroids that exist; the others get ``phi = 0``.

    Returns:
        ``(B, K)``, rows summing to 1 over the valid centroids.
    """
    logits = -squared_distances(_as_vectors(feats), centroids)  # (B, K)
    if valid is not None:
        if not bool(valid.any()):
            raise ValueError("soft_assign: no valid centroid")
        logits = logits.masked_fill(~valid[None, :], float("-inf"))
    return F.log_softmax(logits, dim=1).exp()


def q_from_sums(s: torch.Tensor, q_prior: float = 1e-3) -> torch.Tensor:
    """``Q(y | a)`` from ``s[a, y] = sum_i phi(F_i, a)[y_i = y]``.

    Args:
        s: ``(K, K)`` soft counts, rows indexed by centroid ``a``, columns by label ``y``.
        q_prior: additive prior per cell (see the module NOTE).

    Returns:
        ``(K, K)`` with rows summing to 1:
        ``Q[a, y] = (s[a, y] + prior) / (sum_y s[a, y] + K prior)``.
    """
    s = s + q_prior
    return s / s.sum(dim=1, keepdim=True)


def q_from_assignments(phi_f: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       q_prior: float = 1e-3) -> torch.Tensor:
    """``Q(y | a)`` from an epoch of soft assignments ``phi_f`` ``(N, K)`` and labels ``(N,)``."""
    onehot = F.one_hot(labels.long(), num_classes).to(phi_f.dtype)  # (N, K)
    return q_from_sums(phi_f.t() @ onehot, q_prior)


def ib_bound(phi_f: torch.Tensor, phi_x: torch.Tensor, q: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
    """The bound IBB averaged over a batch (Theorem 3.1).

    Args:
        phi_f: ``(B, K)`` soft assignments of the learned features.
        phi_x: ``(B, K)`` soft assignments of the input features.
        q: ``(K, K)`` table ``Q[a, y] = Q(y | a)``.
        labels: ``(B,)`` labels.

    Returns:
        Scalar; differentiable in ``phi_f`` and ``phi_x``.
    """
    tiny = torch.finfo(phi_x.dtype).tiny  # log(0) -> log(tiny): 0 * finite = 0, finite grads
    neg_entropy_x = (phi_x * phi_x.clamp_min(tiny).log()).sum(dim=1)  # (B,)
    first = phi_f.sum(dim=1) * neg_entropy_x  # sum_a sum_b phi_F(a) phi_X(b) log phi_X(b)
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()[:, labels.long()].t()  # (B, K_a)
    second = (phi_f * log_q).sum(dim=1)  # sum_a phi_F(a) log Q(y_i | a)
    return (first - second).mean()


def mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """``I(A;B)`` in nats of a joint table (normalised here; zero cells contribute 0)."""
    p = joint / joint.sum()
    pa, pb = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
    ratio = p / (pa * pb).clamp_min(torch.finfo(p.dtype).tiny)
    return torch.where(p > 0, p * ratio.clamp_min(torch.finfo(p.dtype).tiny).log(),
                       torch.zeros_like(p)).sum()


def ib_loss(phi_f: torch.Tensor, phi_x: torch.Tensor, labels: torch.Tensor,
            num_classes: int) -> dict[str, torch.Tensor]:
    """The IB loss ``I(X;F) - I(F;Y)`` (Table V) from soft assignments.

    Args:
        phi_f: ``(N, K)`` assignments of learned features.
        phi_x: ``(N, K)`` assignments of input features.
        labels: ``(N,)`` labels.
        num_classes: ``K``.

    Returns:
        ``{"ib": I(X;F) - I(F;Y), "i_xf": I(X;F), "i_fy": I(F;Y)}`` (scalar tensors).
    """
    onehot = F.one_hot(labels.long(), num_classes).to(phi_f.dtype)
    i_xf = mutual_information(phi_f.t() @ phi_x)
    i_fy = mutual_information(phi_f.t() @ onehot)
    return {"ib": i_xf - i_fy, "i_xf": i_xf, "i_fy": i_fy}


def default_all_reduce(t: torch.Tensor) -> None:
    """Sum ``t`` in place over processes when ``torch.distributed`` is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)



_ACCUMULATORS = ("sum_f", "sum_x", "count", "s_fy", "p_fx", "n_assigned", "ibb_sum")


class IBTracker:
    """Centroids, Q and per-epoch accumulators for the IB bound across training.

    Use: every training step ``ibb = tracker.step(F, X, y)`` (adds ``eta * ibb`` to
    the loss); after the epoch ``stats = tracker.end_epoch()``.

    Before the first epoch has ended there are no centroids: :meth:`step` and
    :meth:`bound` return 0 (a zero tensor, connected to the graph so ``backward`` still
    works) and only the class sums are accumulated. A class absent from an epoch keeps
    its previous centroid; a class never seen has no centroid and is masked out of the
    soft assignments (``phi = 0``). With DDP, :meth:`end_epoch` sums the accumulators
    over processes (``torch.distributed.all_reduce`` when initialised, or the callable
    given), so every process gets the same centroids and Q.

    Args:
        num_classes: number of training classes ``K``.
        q_prior: additive prior of each Q cell (module NOTE).
    """

    def __init__(self, num_classes: int, q_prior: float = 1e-3) -> None:
        self.num_classes, self.q_prior = int(num_classes), float(q_prior)
        self.epoch = 0
        self.centroids_f: torch.Tensor | None = None  # (K, Df)
        self.centroids_x: torch.Tensor | None = None  # (K, Dx)
        self.valid: torch.Tensor | None = None  # (K,) bool
        self.q: torch.Tensor | None = None  # (K, K), Q[a, y]
        self.sum_f = self.sum_x = self.count = self.s_fy = self.p_fx = None
        self.n_assigned = self.ibb_sum = None

    @property
    def ready(self) -> bool:
        """Whether centroids and Q exist (the bound is active)."""
        return self.q is not None

    def _init_accumulators(self, f: torch.Tensor, x: torch.Tensor) -> None:
        k, kw = self.num_classes, dict(device=f.device, dtype=torch.float64)
        self.sum_f = torch.zeros(k, f.shape[1], **kw)
        self.sum_x = torch.zeros(k, x.shape[1], **kw)
        self.count = torch.zeros(k, **kw)
        self.s_fy = torch.zeros(k, k, **kw)
        self.p_fx = torch.zeros(k, k, **kw)
        self.n_assigned = torch.zeros((), **kw)
        self.ibb_sum = torch.zeros((), **kw)

    def _check(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor):
        f, x = _as_vectors(f), _as_vectors(x)
        if not (f.shape[0] == x.shape[0] == labels.shape[0]):
            raise ValueError(f"IBTracker: batch sizes differ: F {f.shape[0]}, X {x.shape[0]}, "
                             f"labels {labels.shape[0]}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"IBTracker: labels must be in 0..{self.num_classes - 1}")
        if self.sum_f is None:
            self._init_accumulators(f, x)
        if self.sum_f.device != f.device:
            self.to(f.device)
        return f, x, labels.long()

    def assign(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft assignments ``(phi_F, phi_X)`` to the current centroids (needs :attr:`ready`)."""
        f, x = _as_vectors(f), _as_vectors(x)
        phi_f = soft_assign(f, self.centroids_f.to(f.dtype), self.valid)
        phi_x = soft_assign(x, self.centroids_x.to(x.dtype), self.valid)
        return phi_f, phi_x

    def bound(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """IBB of a batch with the current centroids and Q (0 before they exist)."""
        if not self.ready:
            return (_as_vectors(f).sum() + _as_vectors(x).sum()) * 0.0
        phi_f, phi_x = self.assign(f, x)
        return ib_bound(phi_f, phi_x, self.q.to(phi_f.dtype), labels.long())

    @torch.no_grad()
    def update(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate a batch (detached) without computing the bound."""
        self.step(f.detach(), x.detach(), labels)

    def step(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Accumulate a batch and return its IBB (differentiable in ``f`` and ``x``).

        Args:
            f: ``(B, Df)`` learned features.
            x: ``(B, Dx)`` input features (``(B, C, H, W)`` is average-pooled).
            labels: ``(B,)`` labels in ``0..K-1``.

        Returns:
            Scalar IBB (0 before the first :meth:`end_epoch`).
        """
        f, x, labels = self._check(f, x, labels)
        with torch.no_grad():
            self.sum_f.index_add_(0, labels, f.detach().double())
            self.sum_x.index_add_(0, labels, x.detach().double())
            self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        if not self.ready:
            return (f.sum() + x.sum()) * 0.0
        phi_f, phi_x = self.assign(f, x)
        ibb = ib_bound(phi_f, phi_x, self.q.to(phi_f.dtype), labels)
        with torch.no_grad():
            pf, px = phi_f.detach().double(), phi_x.detach().double()
            self.s_fy.index_add_(1, labels, pf.t())  # s[a, y_i] += phi(F_i, a)
            self.p_fx += pf.t() @ px
            self.n_assigned += len(labels)
            self.ibb_sum += ibb.detach().double() * len(labels)
        return ibb

    def end_epoch(self, all_reduce: AllReduce | None = default_all_reduce) -> dict[str, float]:
        """Close the epoch: reduce over processes, new centroids and Q, reset the sums.

        Args:
            all_reduce: in-place sum over processes of a tensor (default:
                ``torch.distributed.all_reduce`` if initialised); ``None`` for none.

        Returns:
            ``{"ibb", "ib", "i_xf", "i_fy"}`` of the finished epoch (NaN while the bound
            was not active) and ``"classes"``: the classes with a centroid.
        """
        stats = {"ibb": float("nan"), "ib": float("nan"), "i_xf": float("nan"),
                 "i_fy": float("nan"), "classes": 0}
        self.epoch += 1
        if self.sum_f is None:
            return stats
        acc = [getattr(self, n) for n in _ACCUMULATORS]
        if all_reduce is not None:
            flat = torch.cat([t.reshape(-1) for t in acc])
            all_reduce(flat)
            for t, chunk in zip(acc, flat.split([t.numel() for t in acc])):
                t.copy_(chunk.view_as(t))
        if self.ready and float(self.n_assigned) > 0:
            i_xf, i_fy = mutual_information(self.p_fx), mutual_information(self.s_fy)
            stats.update(ibb=float(self.ibb_sum / self.n_assigned), i_xf=float(i_xf),
                         i_fy=float(i_fy), ib=float(i_xf - i_fy))
            q_next = q_from_sums(self.s_fy, self.q_prior)
        seen = self.count > 0
        mean_f = self.sum_f / self.count.clamp_min(1)[:, None]
        mean_x = self.sum_x / self.count.clamp_min(1)[:, None]
        if self.centroids_f is None:
            self.centroids_f, self.centroids_x = mean_f.float(), mean_x.float()
            self.valid = seen.clone()
        else:
            self.centroids_f[seen] = mean_f[seen].float()
            self.centroids_x[seen] = mean_x[seen].float()
            self.valid |= seen
        if not (self.ready and float(self.n_assigned) > 0):
            # first Q: every sample placed at its class centroid (module NOTE)
            c = self.centroids_f.double()
            phi_c = soft_assign(c, c, self.valid) * self.count[:, None]  # (K_y, K_a)
            q_next = q_from_sums(phi_c.t(), self.q_prior)
        self.q = q_next.float()
        stats["classes"] = int(self.valid.sum())
        self._init_accumulators(self.centroids_f, self.centroids_x)
        return stats

    def to(self, device: torch.device | str) -> "IBTracker":
        """Move every state tensor to ``device``."""
        for name in ("centroids_f", "centroids_x", "valid", "q") + _ACCUMULATORS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with ``torch.load(weights_only=True)``)."""
        state = {"epoch": torch.tensor(self.epoch), "num_classes": torch.tensor(self.num_classes)}
        for name in ("centroids_f", "centroids_x", "valid", "q") + _ACCUMULATORS:
            t = getattr(self, name)
            if t is not None:
                state[name] = t.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (the number of classes must match)."""
        k = int(state["num_classes"])
        if k != self.num_classes:
            raise ValueError(f"IBTracker state is for {k} classes, this tracker has "
                             f"{self.num_classes}")
        self.epoch = int(state["epoch"])
        for name in ("centroids_f", "centroids_x", "valid", "q") + _ACCUMULATORS:
            t = state.get(name)
            setattr(self, name, None if t is None else t.clone())
