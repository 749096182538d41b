"""Re-ID training losses (paper eq. 4; docs/method.md section 4).

- :func:`cross_entropy_smooth` / :class:`CrossEntropyLabelSmooth`: cross-entropy with
  label smoothing (eps = 0.1), for integer labels or soft (mixup) targets.
- :func:`batch_hard_triplet` / :class:`TripletLoss`: batch-hard triplet loss
  (Hermans et al. 2017), margin 0.3, or the soft-margin variant ``softplus(d_ap - d_an)``.
- :class:`CenterLoss`: optional center loss (Wen et al. 2016) with learnable centers.
- :class:`ReIDLoss`: eq. 4 as one object, used by the search and by Re-ID retraining:
  CE + triplet + eta * IBB (+ center), returning the named parts.

The IB bound term of eq. 4 lives in :mod:`dnas.ib` / :mod:`dnas.ib_tracker`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dnas.ib_tracker import IBTracker


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


def branch_mean(values: list[torch.Tensor]) -> torch.Tensor:
    """One loss of several branches, TransReID's way: ``0.5 * global + 0.5 * mean(parts)``
    (the global branch first); a single value as it is."""
    if len(values) == 1:
        return values[0]
    return 0.5 * values[0] + 0.5 * torch.stack(values[1:]).mean()


class ReIDLoss:
    """The Re-ID objective of eq. 4: ``CE(label smoothing) + triplet_weight * batch-hard
    triplet + eta * IBB (+ center_weight * center loss)``, with its named parts.

    The IB tracker (:class:`dnas.ib_tracker.IBTracker`, F = the pre-BNNeck embedding,
    X = the model's ``ib_input``) runs whether or not the IBB trains (``use_ibb``): the
    IB loss and the bound are always reported; without ``use_ibb`` they are computed on
    detached features and left out of the loss. A model with several branches (TransReID:
    ``branch_logits`` and ``branch_feats``) gets the CE and the triplet loss of each,
    combined by :func:`branch_mean`; the IB and center terms see the joined features.

    Args:
        num_classes: identities of the training split.
        label_smoothing, triplet_margin, triplet_weight, soft_margin: CE and triplet.
        ib_eta, ib_temperature, use_ibb: the IBB term.
        center_weight: 0 = no center loss; else ``feat_dim`` is the embedding width.
    """

    def __init__(self, num_classes: int, *, label_smoothing: float = 0.1, triplet_margin: float = 0.3,
                 triplet_weight: float = 1.0, soft_margin: bool = False, ib_eta: float = 0.1,
                 ib_temperature: float = 0.1, use_ibb: bool = True, center_weight: float = 0.0,
                 feat_dim: int | None = None) -> None:
        self.label_smoothing, self.triplet_margin, self.triplet_weight = label_smoothing, triplet_margin, triplet_weight
        self.soft_margin, self.ib_eta, self.use_ibb, self.center_weight = soft_margin, ib_eta, use_ibb, center_weight
        self.ib = IBTracker(num_classes, temperature=ib_temperature)
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None

    @classmethod
    def from_config(cls, cfg, num_classes: int, feat_dim: int | None = None) -> "ReIDLoss":
        """From a recipe with the loss keys (search or retrain; absent keys: defaults)."""
        keys = ("label_smoothing", "triplet_margin", "triplet_weight", "soft_margin", "ib_eta", "ib_temperature",
                "use_ibb", "center_weight")
        return cls(num_classes, feat_dim=feat_dim, **{k: getattr(cfg, k) for k in keys if hasattr(cfg, k)})

    def __call__(self, out: dict, targets: torch.Tensor, labels: torch.Tensor,
                 accumulate: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss and its parts ``ce``, ``triplet``, ``ibb`` (and ``center``).

        Args:
            out: the model's training outputs (``logits``, ``global_feat``, ``ib_input``).
            targets: ``(B,)`` labels or ``(B, K)`` soft targets (mixup) for the CE.
            labels: ``(B,)`` hard labels for the triplet, IB and center terms.
            accumulate: add the batch to the IB tracker's epoch sums (the search's
                architecture steps only read the bound).
        """
        logits, feat, x = out["logits"].float(), out["global_feat"].float(), out["ib_input"].float()
        branches = list(zip(out.get("branch_logits") or [logits], out.get("branch_feats") or [feat]))
        ce = branch_mean([cross_entropy_smooth(lg.float(), targets, self.label_smoothing) for lg, _ in branches])
        tri = branch_mean([batch_hard_triplet(f.float(), labels, self.triplet_margin, soft_margin=self.soft_margin)
                           for _, f in branches])
        ib = self.ib.step if accumulate else self.ib.bound
        if self.use_ibb:
            ibb = ib(feat, x, labels)
        else:  # reported, not trained
            with torch.no_grad():
                ibb = ib(feat.detach(), x.detach(), labels)
        loss = ce + self.triplet_weight * tri
        if self.use_ibb:
            loss = loss + self.ib_eta * ibb
        parts = {"ce": ce, "triplet": tri, "ibb": ibb}
        if self.center is not None:
            parts["center"] = self.center(feat, labels)
            loss = loss + self.center_weight * parts["center"]
        return loss, parts

    def to(self, device) -> "ReIDLoss":
        self.ib.to(device)
        if self.center is not None:
            self.center.to(device)
        return self

    def state_dict(self) -> dict:
        state = {"ib": self.ib.state_dict()}
        if self.center is not None:
            state["center"] = self.center.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.ib.load_state_dict(state["ib"])
        if self.center is not None:
            self.center.load_state_dict(state["center"])
