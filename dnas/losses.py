"""Re-ID training losses (paper eq. 4; docs/method.md section 4).

- :func:`cross_entropy_smooth` / :class:`CrossEntropyLabelSmooth`: cross-entropy with
  label smoothing (eps = 0.1), for integer labels or soft (mixup) targets.
- :func:`batch_hard_triplet` / :class:`TripletLoss`: batch-hard triplet loss
  (Hermans et al. 2017), margin 0.3, or the soft-margin variant ``softplus(d_ap - d_an)``.
- :class:`CenterLoss`: optional center loss (Wen et al. 2016) with learnable centers.

The IB bound term of eq. 4 lives in :mod:`dnas.ib`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def cross_entropy_smooth(logits: torch.Tensor, targets: torch.Tensor,
                         epsilon: float = 0.1) -> torch.Tensor:
    """Mean cross-entropy against label-smoothed targets.

    The target distribution is ``(1 - eps) * t + eps / K``, where ``t`` is the one-hot
    label or the given soft target (mixup).

    Args:
        logits: ``(B, K)``.
        targets: ``(B,)`` integer labels or ``(B, K)`` soft targets summing to 1.
        epsilon: smoothing weight.

    Returns:
        Scalar loss.
    """
    k = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)  # (B, K)
    if targets.dim() == 1:
        targets = F.one_hot(targets.long(), k).to(log_p.dtype)
    targets = (1.0 - epsilon) * targets.to(log_p.dtype) + epsilon / k
    return -(targets * log_p).sum(dim=1).mean()


class CrossEntropyLabelSmooth(nn.Module):
    """Module form of :func:`cross_entropy_smooth`."""

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy_smooth(logits, targets, self.epsilon)


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` Euclidean distances with a gradient that stays finite at 0."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(1e-12)
    return d2.sqrt()


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3,
                       soft_margin: bool = False, normalize: bool = False) -> torch.Tensor:
    """Batch-hard triplet loss.

    For each anchor: the farthest positive (same label, not itself) and the closest
    negative; loss ``relu(d_ap - d_an + margin)`` (or ``softplus(d_ap - d_an)`` with
    ``soft_margin``), averaged over anchors that have both a positive and a negative.
    A batch without such an anchor gives 0 (still connected to the graph).

    Args:
        features: ``(B, D)`` embeddings.
        labels: ``(B,)`` identities.
        margin: the margin (ignored with ``soft_margin``).
        soft_margin: use the soft-margin form.
        normalize: L2-normalise the features first.

    Returns:
        Scalar loss.
    """
    if normalize:
        features = F.normalize(features, dim=1)
    dist = pairwise_euclidean(features)  # (B, B)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).amax(dim=1)[valid]
    d_an = dist.masked_fill(~neg, float("inf")).amin(dim=1)[valid]
    if soft_margin:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()


class TripletLoss(nn.Module):
    """Module form of :func:`batch_hard_triplet`."""

    def __init__(self, margin: float = 0.3, soft_margin: bool = False,
                 normalize: bool = False) -> None:
        super().__init__()
        self.margin, self.soft_margin, self.normalize = margin, soft_margin, normalize

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batch_hard_triplet(features, labels, self.margin, self.soft_margin, self.normalize)


class CenterLoss(nn.Module):
    """Center loss ``mean_i ||f_i - c_{y_i}||^2 / 2`` with learnable class centers.

    Args:
        num_classes: number of classes.
        feat_dim: feature width.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = features - self.centers[labels.long()]  # (B, D)
        return 0.5 * (diff * diff).sum(dim=1).mean()
