"""Batch samplers and the weight/architecture split of the search (paper section 3.4, eq. 5).

- :class:`PKSampler`: batches of P identities x K images (the batch-hard triplet loss
  needs several images per identity); an identity with fewer than K images is sampled
  with replacement.
- :class:`RandomBatchSampler`: plain shuffled batches (ImageNet pretraining).
- :func:`split_weight_arch`: the 80/20 split of the training images into the subset for
  the weight steps and the subset for the architecture steps.

Both samplers are batch samplers (``DataLoader(ds, batch_sampler=...)``) and are
deterministic functions of ``(seed, epoch)``: the epoch's batches are computed up front
from a seeded generator, so a training loop resumes exactly mid-epoch with
``set_epoch(epoch, start_batch=i)`` (or ``load_state_dict``), which skips the first
``i`` batches without loading any image. The state dicts hold plain ints.

With several processes (DDP) pass ``rank`` and ``world_size``: every process computes
the same global batch list and takes every ``world_size``-th batch, truncated to an
equal count.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from dnas.errors import DataError


class _EpochBatchSampler(Sampler[list[int]]):
    """Shared epoch / resume / rank logic; subclasses implement ``_global_batches``."""

    def __init__(self, seed: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch, self.start_batch = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        raise NotImplementedError

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (default: the current one) for this rank."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            allb = self._global_batches(rng)
            n = len(allb) // self.world_size
            self._cache = (epoch, allb[self.rank::self.world_size][:n])
        return self._cache[1]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate; skip its first ``start_batch`` batches (resume)."""
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches in a whole epoch (ignoring ``start_batch``)."""
        return len(self.batches(epoch))

    def __len__(self) -> int:
        """Batches left in the current epoch (``num_batches() - start_batch``)."""
        return max(0, self.num_batches() - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.start_batch:]:
            yield list(batch)

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """Where to resume: ``{"seed", "epoch", "start_batch"}``.

        Args:
            batches_done: batches of the current epoch the training loop has consumed
                (the sampler cannot know it: a DataLoader prefetches); default: the
                current ``start_batch``.
        """
        start = self.start_batch if batches_done is None else int(batches_done)
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`; a different seed is an error."""
        if int(state["seed"]) != self.seed:
            raise DataError(f"sampler state has seed {int(state['seed'])}, this sampler "
                            f"has seed {self.seed}; resume with the same seed")
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))


class PKSampler(_EpochBatchSampler):
    """Batches of ``p`` identities x ``k`` images, deterministic per (seed, epoch).

    Every epoch: each identity's images are shuffled (an identity with fewer than ``k``
    images is padded by sampling with replacement) and cut into chunks of ``k``
    (a last incomplete chunk is dropped); then, while at least ``p`` identities have
    chunks left, ``p`` of them are drawn at random and one chunk of each forms a batch.

    Args:
        labels: the identity of every image of the dataset.
        p: identities per batch.
        k: images per identity.
        seed: seed of the batch order.
        rank: this process's rank (DDP).
        world_size: number of processes (DDP).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if p < 1 or k < 1:
            raise ValueError(f"PK sampler needs p >= 1 and k >= 1, got p={p}, k={k}")
        by_label: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_label[int(label)].append(i)
        if len(by_label) < p:
            raise DataError(f"PK sampler: {len(by_label)} identities, fewer than p={p} per batch")
        self.p, self.k = p, k
        self.index_by_label = {lab: np.asarray(ix) for lab, ix in sorted(by_label.items())}

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        chunks: dict[int, list[list[int]]] = {}
        for lab, idx in self.index_by_label.items():
            if len(idx) < self.k:
                idx = rng.choice(idx, size=self.k, replace=True)
            else:
                idx = rng.permutation(idx)
            n = len(idx) // self.k
            chunks[lab] = [idx[j * self.k:(j + 1) * self.k].tolist() for j in range(n)]
        available = [lab for lab in chunks if chunks[lab]]
        batches = []
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            batch: list[int] = []
            for c in chosen:
                batch.extend(chunks[available[c]].pop())
            batches.append(batch)
            available = [lab for lab in available if chunks[lab]]
        return batches


class RandomBatchSampler(_EpochBatchSampler):
    """Shuffled batches of ``batch_size`` indices out of ``n``, deterministic per (seed, epoch).

    Args:
        n: dataset size.
        batch_size: indices per batch.
        seed: seed of the permutation.
        drop_last: drop a last incomplete batch.
        rank: this process's rank (DDP).
        world_size: number of processes (DDP).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(seed, rank, world_size)
        if n < 1 or batch_size < 1:
            raise DataError(f"random batch sampler: n={n} images, batch_size={batch_size}")
        self.n, self.batch_size, self.drop_last = n, batch_size, drop_last

    def _global_batches(self, rng: np.random.Generator) -> list[list[int]]:
        perm = rng.permutation(self.n).tolist()
        stop = (self.n // self.batch_size) * self.batch_size if self.drop_last else self.n
        return [perm[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]


def _arch_counts(n: np.ndarray, arch_fraction: float, k: int, max_fraction: float) -> np.ndarray:
    """Architecture images per identity: floors of K (both parts, where the id has 2K images),
    lowered together if they alone would pass ``max_fraction``, then ``round(t * n)`` with
    the one ``t`` that brings the total closest to ``arch_fraction`` of the images."""
    total = int(n.sum())
    floor_full = np.where(n >= 2, np.minimum(k, n // 2), 0)
    cap = max(int(round(max_fraction * total)), int((n >= 2).sum()))
    m = max(int(k), 1)
    while m > 1 and int(np.minimum(floor_full, m).sum()) > cap:
        m -= 1
    lo = np.minimum(floor_full, m)
    hi = n - np.minimum(k, n - lo)  # the weight part keeps min(K, n - lo) images

    def count(t: float) -> np.ndarray:
        return np.clip(np.round(t * n).astype(np.int64), lo, hi)

    target = arch_fraction * total
    t_lo, t_hi = 0.0, 1.0
    for _ in range(60):  # smallest t whose total reaches the target
        mid = (t_lo + t_hi) / 2
        if count(mid).sum() >= target:
            t_hi = mid
        else:
            t_lo = mid
    below, above = count(t_lo), count(t_hi)
    return below if abs(below.sum() - target) < abs(above.sum() - target) else above


def _pick_arch(idx: np.ndarray, cams: np.ndarray, n_arch: int, rng: np.random.Generator) -> np.ndarray:
    """``n_arch`` of an identity's images: a second camera as soon as one is available, else
    from the camera with the most images left; one image of every camera with two or more
    stays for the weight part while others are left (ties: a seeded camera order)."""
    cam_ids = rng.permutation(np.unique(cams)).tolist()
    pools, reserved = {}, []
    for c in cam_ids:
        imgs = rng.permutation(idx[cams == c]).tolist()
        if len(imgs) >= 2:
            reserved.append(imgs.pop())
        pools[c] = imgs
    arch: list[int] = []
    arch_cams: set = set()
    for _ in range(n_arch):
        avail = [c for c in cam_ids if pools[c]]
        if not avail:
            arch.append(reserved.pop(0))
            continue
        fresh = [c for c in avail if c not in arch_cams] if len(arch_cams) < 2 else []
        c = max(fresh or avail, key=lambda cam: len(pools[cam]))
        arch.append(pools[c].pop())
        arch_cams.add(c)
    return np.asarray(arch, dtype=np.int64)


def split_weight_arch(labels: Sequence[int], arch_fraction: float = 0.2, seed: int = 0,
                      camids: Sequence[int] | None = None, k: int = 1,
                      max_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into a weight subset and an architecture subset.

    The split is **by image, stratified by identity**: every identity with at least two
    images has images in both subsets, so both share one label space, which the
    architecture step's cross-entropy and triplet losses need; an identity with a single
    image goes to the weight subset only. Per identity with ``n`` images:

    - at least ``min(k, n // 2)`` images in each subset (``k``: the PK sampler's K), so
      an identity with ``2k`` images gives full, unpadded PK slots in both, and a
      smaller one is split as evenly as it can be; if these floors alone would put more
      than ``max_fraction`` of the images in the architecture subset (identities with
      few images), they are lowered together until they fit;
    - otherwise ``round(t * n)`` images, with one ``t`` for all identities chosen so the
      architecture subset is as close to ``arch_fraction`` of the images as the floors
      allow;
    - the architecture images come from two cameras as soon as the identity has two, then
      from its cameras with the most images left, and one image of every camera with
      two or more stays in the weight subset: both subsets span two cameras wherever the
      identity's images allow it (when only one can, the architecture subset does).

    Args:
        labels: the identity (class) of every training image.
        arch_fraction: target share of the images for the architecture steps
            (0.2 in the paper).
        seed: seed of the split.
        camids: the camera of every image (default: one camera).
        k: images per identity of a PK batch (1: no floor beyond one image).
        max_fraction: the largest share the floors may take (default
            ``1.25 * arch_fraction``).

    Returns:
        ``(weight_indices, arch_indices)``, sorted, disjoint, covering all images.
    """
    if not 0.0 < arch_fraction < 1.0:
        raise ValueError(f"arch_fraction must be in (0, 1), got {arch_fraction}")
    labels = np.asarray(labels)
    cams = np.zeros(len(labels), dtype=np.int64) if camids is None else np.asarray(camids)
    if len(cams) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(cams)} camera ids")
    rng = np.random.default_rng([seed, 80_20])
    uniq, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(uniq))
    n_arch = _arch_counts(counts, arch_fraction, max(int(k), 1),
                          1.25 * arch_fraction if max_fraction is None else max_fraction)
    groups = np.split(order, np.cumsum(counts)[:-1])
    arch = [_pick_arch(idx, cams[idx], int(a), rng) for idx, a in zip(groups, n_arch)]
    arch_idx = np.sort(np.concatenate(arch)) if arch else np.zeros(0, dtype=np.int64)
    weight_idx = np.setdiff1d(np.arange(len(labels)), arch_idx)
    return weight_idx, arch_idx
