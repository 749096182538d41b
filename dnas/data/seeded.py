"""Deterministic data augmentation for exactly resumable training.

Random augmentations normally draw from the global RNG of whichever process loads the
image (a DataLoader worker, or the main process), so a run resumed mid-epoch would see
different crops and flips than the uninterrupted run. Here every sample of a batch
gets its own seed, a pure function of ``(sampler seed, epoch, batch position, slot)``;
the dataset applies its transform under that seed in a forked RNG. Data then depend
only on where the loop is, not on workers, prefetching or restarts.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Wrap a batch sampler with ``set_epoch``/``start_batch``; yield ``[(index, seed), ...]``.

    Args:
        inner: a :class:`dnas.data.samplers.PKSampler` or ``RandomBatchSampler``.
    """

    def __init__(self, inner):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = self.inner.start_batch
        for pos, batch in enumerate(self.inner, start):
            ss = np.random.SeedSequence([self.inner.seed, self.inner.epoch, pos, self.inner.rank])
            seeds = ss.generate_state(len(batch), dtype=np.uint32)
            yield [(int(i), int(s)) for i, s in zip(batch, seeds)]


class SeededDataset(Dataset):
    """Apply ``base[index]`` under the seed that :class:`SeededBatchSampler` attached."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item):
        if not isinstance(item, tuple):
            return self.base[item]
        index, seed = item
        # NOTE: the CPU generator alone (what the transforms draw from), saved and restored by
        # hand: torch.manual_seed also queues a CUDA re-seed with a stack trace, 2-3 ms a sample.
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        try:
            return self.base[index]
        finally:
            torch.set_rng_state(state)


def seeded_loader(loader, sampler):
    """A copy of ``loader`` with per-sample seeds (exact resume) and a private generator.

    The private generator matters: creating an iterator must not draw from the global
    RNG, since a resumed run creates one more iterator than the uninterrupted run.
    """
    from torch.utils.data import DataLoader

    return DataLoader(SeededDataset(loader.dataset), batch_sampler=SeededBatchSampler(sampler),
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      persistent_workers=loader.num_workers > 0, generator=torch.Generator())
