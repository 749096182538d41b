"""Model-level Re-ID evaluation used by search and retrain (paper section 4.1;
docs/method.md section 6): embed query and gallery, Euclidean distance, the standard
Market-1501 protocol (no re-ranking), CMC rank-1/5/10, mAP and mINP, with the counts of
queries evaluated and skipped (no true match in the gallery). On request (``rerank``),
the same features are also ranked by k-reciprocal re-ranked distances
(:mod:`dnas.reid.rerank`), reported beside the plain figures as ``rerank_*``, never in
their place.

The caller names the split: the test query/gallery for the reported figures, the
validation split carved from the training identities for model selection
(:mod:`dnas.data.protocol`); :func:`prefixed` turns the result into ``val_*`` /
``test_*`` metric names, and :func:`ib_part` / :func:`held_out_parts` print them in the
per-epoch lines of the search and of Re-ID retraining.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from dnas.reid import evaluate_features, extract_features


def _capped(loader: DataLoader, limit: int) -> DataLoader:
    """The loader over an evenly spaced subset of at most ``limit`` images (0: all)."""
    n = len(loader.dataset)
    if not limit or n <= limit:
        return loader
    idx = np.linspace(0, n - 1, limit).round().astype(int).tolist()
    return DataLoader(Subset(loader.dataset, idx), batch_size=loader.batch_size, num_workers=loader.num_workers)


@torch.no_grad()
def evaluate_reid(model: torch.nn.Module, query: DataLoader, gallery: DataLoader, device: torch.device,
                  max_queries: int = 0, flip: bool = False, rerank: bool = False, progress: bool = True,
                  **forward_kwargs) -> dict[str, float]:
    """mAP / CMC / mINP of ``model`` (called as ``model(x, return_features=True)``).

    Args:
        max_queries: evaluate on at most this many (evenly spaced) queries; 0 for all.
        flip: average features with the flipped images.
        rerank: also evaluate with k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3;
            :func:`dnas.reid.k_reciprocal_rerank`): adds ``rerank_mAP``,
            ``rerank_rank1``, ``rerank_rank5``, ``rerank_rank10``, ``rerank_mINP``.
        progress: progress bars of the feature extraction (only on a terminal).
        forward_kwargs: extra arguments of the model call (the supernet's ``choice``).

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10", "mINP", "num_queries", "num_valid",
        "num_skipped"}``: rates are fractions in [0, 1] over the ``num_valid`` queries
        that have a true match; ``num_skipped`` had none; ``num_queries`` is their sum.
    """
    def embed(x: torch.Tensor) -> torch.Tensor:
        return model(x, return_features=True, **forward_kwargs)["embedding"]

    was_training = model.training
    model.eval()
    try:
        qf, qp, qc = extract_features(None, _capped(query, max_queries), device, flip=flip, feature_fn=embed,
                                      progress=progress, desc="query features")
        gf, gp, gc = extract_features(None, gallery, device, flip=flip, feature_fn=embed, progress=progress,
                                      desc="gallery features")
    finally:
        model.train(was_training)
    r = evaluate_features(qf, gf, qp, gp, qc, gc, max_rank=10)
    cmc = r["cmc"]
    out = {"mAP": float(r["mAP"]), "rank1": float(cmc[0]), "rank5": float(cmc[4]), "rank10": float(cmc[9]),
           "mINP": float(r["mINP"]), "num_queries": int(r["num_queries"]), "num_valid": int(r["num_valid"]),
           "num_skipped": int(r["num_skipped"])}
    if rerank:
        rr = evaluate_features(qf, gf, qp, gp, qc, gc, max_rank=10, rerank=True)
        out.update({"rerank_mAP": float(rr["mAP"]), "rerank_rank1": float(rr["cmc"][0]),
                    "rerank_rank5": float(rr["cmc"][4]), "rerank_rank10": float(rr["cmc"][9]),
                    "rerank_mINP": float(rr["mINP"])})
    return out


def prefixed(metrics: dict, split: str) -> dict:
    """``{"mAP": ...}`` as ``{"<split>_mAP": ...}`` (``split``: ``val`` or ``test``)."""
    return {f"{split}_{k}": v for k, v in metrics.items()}


def unprefixed(metrics: dict, split: str) -> dict:
    """The ``<split>_`` metrics of ``metrics`` without the prefix (the inverse of :func:`prefixed`)."""
    prefix = f"{split}_"
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}


def ib_part(m: dict) -> list[str]:
    """The epoch's IBB and IB loss for a per-epoch line (none while not measured)."""
    return [] if math.isnan(m.get("ibb_epoch", math.nan)) else [f"ibb {m['ibb_epoch']:.3f} ib {m['ib_loss']:.3f}"]


def held_out_parts(m: dict, minp: bool = False) -> list[str]:
    """``val``/``test`` mAP and rank-1 in percent (and mINP) for a per-epoch line."""
    parts = []
    for split in ("val", "test"):
        if f"{split}_mAP" in m:
            parts.append(f"{split} mAP {100 * m[f'{split}_mAP']:.1f} R1 {100 * m[f'{split}_rank1']:.1f}"
                         + (f" mINP {100 * m[f'{split}_mINP']:.1f}" if minp else "")
                         + (f" ({m[f'{split}_num_skipped']} skipped)" if m.get(f"{split}_num_skipped") else ""))
    return parts
