"""Re-ID evaluation: CMC, mAP and mINP under the Market-1501 protocol (paper section 4.1).

For every query, the gallery is ranked by increasing distance; gallery images of the
query's identity taken by the query's camera are removed (they are "junk": too easy);
the remaining images of the query's identity are its true matches. A query without any
true match is skipped: the results count it (``num_skipped``) beside the queries the
rates are averaged over (``num_valid``). Images with pid ``-1`` (Market-1501 "junk")
are dropped from query and gallery before ranking, as the data loaders drop them, and
counted (``num_junk_query`` / ``num_junk_gallery``); a pid below ``-1`` is an error.
Per query:

- CMC: ``cmc[k] = 1`` if a true match is within the first ``k + 1`` kept images;
- AP: mean over true matches of (matches so far) / (rank among kept images);
- INP: (number of matches) / (rank of the last match) (Ye et al., mINP).

Ties in distance are broken by gallery order (a stable sort), so results are
deterministic. No re-ranking, unless :func:`evaluate_features` is asked for it
(``rerank``: k-reciprocal re-ranking, :mod:`dnas.reid.rerank`).

Implementation: vectorised and chunked over queries. Only the ranks of true matches and
junk images are needed: float32 distances are packed with the gallery index into
unique 64-bit keys, sorted by value (several times faster than a stable argsort), and
the wanted keys are found with one ``searchsorted``; the per-query numbers follow from
those sparse ranks. :func:`evaluate_features` computes the distances chunk by chunk, so
an MSMT17-size evaluation never holds the full query x gallery matrix. Distances on a
GPU are ranked there (torch path).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dnas.errors import DataError, EvaluationError

_NAN_MESSAGE = ("Re-ID evaluation: the distance matrix contains NaN (features that are not finite: "
                "a diverged model, NaN weights or NaN inputs)")

_CHUNK_ELEMENTS = 1 << 23  # query x gallery entries per chunk (~0.3 GB of work arrays)


class _Gallery:
    """Gallery labels, with an index from pid to gallery positions."""

    def __init__(self, pids: np.ndarray, camids: np.ndarray) -> None:
        self.pids, self.camids = pids, camids
        self.order = np.argsort(pids, kind="stable")
        self.sorted_pids = pids[self.order]

    def matches(self, q_pids: np.ndarray, q_camids: np.ndarray):
        """``(good_rows, good_cols, junk_rows, junk_cols)`` of a query chunk, rows ascending.

        Good: same pid, other camera (true matches). Junk: same pid, same camera.
        """
        lo = np.searchsorted(self.sorted_pids, q_pids, side="left")
        n = np.searchsorted(self.sorted_pids, q_pids, side="right") - lo
        rows = np.repeat(np.arange(len(q_pids)), n)
        out_start = np.cumsum(n) - n
        cols = self.order[np.arange(n.sum()) - np.repeat(out_start - lo, n)]
        junk = self.camids[cols] == q_camids[rows]
        return rows[~junk], cols[~junk], rows[junk], cols[junk]


def _ranks_at_numpy(dist: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rank of gallery ``cols[n]`` in row ``rows[n]`` when sorted by (distance, index)."""
    if np.isnan(dist).any():
        raise EvaluationError(_NAN_MESSAGE)
    q, g = dist.shape
    shift = max(1, int(g - 1).bit_length())
    row_bits = max(1, int(q - 1).bit_length())
    if dist.dtype == np.float32 and 32 + shift + row_bits <= 64:
        bits = (dist + np.float32(0.0)).view(np.int32)  # a contiguous copy; -0.0 becomes +0.0
        mono = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(np.uint32) ^ np.uint32(0x80000000)
        del bits
        keys = mono.astype(np.uint64)  # (Q, G): monotone distance bits | gallery index
        keys <<= np.uint64(shift)
        keys |= np.arange(g, dtype=np.uint64)
        keys.sort(axis=1)
        offsets = np.arange(q, dtype=np.uint64) << np.uint64(32 + shift)
        keys += offsets[:, None]  # rows now ascend one after another: one flat search
        wanted = ((mono[rows, cols].astype(np.uint64) << np.uint64(shift))
                  | cols.astype(np.uint64)) + offsets[rows]
        return np.searchsorted(keys.ravel(), wanted) - rows.astype(np.int64) * g
    order = np.argsort(dist, axis=1, kind="stable")
    ranks = np.empty((q, g), dtype=np.int64)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(g), (q, g)), axis=1)
    return ranks[rows, cols]


def _ranks_at_torch(dist: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Torch version of :func:`_ranks_at_numpy` (ranks on ``dist.device``)."""
    if bool(torch.isnan(dist).any()):
        raise EvaluationError(_NAN_MESSAGE)
    dev = dist.device
    order = torch.sort(dist + 0.0, dim=1, stable=True).indices  # (Q, G)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(dist.shape[1], device=dev).expand_as(order))
    r, c = torch.as_tensor(rows, device=dev), torch.as_tensor(cols, device=dev)
    return ranks[r, c].cpu().numpy()


def _chunk_stats(dist, q_pids, q_camids, gallery: _Gallery):
    good_r, good_c, junk_r, junk_c = gallery.matches(q_pids, q_camids)
    rank_fn = _ranks_at_torch if torch.is_tensor(dist) else _ranks_at_numpy
    ranks = rank_fn(dist, np.concatenate([good_r, junk_r]), np.concatenate([good_c, junk_c]))
    return _per_query(len(q_pids), good_r, ranks[:len(good_r)], junk_r, ranks[len(good_r):])


def _per_query(num_q: int, good_r, good_rank, junk_r, junk_rank):
    """First match rank (0-based, among kept), AP, INP and match count per query."""
    num_good = np.bincount(good_r, minlength=num_q)
    # junk images ranked before each match: searchsorted in (row, rank)-sorted junk keys
    g = np.int64(max(int(good_rank.max(initial=0)), int(junk_rank.max(initial=0))) + 1)
    junk_keys = np.sort(junk_r.astype(np.int64) * g + junk_rank)
    good_keys = good_r.astype(np.int64) * g + good_rank
    junk_before = (np.searchsorted(junk_keys, good_keys)
                   - np.searchsorted(junk_keys, good_r.astype(np.int64) * g))
    kept_rank = good_rank - junk_before  # 0-based rank among kept gallery images
    order = np.lexsort((kept_rank, good_r))
    rows, kept_rank = good_r[order], kept_rank[order]
    starts = np.concatenate([[0], np.cumsum(num_good)[:-1]])
    hit_no = np.arange(len(rows)) - starts[rows] + 1  # 1, 2, ... within each query
    ap = np.bincount(rows, weights=hit_no / (kept_rank + 1), minlength=num_q).astype(np.float64)
    has = num_good > 0
    first = np.full(num_q, -1, dtype=np.int64)
    last = np.full(num_q, -1, dtype=np.int64)
    first[has] = kept_rank[starts[has]]
    last[has] = kept_rank[starts[has] + num_good[has] - 1]
    ap[has] /= num_good[has]
    inp = np.zeros(num_q)
    inp[has] = num_good[has] / (last[has] + 1)
    return first, ap, inp, num_good


def _junk_masks(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep-masks of query and gallery without pid ``-1``; a pid below ``-1`` is refused."""
    for what, pids in (("query", q_pids), ("gallery", g_pids)):
        if len(pids) and pids.min() < -1:
            raise DataError(f"Re-ID evaluation: {what} pid {int(pids.min())} is invalid; expected -1 (junk, "
                            "dropped) or >= 0")
    q_keep, g_keep = q_pids != -1, g_pids != -1
    if not q_keep.any() or not g_keep.any():
        raise DataError(f"Re-ID evaluation: no {'query' if not q_keep.any() else 'gallery'} image left "
                        "after dropping pid -1 (junk)")
    return q_keep, g_keep


def _summarise(first: np.ndarray, ap: np.ndarray, inp: np.ndarray, num_good: np.ndarray,
               max_rank: int, junk: tuple[int, int] = (0, 0)) -> dict[str, Any]:
    valid = num_good > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise DataError(f"Re-ID evaluation: no query has a true match in the gallery "
                        f"(same identity, another camera; {len(first)} queries skipped)")
    hist = np.bincount(np.minimum(first[valid], max_rank), minlength=max_rank + 1)
    cmc = np.cumsum(hist[:max_rank]) / n_valid
    return {"cmc": cmc, "mAP": float(ap[valid].mean()), "mINP": float(inp[valid].mean()),
            "rank1": float(cmc[0]), "rank5": float(cmc[min(4, max_rank - 1)]),
            "rank10": float(cmc[min(9, max_rank - 1)]), "num_queries": int(len(first)),
            "num_valid": n_valid, "num_skipped": int(len(first) - n_valid),
            "num_junk_query": int(junk[0]), "num_junk_gallery": int(junk[1])}


def _labels(a) -> np.ndarray:
    return (a.detach().cpu().numpy() if torch.is_tensor(a) else np.asarray(a)).astype(np.int64)


def _chunk_rows(num_g: int, chunk_size: int | None) -> int:
    return chunk_size or max(1, _CHUNK_ELEMENTS // max(num_g, 1))


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
             chunk_size: int | None = None) -> dict[str, Any]:
    """CMC, mAP and mINP of a query x gallery distance matrix (Market-1501 protocol).

    Args:
        distmat: ``(Q, G)`` numpy array or torch tensor (a CUDA tensor is ranked on
            its device); smaller is closer.
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        max_rank: length of the CMC curve.
        chunk_size: queries per chunk (default: about 8M matrix entries per chunk).

    Returns:
        ``{"cmc": (max_rank,) float array, "mAP", "mINP", "rank1", "rank5", "rank10",
        "num_queries", "num_valid", "num_skipped", "num_junk_query",
        "num_junk_gallery"}``; rates are fractions in [0, 1], averaged over the
        ``num_valid`` queries; ``num_skipped`` queries had no true match;
        ``num_queries`` (= valid + skipped) excludes the dropped pid ``-1`` queries.

    Raises:
        DataError: no query has a true match, or a pid below -1.
    """
    q_pids, g_pids, q_camids, g_camids = map(_labels, (q_pids, g_pids, q_camids, g_camids))
    num_q, num_g = distmat.shape
    if (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (num_q, num_q, num_g, num_g):
        raise ValueError(f"distmat is {num_q}x{num_g} but got {len(q_pids)} query pids, "
                         f"{len(q_camids)} query camids, {len(g_pids)} gallery pids, "
                         f"{len(g_camids)} gallery camids")
    on_torch = torch.is_tensor(distmat) and distmat.device.type != "cpu"
    if torch.is_tensor(distmat) and not on_torch:
        distmat = distmat.detach().numpy()
    q_keep, g_keep = _junk_masks(q_pids, g_pids)
    junk = (int((~q_keep).sum()), int((~g_keep).sum()))
    if junk != (0, 0):
        if on_torch:
            distmat = distmat[torch.as_tensor(q_keep, device=distmat.device)][
                :, torch.as_tensor(g_keep, device=distmat.device)]
        else:
            distmat = np.ascontiguousarray(np.asarray(distmat)[q_keep][:, g_keep])
        q_pids, q_camids, g_pids, g_camids = q_pids[q_keep], q_camids[q_keep], g_pids[g_keep], g_camids[g_keep]
        num_q = len(q_pids)
    gallery = _Gallery(g_pids, g_camids)
    step = _chunk_rows(num_g, chunk_size)
    parts = [_chunk_stats(distmat[s:s + step], q_pids[s:s + step], q_camids[s:s + step], gallery)
             for s in range(0, num_q, step)]
    first, ap, inp, num_good = (np.concatenate(x) for x in zip(*parts))
    return _summarise(first, ap, inp, num_good, max_rank, junk)


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "euclidean",
                      g_sq: torch.Tensor | None = None) -> torch.Tensor:
    """``(Q, G)`` distances: ``euclidean`` or ``cosine`` (``1 - cos``).

    Args:
        qf: ``(Q, D)`` features.
        gf: ``(G, D)`` features.
        metric: ``euclidean`` or ``cosine``.
        g_sq: precomputed ``(gf * gf).sum(1)`` (euclidean; saves work when chunking).
    """
    if metric == "euclidean":
        g_sq = (gf * gf).sum(1) if g_sq is None else g_sq
        base = (qf * qf).sum(1, keepdim=True) + g_sq[None, :]  # (Q, G)
        return torch.addmm(base, qf, gf.t(), alpha=-2.0).clamp_min_(0.0).sqrt_()
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf, dim=1)
        gn = torch.nn.functional.normalize(gf, dim=1)
        return 1.0 - qn @ gn.t()
    raise ValueError(f"unknown metric {metric!r}; expected 'euclidean' or 'cosine'")


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric: str = "euclidean",
                      max_rank: int = 50, chunk_size: int | None = None,
                      device: str | torch.device | None = None, rerank: bool | dict = False) -> dict[str, Any]:
    """:func:`evaluate` from features, computing distances one query chunk at a time.

    The full ``Q x G`` matrix never exists (MSMT17: 11,659 x 82,161 floats would be
    3.8 GB); peak memory is the features plus one chunk's work arrays.

    Args:
        qf: ``(Q, D)`` query features (numpy or torch).
        gf: ``(G, D)`` gallery features.
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        metric: ``euclidean`` (the paper's) or ``cosine``.
        max_rank: length of the CMC curve.
        chunk_size: queries per chunk (default: about 8M matrix entries per chunk).
        device: where distances are computed and ranked (default: ``qf``'s device).
        rerank: rank by k-reciprocal re-ranked distances instead (True, or a dict of
            ``k1``, ``k2``, ``lambda_value``); computed chunk by chunk too.

    Returns:
        The dict of :func:`evaluate`.
    """
    qf = torch.as_tensor(qf)
    gf = torch.as_tensor(gf)
    device = torch.device(device) if device is not None else qf.device
    qf, gf = qf.to(device, torch.float32), gf.to(device, torch.float32)
    q_pids, g_pids, q_camids, g_camids = map(_labels, (q_pids, g_pids, q_camids, g_camids))
    if len(q_pids) != qf.shape[0] or len(g_pids) != gf.shape[0]:
        raise ValueError(f"{qf.shape[0]} query / {gf.shape[0]} gallery features but "
                         f"{len(q_pids)} / {len(g_pids)} pids")
    bad_q, bad_g = (int((~torch.isfinite(f)).any(1).sum()) if f.numel() else 0 for f in (qf, gf))
    if bad_q or bad_g:
        raise EvaluationError(f"Re-ID evaluation: {bad_q} of {qf.shape[0]} query and {bad_g} of {gf.shape[0]} "
                              "gallery features are NaN or inf (a diverged model, NaN weights or NaN inputs)")
    q_keep, g_keep = _junk_masks(q_pids, g_pids)
    junk = (int((~q_keep).sum()), int((~g_keep).sum()))
    if junk != (0, 0):
        qf, gf = qf[torch.as_tensor(q_keep, device=qf.device)], gf[torch.as_tensor(g_keep, device=gf.device)]
        q_pids, q_camids, g_pids, g_camids = q_pids[q_keep], q_camids[q_keep], g_pids[g_keep], g_camids[g_keep]
    gallery = _Gallery(g_pids, g_camids)
    step = _chunk_rows(gf.shape[0], chunk_size)
    parts = []
    if rerank:
        from dnas.reid.rerank import rerank_feature_chunks

        opts = rerank if isinstance(rerank, dict) else {}
        for s, e, dist in rerank_feature_chunks(qf, gf, metric, chunk_size=chunk_size, device=device, **opts):
            dist = dist.numpy() if device.type == "cpu" else dist
            parts.append(_chunk_stats(dist, q_pids[s:e], q_camids[s:e], gallery))
    with torch.no_grad():
        g_sq = (gf * gf).sum(1) if metric == "euclidean" else None
        for s in range(0, qf.shape[0] if not rerank else 0, step):
            dist = pairwise_distance(qf[s:s + step], gf, metric, g_sq)
            if device.type == "cpu":
                dist = dist.numpy()
            parts.append(_chunk_stats(dist, q_pids[s:s + step], q_camids[s:s + step], gallery))
    first, ap, inp, num_good = (np.concatenate(x) for x in zip(*parts))
    return _summarise(first, ap, inp, num_good, max_rank, junk)
