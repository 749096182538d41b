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


def split_weight_arch(labels: Sequence[int], arch_fraction: float = 0.2,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split image indices into a weight subset and an architecture subset.

    The split is **by image, stratified by identity**: every identity with at least two
    images has images in both subsets (``round(arch_fraction * n)`` clamped to
    ``1..n-1`` go to the architecture subset), so both subsets share one label space,
    which the architecture step's cross-entropy and triplet losses need. An identity
    with a single image goes to the weight subset only.

    Args:
        labels: the identity (class) of every training image.
        arch_fraction: share of each identity's images for the architecture steps
            (0.2 in the paper).
        seed: seed of the split.

    Returns:
        ``(weight_indices, arch_indices)``, sorted, disjoint, covering all images.
    """
    if not 0.0 < arch_fraction < 1.0:
        raise ValueError(f"arch_fraction must be in (0, 1), got {arch_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, 80_20])
    weight, arch = [], []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        n = len(idx)
        n_arch = 0 if n < 2 else min(max(int(round(arch_fraction * n)), 1), n - 1)
        arch.append(idx[:n_arch])
        weight.append(idx[n_arch:])
    return np.sort(np.concatenate(weight)), np.sort(np.concatenate(arch))
