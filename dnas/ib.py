"""The IB loss and its variational upper bound IBB (paper section 3.3, Theorem 3.1;
docs/method.md section 4).

With learned features ``F_i`` (the embedding), input features ``X_i`` and labels ``y_i``:

- ``X_i`` is a fixed representation of the input image (:func:`input_representation`:
  average-pooled to a small grid), never a learned feature: the paper's ``X`` is the
  input training data, and only then is ``H(P_X)`` a constant of the weights;
- features are L2-normalised (:func:`normalize`) and softly assigned to the class
  centroids, ``phi(f_i, a) = softmax_a(-||f_i - c_a||^2 / T)`` (:func:`soft_assign`);
- ``Q(y | a) = sum_i phi(F_i, a)[y_i = y] / sum_i phi(F_i, a)`` (:func:`q_from_sums`);
- the paper's bound, averaged over a batch (:func:`ib_bound`, what training optimises)::

      IBB = mean_i [ sum_a sum_b phi(F_i,a) phi(X_i,b) log phi(X_i,b)
                     - sum_a phi(F_i,a) log Q(y_i|a) ]

- the IB loss ``I(X;F) - I(F;Y)`` from the joint tables ``P(a,b) = mean_i phi(F_i,a)
  phi(X_i,b)`` and ``P(a,y) = mean_i phi(F_i,a)[y_i=y]``, and the bound with its
  constants, ``IBB + H(P_X) - H(Y) >= IB`` (:func:`ib_terms`): the data-processing
  bound ``I(A;B) <= H(B) - mean_i H(phi_X(i))`` plus the variational bound
  ``I(A;Y) >= H(Y) + sum P(a,y) log Q(y|a)``. Reports use the bound with constants.

:func:`evaluate_ib` measures all of it on one data set (centroids and Q from the same
data: the Table V measurement). :class:`dnas.ib_tracker.IBTracker` keeps centroids and Q across epochs.

NOTE: choices the paper leaves open (docs/method.md). (1) ``Q`` gets an additive prior
``q_prior`` per cell (``log Q`` finite). (2) Normalised features with temperature
``T = 0.1`` (raw features saturate ``phi`` to one-hot: IB ~ -log K and no gradient;
at ``T = 1`` a trained net's IB is ~1e-4, at ``T = 0.1`` it lands in the paper's range).
(3) Centroids and Q of an epoch come from the same features: every epoch's normalised
embeddings are kept (float16), and at its end the class means become the centroids and
Q is computed from the assignments of those same embeddings to them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dnas.reid.features import extract_features

AllReduce = Callable[[torch.Tensor], None]
DEFAULT_TEMPERATURE = 0.1  # docs/method.md: IB of a trained net lands in the paper's range
INPUT_GRID = (8, 4)  # (H, W) cells of the fixed input representation: 3 x 8 x 4 = 96 values
CHUNK = 4096  # samples per soft-assignment chunk (bounds the (N, K) work arrays)


def input_representation(images: torch.Tensor, grid: tuple[int, int] = INPUT_GRID) -> torch.Tensor:
    """The fixed input feature ``X_i`` of images (B, 3, H, W): average-pooled to ``grid``, (B, 3*gh*gw)."""
    return F.adaptive_avg_pool2d(images.detach().float(), grid).flatten(1)


def normalize(feats: torch.Tensor) -> torch.Tensor:
    """L2-normalised ``(B, D)`` float features (``(B, C, H, W)`` is average-pooled first)."""
    f = feats.flatten(2).mean(dim=2) if feats.dim() > 2 else feats
    return F.normalize(f if f.dtype == torch.float64 else f.float(), dim=1)


def squared_distances(feats: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``||f_i - c_a||^2`` as ``(B, K)``, finite even for extreme inputs.

    Both sides are shifted by the centroids' mean (distances are translation invariant;
    this keeps the expansion ``|f|^2 + |c|^2 - 2 f.c`` accurate), the result is clamped
    at 0 and overflow is capped at the dtype's largest finite value.
    """
    shift = centroids.mean(dim=0, keepdim=True)
    f, c = feats - shift, centroids - shift
    d2 = (f * f).sum(1, keepdim=True) + (c * c).sum(1)[None, :] - 2.0 * f @ c.t()  # (B, K)
    big = torch.finfo(d2.dtype).max
    return torch.nan_to_num(d2.clamp_min(0.0), nan=big, posinf=big)


def soft_assign(feats: torch.Tensor, centroids: torch.Tensor, valid: torch.Tensor | None = None,
                temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """Soft assignments ``phi(f_i, a) = softmax_a(-||f_i - c_a||^2 / T)``.

    Args:
        feats: ``(B, D)`` features (already normalised by the caller where wanted).
        centroids: ``(K, D)``.
        valid: ``(K,)`` bool, centroids that exist; the others get ``phi = 0``.
        temperature: ``T``.

    Returns:
        ``(B, K)``, rows summing to 1 over the valid centroids.
    """
    logits = -squared_distances(feats, centroids.to(feats.dtype)) / temperature  # (B, K)
    if valid is not None:
        if not bool(valid.any()):
            raise ValueError("soft_assign: no valid centroid")
        logits = logits.masked_fill(~valid[None, :], float("-inf"))
    return F.log_softmax(logits, dim=1).exp()


def q_from_sums(s: torch.Tensor, q_prior: float = 1e-3) -> torch.Tensor:
    """``Q[a, y] = (s[a, y] + prior) / (sum_y s[a, y] + K prior)`` from soft counts ``s`` (K, K)."""
    s = s + q_prior
    return s / s.sum(dim=1, keepdim=True)


def q_from_assignments(phi_f: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       q_prior: float = 1e-3) -> torch.Tensor:
    """``Q(y | a)`` from soft assignments ``phi_f`` ``(N, K)`` and labels ``(N,)``."""
    onehot = F.one_hot(labels.long(), num_classes).to(phi_f.dtype)  # (N, K)
    return q_from_sums(phi_f.t() @ onehot, q_prior)


def ib_bound(phi_f: torch.Tensor, phi_x: torch.Tensor, q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's bound IBB averaged over a batch (Theorem 3.1), without its constants.

    Args:
        phi_f: ``(B, K)`` soft assignments of the learned features.
        phi_x: ``(B, K)`` soft assignments of the input features.
        q: ``(K, K)`` table ``Q[a, y] = Q(y | a)``.
        labels: ``(B,)`` labels.

    Returns:
        Scalar, differentiable in ``phi_f`` and ``phi_x``. ``IBB + H(P_X) - H(Y)`` bounds
        the IB loss (:func:`ib_terms`).
    """
    tiny = torch.finfo(phi_x.dtype).tiny  # log(0) -> log(tiny): 0 * finite = 0, finite grads
    neg_entropy_x = (phi_x * phi_x.clamp_min(tiny).log()).sum(dim=1)  # (B,)
    first = phi_f.sum(dim=1) * neg_entropy_x  # sum_a sum_b phi_F(a) phi_X(b) log phi_X(b)
    log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log()[:, labels.long()].t()  # (B, K_a)
    second = (phi_f * log_q).sum(dim=1)  # sum_a phi_F(a) log Q(y_i | a)
    return (first - second).mean()


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of a distribution (normalised here; zero cells contribute 0)."""
    p = p / p.sum()
    return -torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p)).sum()


def mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """``I(A;B)`` in nats of a joint table (normalised here; zero cells contribute 0)."""
    p = joint / joint.sum()
    pa, pb = p.sum(dim=1, keepdim=True), p.sum(dim=0, keepdim=True)
    ratio = p / (pa * pb).clamp_min(torch.finfo(p.dtype).tiny)
    return torch.where(p > 0, p * ratio.clamp_min(torch.finfo(p.dtype).tiny).log(), torch.zeros_like(p)).sum()


def ib_from_sums(p_fx: torch.Tensor, s_fy: torch.Tensor, sum_phi_x: torch.Tensor, neg_entropy_x: torch.Tensor,
                 cross: torch.Tensor, count: torch.Tensor) -> dict[str, float]:
    """IB loss and bound from sums over ``n = count.sum()`` samples.

    Args:
        p_fx: ``(K, K)`` ``sum_i phi_F(i, a) phi_X(i, b)``.
        s_fy: ``(K, K)`` ``sum_i phi_F(i, a) [y_i = y]``.
        sum_phi_x: ``(K,)`` ``sum_i phi_X(i, b)``.
        neg_entropy_x: ``sum_i sum_b phi_X(i,b) log phi_X(i,b)``.
        cross: ``sum_i sum_a phi_F(i,a) log Q(y_i|a)``.
        count: ``(K,)`` samples per label.

    Returns:
        ``ib``, ``i_xf``, ``i_fy``, ``ibb`` (the bound with its constants, ``>= ib``),
        ``ibb_paper`` (without them, what training optimises), ``h_px``, ``h_y``.
    """
    n = float(count.sum())
    i_xf, i_fy = float(mutual_information(p_fx)), float(mutual_information(s_fy))
    ibb_paper = float(neg_entropy_x - cross) / n
    h_px, h_y = float(entropy(sum_phi_x)), float(entropy(count))
    return {"ib": i_xf - i_fy, "i_xf": i_xf, "i_fy": i_fy, "ibb": ibb_paper + h_px - h_y,
            "ibb_paper": ibb_paper, "h_px": h_px, "h_y": h_y}


def batch_sums(phi_f: torch.Tensor, phi_x: torch.Tensor, q: torch.Tensor, labels: torch.Tensor,
                k: int) -> list[torch.Tensor]:
    """The :func:`ib_from_sums` sums of one batch (float64, detached)."""
    pf, px = phi_f.detach().double(), phi_x.detach().double()
    onehot = F.one_hot(labels.long(), k).double()
    tiny = torch.finfo(torch.float64).tiny
    log_q = q.double().clamp_min(tiny).log()[:, labels.long()].t()  # (B, K_a)
    return [pf.t() @ px, pf.t() @ onehot, px.sum(0), (px * px.clamp_min(tiny).log()).sum(),
            (pf * log_q).sum(), onehot.sum(0)]


def ib_terms(phi_f: torch.Tensor, phi_x: torch.Tensor, q: torch.Tensor, labels: torch.Tensor,
             num_classes: int) -> dict[str, float]:
    """IB loss, its bound with constants (``>= ib``) and the paper's IBB of one sample set."""
    return ib_from_sums(*batch_sums(phi_f, phi_x, q, labels, num_classes))


def class_means(feats: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means (K, D) float64, counts (K,))`` of ``feats`` per label."""
    sums = torch.zeros(k, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels.long(), feats.double())
    count = torch.bincount(labels.long(), minlength=k).double()
    return sums / count.clamp_min(1)[:, None], count


@torch.no_grad()
def evaluate_ib(features: torch.Tensor, inputs: torch.Tensor, labels, num_classes: int | None = None,
                temperature: float = DEFAULT_TEMPERATURE, q_prior: float = 1e-3) -> dict[str, float]:
    """The IB loss and its bound of a trained network on one data set (Table V).

    Centroids and Q come from the same data. ``inputs`` are images ``(N, 3, H, W)``
    (mapped by :func:`input_representation`) or already the fixed ``(N, D)`` input
    features. Labels are re-indexed to the classes present.

    Returns:
        ``{"ib", "ibb", "i_xf", "i_fy", "ibb_paper", "h_px", "h_y", "classes", "n"}``;
        ``ibb >= ib`` always.
    """
    labels = torch.as_tensor(labels).long().cpu()
    if not (features.shape[0] == inputs.shape[0] == labels.shape[0]):
        raise ValueError(f"evaluate_ib: sizes differ: features {features.shape[0]}, inputs {inputs.shape[0]}, "
                         f"labels {labels.shape[0]}")
    classes, y = torch.unique(labels, return_inverse=True)
    k = num_classes or len(classes)
    x = inputs if inputs.dim() == 2 else input_representation(inputs)
    f, x = normalize(features.cpu()).double(), normalize(x.cpu()).double()
    cf, _ = class_means(f, y, k)
    cx, _ = class_means(x, y, k)
    valid = torch.bincount(y, minlength=k) > 0
    phi_f = torch.cat([soft_assign(c, cf, valid, temperature) for c in f.split(CHUNK)])
    phi_x = torch.cat([soft_assign(c, cx, valid, temperature) for c in x.split(CHUNK)])
    q = q_from_assignments(phi_f, y, k, q_prior)
    out = ib_terms(phi_f, phi_x, q, y, k)
    out.update(classes=int(valid.sum()), n=int(labels.shape[0]))
    return out


@torch.no_grad()
def evaluate_model_ib(model: torch.nn.Module, loader, device, temperature: float = DEFAULT_TEMPERATURE,
                      **forward_kw) -> dict[str, float]:
    """:func:`evaluate_ib` of a network's ``global_feat`` over a loader, in eval mode.

    Args:
        model: called as ``model(images, return_features=True, **forward_kw)``.
        loader: yields ``(images, labels, camids)`` (the training set with test transforms:
            Table V's measurement); the pass is :func:`dnas.reid.features.extract_features`.
        device: where the model runs.
        temperature: ``T`` of the soft assignments.

    Returns:
        The :func:`evaluate_ib` dict, plus ``"split"`` naming what was measured.
    """
    def feature_fn(images: torch.Tensor) -> torch.Tensor:  # (B, D + 96): the embedding, then X
        out = model(images, return_features=True, **forward_kw)
        return torch.cat([out["global_feat"].float(), input_representation(images)], dim=1)

    both, labels, _ = extract_features(model, loader, device, flip=False, feature_fn=feature_fn)
    dx = 3 * INPUT_GRID[0] * INPUT_GRID[1]
    result = evaluate_ib(both[:, :-dx], both[:, -dx:], labels, temperature=temperature)
    result["split"] = "train (all training images, test transforms, eval mode)"
    return result


def default_all_reduce(t: torch.Tensor) -> None:
    """Sum ``t`` in place over processes when ``torch.distributed`` is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def reduce_tensors(tensors: list[torch.Tensor], all_reduce: AllReduce | None) -> None:
    """Sum every tensor of ``tensors`` in place over processes with one call."""
    if all_reduce is None or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    all_reduce(flat)
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(chunk.view_as(t))


__all__ = ["evaluate_ib", "evaluate_model_ib", "ib_bound", "ib_terms", "input_representation", "normalize",
           "soft_assign", "q_from_sums", "q_from_assignments", "mutual_information", "entropy"]
