"""Centroids, Q and the running IB figures across training (paper section 3.3;
docs/method.md section 4).

Use: every training step ``ibb = tracker.step(F, X, y)`` (``eta * ibb`` joins the loss);
after the epoch ``stats = tracker.end_epoch()``.

Within an epoch the centroids and Q are fixed (those of the previous epoch), so the
epoch's running figures are the IB loss and its bound of one empirical distribution and
``stats["ibb"] >= stats["ib"]`` holds. At the end of an epoch the class means of the
epoch's normalised features become the new centroids, and Q is computed from the
assignments of the same features (kept as float16) to those centroids: centroids and Q
always belong together.
"""
from __future__ import annotations

import torch

from dnas.ib import (CHUNK, DEFAULT_TEMPERATURE, AllReduce, batch_sums, default_all_reduce, ib_bound, ib_from_sums,
                     normalize, q_from_sums, reduce_tensors, soft_assign)

_RUNNING = ("p_fx", "s_fy", "sum_phi_x", "neg_entropy_x", "cross", "count_assigned")
_CLASS_SUMS = ("sum_f", "sum_x", "count")
_STATE = ("centroids_f", "centroids_x", "valid", "q")
_NAN_STATS = ("ibb", "ibb_paper", "ib", "i_xf", "i_fy", "h_px", "h_y")


class IBTracker:
    """Centroids, Q and per-epoch accumulators for the IB bound.

    Before the first epoch has ended there are no centroids: :meth:`step` and
    :meth:`bound` return 0 (a zero tensor connected to the graph, so ``backward`` works).
    A class absent from an epoch keeps its previous centroid; a class never seen has no
    centroid and is masked out of the assignments (``phi = 0``). With DDP,
    :meth:`end_epoch` sums the accumulators over processes, so every process gets the
    same centroids and Q.

    Args:
        num_classes: number of training classes ``K``.
        q_prior: additive prior of each Q cell.
        temperature: ``T`` of the soft assignments.
    """

    def __init__(self, num_classes: int, q_prior: float = 1e-3, temperature: float = DEFAULT_TEMPERATURE) -> None:
        self.num_classes, self.q_prior, self.temperature = int(num_classes), float(q_prior), float(temperature)
        self.epoch = 0
        self.centroids_f = self.centroids_x = self.valid = self.q = None
        self.sum_f = self.sum_x = self.count = None
        self.p_fx = self.s_fy = self.sum_phi_x = self.neg_entropy_x = self.cross = self.count_assigned = None
        self.bank_f: list[torch.Tensor] = []  # the epoch's normalised features, float16
        self.bank_y: list[torch.Tensor] = []

    @property
    def ready(self) -> bool:
        """Whether centroids and Q exist (the bound is active)."""
        return self.q is not None

    def _init_accumulators(self, df: int, dx: int, device: torch.device) -> None:
        k, kw = self.num_classes, dict(device=device, dtype=torch.float64)
        self.sum_f, self.sum_x, self.count = torch.zeros(k, df, **kw), torch.zeros(k, dx, **kw), torch.zeros(k, **kw)
        self.p_fx, self.s_fy = torch.zeros(k, k, **kw), torch.zeros(k, k, **kw)
        self.sum_phi_x, self.count_assigned = torch.zeros(k, **kw), torch.zeros(k, **kw)
        self.neg_entropy_x, self.cross = torch.zeros((), **kw), torch.zeros((), **kw)
        self.bank_f, self.bank_y = [], []

    def _prepare(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor):
        if not (f.shape[0] == x.shape[0] == labels.shape[0]):
            raise ValueError(f"IBTracker: batch sizes differ: F {f.shape[0]}, X {x.shape[0]}, "
                             f"labels {labels.shape[0]}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"IBTracker: labels must be in 0..{self.num_classes - 1}")
        f, x = normalize(f), normalize(x)
        if self.sum_f is None:
            self._init_accumulators(f.shape[1], x.shape[1], f.device)
        if self.sum_f.device != f.device:
            self.to(f.device)
        return f, x, labels.long()

    def _assign(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        phi_f = soft_assign(f, self.centroids_f, self.valid, self.temperature)
        phi_x = soft_assign(x, self.centroids_x, self.valid, self.temperature)
        return phi_f, phi_x

    def bound(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """IBB of a batch with the current centroids and Q (0 before they exist); no accumulation."""
        if not self.ready:
            return f.sum() * 0.0
        f, x = normalize(f), normalize(x)
        phi_f, phi_x = self._assign(f, x)
        return ib_bound(phi_f, phi_x, self.q.to(phi_f.dtype), labels.long())

    @torch.no_grad()
    def update(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate a batch (detached) without using the bound."""
        self.step(f.detach(), x.detach(), labels)

    def step(self, f: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Accumulate a batch and return its IBB (the paper's form, differentiable in ``f``).

        Args:
            f: ``(B, Df)`` learned features (normalised here).
            x: ``(B, Dx)`` fixed input features (:func:`dnas.ib.input_representation`).
            labels: ``(B,)`` labels in ``0..K-1``.

        Returns:
            Scalar IBB (0 before the first :meth:`end_epoch`).
        """
        f, x, labels = self._prepare(f, x, labels)
        with torch.no_grad():
            self.sum_f.index_add_(0, labels, f.detach().double())
            self.sum_x.index_add_(0, labels, x.detach().double())
            self.count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
            self.bank_f.append(f.detach().half())
            self.bank_y.append(labels.detach())
        if not self.ready:
            return f.sum() * 0.0
        phi_f, phi_x = self._assign(f, x)
        q = self.q.to(phi_f.dtype)
        ibb = ib_bound(phi_f, phi_x, q, labels)
        with torch.no_grad():
            for name, s in zip(_RUNNING, batch_sums(phi_f, phi_x, q, labels, self.num_classes)):
                getattr(self, name).add_(s)
        return ibb

    def _q_of_bank(self, all_reduce: AllReduce | None) -> torch.Tensor:
        """Q from the assignments of the epoch's features to the new centroids."""
        k = self.num_classes
        s = torch.zeros(k, k, dtype=torch.float64, device=self.centroids_f.device)
        if self.bank_f:
            feats, ys = torch.cat(self.bank_f), torch.cat(self.bank_y)
            for fc, yc in zip(feats.split(CHUNK), ys.split(CHUNK)):
                phi = soft_assign(fc.float(), self.centroids_f, self.valid, self.temperature)  # (n, K_a)
                s.index_add_(1, yc, phi.double().t())  # s[a, y_i] += phi(F_i, a)
        reduce_tensors([s], all_reduce)
        return q_from_sums(s, self.q_prior).float()

    def end_epoch(self, all_reduce: AllReduce | None = default_all_reduce) -> dict[str, float]:
        """Close the epoch: reduce over processes, new centroids and their Q, reset the sums.

        Args:
            all_reduce: in-place sum over processes (default: ``torch.distributed`` when
                initialised); ``None`` for none.

        Returns:
            ``ibb`` (the bound with its constants), ``ibb_paper`` (the optimised form),
            ``ib``, ``i_xf``, ``i_fy``, ``h_px``, ``h_y`` of the finished epoch (NaN while
            the bound was not active) and ``classes``: the classes with a centroid.
        """
        stats: dict = dict.fromkeys(_NAN_STATS, float("nan"))
        stats["classes"] = 0
        self.epoch += 1
        if self.sum_f is None:
            return stats
        reduce_tensors([getattr(self, n) for n in _CLASS_SUMS + _RUNNING], all_reduce)
        if self.ready and float(self.count_assigned.sum()) > 0:
            stats.update(ib_from_sums(*(getattr(self, n) for n in _RUNNING)))
        seen = self.count > 0
        mean_f = (self.sum_f / self.count.clamp_min(1)[:, None]).float()
        mean_x = (self.sum_x / self.count.clamp_min(1)[:, None]).float()
        if self.centroids_f is None:
            self.centroids_f, self.centroids_x, self.valid = mean_f, mean_x, seen.clone()
        else:
            self.centroids_f[seen], self.centroids_x[seen] = mean_f[seen], mean_x[seen]
            self.valid |= seen
        self.q = self._q_of_bank(all_reduce)
        stats["classes"] = int(self.valid.sum())
        self._init_accumulators(self.sum_f.shape[1], self.sum_x.shape[1], self.sum_f.device)
        return stats

    def to(self, device: torch.device | str) -> "IBTracker":
        """Move every state tensor to ``device``."""
        for name in _STATE + _CLASS_SUMS + _RUNNING:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.bank_f = [t.to(device) for t in self.bank_f]
        self.bank_y = [t.to(device) for t in self.bank_y]
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (loadable with ``torch.load(weights_only=True)``)."""
        state = {"epoch": torch.tensor(self.epoch), "num_classes": torch.tensor(self.num_classes),
                 "temperature": torch.tensor(self.temperature)}
        for name in _STATE + _CLASS_SUMS + _RUNNING:
            t = getattr(self, name)
            if t is not None:
                state[name] = t.detach().clone()
        if self.bank_f:
            state["bank_f"], state["bank_y"] = torch.cat(self.bank_f), torch.cat(self.bank_y)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (the number of classes must match)."""
        k = int(state["num_classes"])
        if k != self.num_classes:
            raise ValueError(f"IBTracker state is for {k} classes, this tracker has {self.num_classes}")
        self.epoch = int(state["epoch"])
        if "temperature" in state:
            self.temperature = float(state["temperature"])
        for name in _STATE + _CLASS_SUMS + _RUNNING:
            t = state.get(name)
            setattr(self, name, None if t is None else t.clone())
        self.bank_f = [state["bank_f"].clone()] if "bank_f" in state else []
        self.bank_y = [state["bank_y"].clone()] if "bank_y" in state else []
