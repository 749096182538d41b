"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017), memory-bounded.

The algorithm (the authors' reference code, which torchreid and fast-reid copy), on the
``N + M`` items (queries first, then the gallery):

1. original distance: the input distances squared, each row divided by its maximum;
2. ``R(i, k1)``: the k-reciprocal neighbours of ``i`` (``j`` among the ``k1 + 1`` nearest
   of ``i`` and ``i`` among the ``k1 + 1`` nearest of ``j``);
3. expansion: for every ``c`` in ``R(i, k1)``, ``R(c, round(k1 / 2))`` is added when more
   than 2/3 of it lies in ``R(i, k1)``;
4. ``V[i, j] = exp(-d(i, j))`` over the expanded set, normalised to sum 1;
5. local query expansion: ``V[i]`` becomes the mean of ``V`` over the ``k2`` nearest of ``i``;
6. Jaccard distance ``1 - t / (2 - t)`` with ``t = sum_k min(V[q, k], V[g, k])``;
7. ``final = jaccard * (1 - lambda) + original * lambda`` (query x gallery).

The reference builds several dense ``(N + M)^2`` matrices (MSMT17: 93,820^2 floats are
35 GB each). Here nothing of that size exists: the neighbour lists are ``(N + M) x
(k1 + 1)``, ``V`` is sparse (coordinates, float32), and the Jaccard part is computed one
query chunk at a time by joining the chunk's nonzeros of ``V`` with the gallery's nonzeros
of the same columns (a pair budget bounds the work arrays). The distances come either
from given dense matrices (:func:`k_reciprocal_rerank`) or from features, computed chunk
by chunk (:func:`k_reciprocal_rerank_features`, :func:`rerank_feature_chunks`). Everything
is torch: tensors on a GPU (or ``device="cuda"``) run there.

Ties in distance are broken arbitrarily (``torch.topk``), as the reference's ``argsort``
does; results can differ from it only where the ordering of equal distances matters.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

_ELEMENTS = 1 << 23  # rows x items per chunk of distance rows (32 MB of float32)
_PAIRS = 1 << 23  # Jaccard join pairs per query chunk


class _DenseSource:
    """Squared distances of the ``N + M`` items from given query/gallery matrices.

    Row ``i`` is column ``i`` of ``[[q_q, q_g], [q_g^T, g_g]]``, as the reference's
    transpose makes it (the same thing for symmetric matrices).
    """

    def __init__(self, q_g, q_q, g_g, device):
        self.q_g, self.q_q, self.g_g = (torch.as_tensor(a).to(device, torch.float32) for a in (q_g, q_q, g_g))
        self.nq, self.ng = self.q_g.shape
        if self.q_q.shape != (self.nq, self.nq) or self.g_g.shape != (self.ng, self.ng):
            raise ValueError(f"q_g_dist is {tuple(self.q_g.shape)}: q_q_dist must be {(self.nq, self.nq)} and "
                             f"g_g_dist {(self.ng, self.ng)}, got {tuple(self.q_q.shape)} and {tuple(self.g_g.shape)}")
        self.n = self.nq + self.ng

    def rows(self, s: int, e: int) -> torch.Tensor:
        parts = []
        if s < self.nq:
            b = min(e, self.nq)
            parts.append(torch.cat([self.q_q[:, s:b].t(), self.q_g[s:b]], 1))
        if e > self.nq:
            a, b = max(s, self.nq) - self.nq, e - self.nq
            parts.append(torch.cat([self.q_g[:, a:b].t(), self.g_g[:, a:b].t()], 1))
        return torch.cat(parts, 0).square_()

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        out = torch.empty(i.shape, dtype=torch.float32, device=i.device)
        iq, jq = i < self.nq, j < self.nq
        for mi, mj, mat, oi, oj in ((iq, jq, self.q_q, 0, 0), (~iq, jq, self.q_g, self.nq, 0),
                                    (iq, ~jq, None, 0, self.nq), (~iq, ~jq, self.g_g, self.nq, self.nq)):
            m = mi & mj
            if mat is None:  # X[j, i] with j in the gallery, i a query: q_g[i, j - N]
                out[m] = self.q_g[i[m], j[m] - oj]
            else:  # X[j, i]
                out[m] = mat[j[m] - oj, i[m] - oi]
        return out.square_()

    def query_gallery(self, s: int, e: int) -> torch.Tensor:
        return self.q_g[s:e].square()


class _FeatureSource:
    """Squared :func:`dnas.reid.pairwise_distance` of query and gallery features."""

    def __init__(self, qf, gf, metric: str, device):
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")
        qf, gf = torch.as_tensor(qf), torch.as_tensor(gf)
        f = torch.cat([qf, gf.to(qf.device)]).to(device, torch.float32)
        self.metric = metric
        self.f = torch.nn.functional.normalize(f, dim=1) if metric == "cosine" else f
        self.sq = (self.f * self.f).sum(1)
        self.nq, self.ng, self.n = qf.shape[0], gf.shape[0], f.shape[0]

    def _dist(self, a: torch.Tensor, sq_a: torch.Tensor, b: torch.Tensor, sq_b: torch.Tensor) -> torch.Tensor:
        dot = a @ b.t()
        if self.metric == "cosine":
            return (1.0 - dot).square_()
        return torch.add(sq_a[:, None], sq_b[None, :]).sub_(dot, alpha=2.0).clamp_min_(0.0)

    def rows(self, s: int, e: int) -> torch.Tensor:
        return self._dist(self.f[s:e], self.sq[s:e], self.f, self.sq)

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        out = torch.empty(i.shape, dtype=torch.float32, device=i.device)
        step = max(1, _ELEMENTS // self.f.shape[1])
        for s in range(0, len(i), step):
            a, b = i[s:s + step], j[s:s + step]
            dot = (self.f[a] * self.f[b]).sum(1)
            out[s:s + step] = ((1.0 - dot).square_() if self.metric == "cosine"
                               else (self.sq[a] + self.sq[b] - 2.0 * dot).clamp_min_(0.0))
        return out

    def query_gallery(self, s: int, e: int) -> torch.Tensor:
        return self._dist(self.f[s:e], self.sq[s:e], self.f[self.nq:], self.sq[self.nq:])


def _row_step(n: int, chunk_size: int | None) -> int:
    return chunk_size or max(1, _ELEMENTS // max(n, 1))


def _neighbours(src, kmax: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, kmax)`` nearest items of every item (itself first) and every row's maximum."""
    dev = src.f.device if hasattr(src, "f") else src.q_g.device
    idx = torch.empty((src.n, kmax), dtype=torch.long, device=dev)
    row_max = torch.empty(src.n, dtype=torch.float32, device=dev)
    for s in range(0, src.n, step):
        d = src.rows(s, min(s + step, src.n))
        row_max[s:s + len(d)] = d.max(1).values
        idx[s:s + len(d)] = torch.topk(d, kmax, dim=1, largest=False, sorted=True).indices
    return idx, row_max


def _reciprocal(top: torch.Tensor, step: int) -> torch.Tensor:
    """Mask of ``top`` (``(n, k)``): ``top[i, a]`` has ``i`` among its own ``k`` nearest."""
    out = torch.empty(top.shape, dtype=torch.bool, device=top.device)
    step = max(1, step // (top.shape[1] ** 2))
    for s in range(0, len(top), step):
        rows = torch.arange(s, min(s + step, len(top)), device=top.device)
        out[rows] = (top[top[rows]] == rows[:, None, None]).any(2)
    return out


def _weights(src, idx: torch.Tensor, row_max: torch.Tensor, k1: int, step: int):
    """Sparse ``V`` (steps 2-4) as ``(rows, cols, vals)``, sorted by row then column."""
    n, dev = src.n, idx.device
    full, half = idx[:, :k1 + 1], idx[:, :int(np.around(k1 / 2.0)) + 1]
    in_full, in_half = _reciprocal(full, step), _reciprocal(half, step)
    size_half = in_half.sum(1)
    two_thirds = torch.tensor(2.0 / 3.0, dtype=torch.float64)
    out_r, out_c, out_v = [], [], []
    step = max(1, step // (full.shape[1] ** 2 * half.shape[1]))
    for s in range(0, n, step):
        rows = torch.arange(s, min(s + step, n), device=dev)
        fr, fm = full[rows], in_full[rows]  # (B, K1) candidates and R(i, k1)
        members = torch.where(fm, fr, -1)
        hc, hm = half[fr], in_half[fr]  # (B, K1, K2) half sets of the candidates
        overlap = ((hc[..., None] == members[:, None, None, :]).any(3) & hm).sum(2)
        accept = fm & (overlap.double() > two_thirds * size_half[fr].double())
        cand = torch.cat([torch.where(fm, fr, n), torch.where(accept[..., None] & hm, hc, n).flatten(1)], 1)
        cand = cand.sort(1).values
        keep = cand < n
        keep[:, 1:] &= cand[:, 1:] != cand[:, :-1]  # unique within each row
        r = rows[:, None].expand_as(cand)[keep]
        c = cand[keep]
        w = torch.exp(-(src.pairs(r, c) / row_max[r]))
        total = torch.zeros(len(rows), dtype=torch.float32, device=dev).index_add_(0, r - s, w)
        out_r.append(r)
        out_c.append(c)
        out_v.append(w / total[r - s])
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)


def _ptr(rows: torch.Tensor, n: int) -> torch.Tensor:
    """CSR row pointer of row-sorted coordinates."""
    ptr = torch.zeros(n + 1, dtype=torch.long, device=rows.device)
    ptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return ptr


def _cumulated(x: torch.Tensor) -> torch.Tensor:
    """``[0, x0, x0 + x1, ...]``."""
    out = torch.zeros(len(x) + 1, dtype=torch.long, device=x.device)
    out[1:] = x.cumsum(0)
    return out


def _chunk_end(cost: torch.Tensor, s: int, step: int) -> int:
    """End of the chunk from ``s``: at most ``step`` rows and ``_PAIRS`` cost, at least one row."""
    e = int(torch.searchsorted(cost, cost[s] + _PAIRS, right=True)) - 1
    return max(s + 1, min(e, s + step, len(cost) - 1))


def _expand(starts: torch.Tensor, counts: torch.Tensor):
    """For segments ``[starts[e], starts[e] + counts[e])``: (segment id, position) of every element."""
    seg = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = counts.cumsum(0) - counts
    return seg, starts[seg] + torch.arange(len(seg), device=counts.device) - first[seg]


def _query_expansion(r, c, v, idx: torch.Tensor, k2: int, step: int):
    """Step 5: ``V[i] <- mean(V[idx[i, :k2]])``, sparse, sorted by row then column."""
    n, dev = len(idx), idx.device
    ptr, nnz = _ptr(r, n), torch.bincount(r, minlength=n)
    cost = _cumulated(nnz[idx[:, :k2]].sum(1))  # entries gathered before each row
    out_r, out_c, out_v = [], [], []
    s = 0
    while s < n:
        e = _chunk_end(cost, s, step)
        nb = idx[s:e, :k2].reshape(-1)
        seg, pos = _expand(ptr[nb], nnz[nb])
        row = seg // k2 + s
        keys, inv = torch.unique(row * n + c[pos], sorted=True, return_inverse=True)
        vals = torch.zeros(len(keys), dtype=torch.float32, device=dev).index_add_(0, inv, v[pos])
        out_r.append(keys // n)
        out_c.append(keys % n)
        out_v.append(vals / k2)
        s = e
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)


def _rerank_chunks(src, k1: int, k2: int, lambda_value: float, chunk_size: int | None
                   ) -> Iterator[tuple[int, int, torch.Tensor]]:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    n, nq, ng = src.n, src.nq, src.ng
    kmax = min(max(k1 + 1, k2), n)
    if kmax < max(k1 + 1, k2):
        raise ValueError(f"k1={k1}, k2={k2} need more than {n} images (query + gallery)")
    step = _row_step(n, chunk_size)
    t0 = time.perf_counter()
    idx, row_max = _neighbours(src, kmax, step)
    row_max = torch.where(row_max > 0, row_max, torch.ones_like(row_max))
    t1 = time.perf_counter()
    r, c, v = _weights(src, idx, row_max, k1, _ELEMENTS)
    nnz_v = len(r)
    if k2 != 1:
        r, c, v = _query_expansion(r, c, v, idx, k2, n)
    del idx
    log.debug("re-ranking %d x %d: neighbours %.1fs, V (%d nonzeros) and expansion (%d) %.1fs",
              nq, ng, t1 - t0, nnz_v, len(r), time.perf_counter() - t1)
    ptr = _ptr(r, n)
    gal = r >= nq  # the gallery's nonzeros, grouped by column
    g_col, order = torch.sort(c[gal] * ng + (r[gal] - nq))
    g_row, g_val = (g_col % ng), v[gal][order]
    g_col = g_col // ng
    g_ptr, g_nnz = _ptr(g_col, n), torch.bincount(g_col, minlength=n)
    del gal, order
    q_cost = _cumulated(g_nnz[c[:ptr[nq]]])[ptr[:nq + 1]]  # join pairs before each query
    q_step = chunk_size or max(1, _ELEMENTS // max(ng, 1))
    log.debug("re-ranking: %d Jaccard join pairs", int(q_cost[-1]))
    s = 0
    while s < nq:
        e = _chunk_end(q_cost, s, q_step)
        a, b = int(ptr[s]), int(ptr[e])
        seg, pos = _expand(g_ptr[c[a:b]], g_nnz[c[a:b]])
        mins = torch.minimum(v[a:b][seg], g_val[pos])
        t = torch.zeros((e - s) * ng, dtype=torch.float32, device=r.device)
        t.index_add_(0, (r[a:b][seg] - s) * ng + g_row[pos], mins)
        t = t.view(e - s, ng)
        jaccard = 1.0 - t / (2.0 - t)
        original = src.query_gallery(s, e) / row_max[s:e, None]
        yield s, e, jaccard.mul_(1.0 - lambda_value).add_(original, alpha=lambda_value)
        s = e


def _device(x, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return x.device if torch.is_tensor(x) else torch.device("cpu")


def k_reciprocal_rerank(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        chunk_size: int | None = None, device: str | torch.device | None = None):
    """k-reciprocal re-ranked query x gallery distances (Zhong et al., CVPR 2017).

    Args:
        q_g_dist: ``(N, M)`` query x gallery distances (numpy or torch; not squared:
            the algorithm squares them, as the reference does).
        q_q_dist: ``(N, N)`` query x query distances.
        g_g_dist: ``(M, M)`` gallery x gallery distances.
        k1: size of the k-reciprocal neighbourhoods.
        k2: neighbours averaged by the local query expansion (1: none).
        lambda_value: weight of the original distance in the result.
        chunk_size: rows per chunk (default: about 8M matrix entries per chunk); the
            result does not depend on it.
        device: where to compute (default: ``q_g_dist``'s device; CPU for numpy).

    Returns:
        ``(N, M)`` float32 re-ranked distances: numpy for numpy input, else a tensor on
        ``device``.
    """
    dev = _device(q_g_dist, device)
    src = _DenseSource(q_g_dist, q_q_dist, g_g_dist, dev)
    out = torch.empty((src.nq, src.ng), dtype=torch.float32, device=dev)
    for s, e, d in _rerank_chunks(src, k1, k2, lambda_value, chunk_size):
        out[s:e] = d
    return out if torch.is_tensor(q_g_dist) or device is not None else out.numpy()


def rerank_feature_chunks(qf, gf, metric: str = "euclidean", k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                          chunk_size: int | None = None, device: str | torch.device | None = None
                          ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Re-ranked distances from features, one query chunk at a time.

    The distances are those of :func:`dnas.reid.pairwise_distance` (``metric``), so
    the result equals :func:`k_reciprocal_rerank` on the three matrices built from them;
    no ``(N + M)^2`` or ``N x M`` matrix is held.

    Yields:
        ``(start, stop, dist)``: queries ``start:stop`` and their ``(stop - start, M)``
        float32 distances to the gallery, on ``device`` (default: ``qf``'s).
    """
    with torch.no_grad():
        src = _FeatureSource(qf, gf, metric, _device(qf, device))
        yield from _rerank_chunks(src, k1, k2, lambda_value, chunk_size)


def k_reciprocal_rerank_features(qf, gf, metric: str = "euclidean", k1: int = 20, k2: int = 6,
                                 lambda_value: float = 0.3, chunk_size: int | None = None,
                                 device: str | torch.device | None = None) -> torch.Tensor:
    """The whole ``(N, M)`` re-ranked matrix of :func:`rerank_feature_chunks` (a tensor)."""
    dev = _device(qf, device)
    out = torch.empty((len(qf), len(gf)), dtype=torch.float32, device=dev)
    for s, e, d in rerank_feature_chunks(qf, gf, metric, k1, k2, lambda_value, chunk_size, dev):
        out[s:e] = d
    return out
