"""Image transforms and mixup for Re-ID and ImageNet training (paper section 4.2).

Re-ID training: resize to 256x128 (height x width, configurable), random horizontal
flip, zero padding + random crop back to size, normalisation with the ImageNet mean and
std, random erasing. Test: resize and normalise. Built with
``torchvision.transforms.v2``; they take a PIL image and return a float tensor
``(3, H, W)``.

Mixup works on a batch (:func:`mixup_batch`) and returns soft targets for
:func:`dnas.losses.cross_entropy_smooth`; the hard labels stay available for the
triplet loss.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_float(mean: tuple[float, ...], std: tuple[float, ...]) -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def build_reid_transform(height: int = 256, width: int = 128, *, train: bool,
                         flip_prob: float = 0.5, pad: int = 10, erasing_prob: float = 0.5,
                         mean: tuple[float, ...] = IMAGENET_MEAN,
                         std: tuple[float, ...] = IMAGENET_STD) -> v2.Compose:
    """The Re-ID transform for training or testing.

    Args:
        height: output height.
        width: output width.
        train: add the random augmentations.
        flip_prob: probability of a horizontal flip (train).
        pad: zero padding before the random crop, in pixels (train; 0 disables).
        erasing_prob: probability of random erasing (train; 0 disables). The erased
            patch is set to 0, i.e. the mean colour after normalisation.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.

    Returns:
        A transform from a PIL image to a normalised ``(3, height, width)`` tensor.
    """
    ops: list = [v2.Resize((height, width), antialias=True)]
    if train:
        if flip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(flip_prob))
        if pad > 0:
            ops += [v2.Pad(pad), v2.RandomCrop((height, width))]
    ops += _to_float(mean, std)
    if train and erasing_prob > 0:
        ops.append(v2.RandomErasing(p=erasing_prob, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0))
    return v2.Compose(ops)


def build_classification_transform(size: int = 224, *, train: bool, resize: int | None = None,
                                   mean: tuple[float, ...] = IMAGENET_MEAN,
                                   std: tuple[float, ...] = IMAGENET_STD) -> v2.Compose:
    """The ImageNet transform: random-resized crop + flip, or resize + center crop.

    Args:
        size: output side.
        train: random-resized crop and flip; otherwise resize and center crop.
        resize: shorter side before the center crop (default ``size * 8 / 7``).
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.

    Returns:
        A transform from a PIL image to a normalised ``(3, size, size)`` tensor.
    """
    if train:
        ops: list = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        ops = [v2.Resize(resize or int(round(size * 8 / 7)), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(ops + _to_float(mean, std))


@dataclasses.dataclass
class MixupBatch:
    """A mixed batch.

    Attributes:
        images: ``lam * x + (1 - lam) * x[perm]``, ``(B, 3, H, W)``.
        targets: soft targets ``lam * onehot(y) + (1 - lam) * onehot(y[perm])``, ``(B, K)``.
        lam: the mixing weight.
        perm: the batch permutation.
    """

    images: torch.Tensor
    targets: torch.Tensor
    lam: float
    perm: torch.Tensor


def mixup_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                alpha: float = 0.2, rng: np.random.Generator | None = None) -> MixupBatch:
    """Mix a batch with a shuffled copy of itself (mixup, Zhang et al. 2018).

    Args:
        images: ``(B, 3, H, W)``.
        labels: ``(B,)`` integer labels.
        num_classes: classifier width ``K``.
        alpha: Beta(alpha, alpha) parameter of the mixing weight; ``alpha <= 0``
            returns the batch unmixed (``lam = 1``).
        rng: numpy generator for ``lam`` and the permutation (default: a fresh one).

    Returns:
        The :class:`MixupBatch`.
    """
    b = images.shape[0]
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(images.dtype)
    if alpha <= 0:
        return MixupBatch(images, onehot, 1.0, torch.arange(b, device=images.device))
    rng = rng if rng is not None else np.random.default_rng()
    lam = float(rng.beta(alpha, alpha))
    perm = torch.as_tensor(rng.permutation(b), device=images.device)
    mixed = lam * images + (1.0 - lam) * images[perm]  # (B, 3, H, W)
    targets = lam * onehot + (1.0 - lam) * onehot[perm]  # (B, K)
    return MixupBatch(mixed, targets, lam, perm)
