"""Ranked result lists of the worst and best queries by AP (paper section 4.1 protocol).

Each query is ranked against the test gallery by Euclidean distance, as the evaluation
ranks it: gallery images of the query's identity from the query's camera and images
with pid ``-1`` are left out ("junk" in :mod:`dnas.reid.metrics`), ties go to the
earlier gallery image. The AP of a query is :func:`dnas.reid.metrics.evaluate` of its
single distance row, so the mean over queries is the evaluation's mAP; queries without
a true match (none in the gallery from another camera) have no AP and are not shown.
A figure row is a query and its top-k gallery images, framed green (same identity) or
red (another identity or a distractor).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dnas.reid.metrics import evaluate, pairwise_distance

_CHUNK = 256  # queries per distance chunk


def ranked_lists(qf: torch.Tensor, gf: torch.Tensor, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                 g_camids: np.ndarray, topk: int = 10) -> dict[str, np.ndarray]:
    """Per-query AP, first-match rank and top-k gallery list.

    Args:
        qf: ``(Q, D)`` query features.
        gf: ``(G, D)`` gallery features.
        q_pids: ``(Q,)`` query identities.
        g_pids: ``(G,)`` gallery identities.
        q_camids: ``(Q,)`` query cameras.
        g_camids: ``(G,)`` gallery cameras.
        topk: gallery images kept per query.

    Returns:
        ``{"ap": (Q,) float (NaN: no true match), "first_match": (Q,) 0-based rank of
        the first true match among kept images (-1: none), "top": (Q, topk) gallery
        indices (-1 past the end), "top_dist": (Q, topk), "top_match": (Q, topk) bool}``.
    """
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q = len(q_pids)
    ap, first = np.full(num_q, np.nan), np.full(num_q, -1, dtype=np.int64)
    top = np.full((num_q, topk), -1, dtype=np.int64)
    top_dist = np.full((num_q, topk), np.nan)
    top_match = np.zeros((num_q, topk), dtype=bool)
    for s in range(0, num_q, _CHUNK):
        dist = pairwise_distance(qf[s:s + _CHUNK].float(), gf.float()).cpu().numpy()  # (chunk, G)
        for r, row in enumerate(dist):
            i = s + r
            junk = (g_pids == -1) | ((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
            kept = np.flatnonzero(~junk)
            order = kept[np.argsort(row[kept], kind="stable")]
            n = min(topk, len(order))
            top[i, :n], top_dist[i, :n] = order[:n], row[order[:n]]
            hits = g_pids[order] == q_pids[i]
            top_match[i, :n] = hits[:n]
            if q_pids[i] == -1 or not hits.any():
                continue
            first[i] = int(np.argmax(hits))
            ap[i] = evaluate(row[None, :], q_pids[i:i + 1], g_pids, q_camids[i:i + 1], g_camids, max_rank=1)["mAP"]
    return {"ap": ap, "first_match": first, "top": top, "top_dist": top_dist, "top_match": top_match}


def worst_and_best(ap: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``num`` lowest-AP queries (worst first) and the ``num`` highest (best
    first) among those with an AP; ties go to the earlier query."""
    valid = np.flatnonzero(np.isfinite(ap))
    order = valid[np.argsort(ap[valid], kind="stable")]
    best = valid[np.argsort(-ap[valid], kind="stable")]
    return order[:num], best[:num]


def draw_ranked(query_pictures: np.ndarray, gallery_pictures: Sequence[np.ndarray], rows: Sequence[dict], title: str):
    """A torchreid-style grid: each row a query and its top-k, green/red frames.

    Args:
        query_pictures: ``(R, H, W, 3)`` the rows' query images in [0, 1].
        gallery_pictures: per row, ``(k, H, W, 3)`` its top-k gallery images.
        rows: per row ``{"label": str, "match": (k,) bool, "dist": (k,) float}``.
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    k = max(len(g) for g in gallery_pictures)
    h, w = query_pictures.shape[1:3]
    cell = 1.1 * w / h  # width of a cell in inches per 1.6 inch of height
    fig, axes = plt.subplots(len(rows), k + 1, figsize=((k + 1) * cell * 1.6 + 0.4, 1.95 * len(rows) + 0.5),
                             squeeze=False)
    for r, (q, gal, info) in enumerate(zip(query_pictures, gallery_pictures, rows)):
        axes[r, 0].imshow(q)
        axes[r, 0].set_title(info["label"], fontsize=7)
        for c in range(k):
            ax = axes[r, c + 1]
            if c < len(gal):
                ax.imshow(gal[c])
                colour = "#1a9e1a" if info["match"][c] else "#d62020"
                ax.add_patch(Rectangle((0, 0), w - 1, h - 1, fill=False, edgecolor=colour, linewidth=4))
                ax.set_title(f"{c + 1}: d={info['dist'][c]:.2f}", fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        for spine in axes[r, 0].spines.values():
            spine.set_visible(True)
            spine.set_linewidth(2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (1.95 * len(rows) + 0.5)))
    return fig
