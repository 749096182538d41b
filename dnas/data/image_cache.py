"""Decoded images kept in memory between epochs (no paper counterpart: a speed measure).

A Re-ID transform starts with a deterministic ``Resize``; everything after it is random
(flip, pad and crop) or a cheap conversion. :class:`ResizedImageCache` keeps the output
of decoding and resizing each image as a ``uint8`` tensor, so later epochs apply only the
rest of the transform. Flip, padding and cropping are exact pixel operations and draw the
same random numbers on a tensor as on a PIL image, so a cached image is transformed to the
same tensor, bit for bit, as the file read afresh (a test checks it): seeded runs do not
change. Measured on the embedded 240-identity set at 64x32 (one thread, idle 2-core
machine): iterating the training loader took 1.23-1.38 s an epoch from the files and
0.39-0.49 s from the cache. A retrain epoch of a tiny net (about 4.3 s, mostly the
network's forward and backward) should gain that difference, about 0.8 s; it was not
measurable above this machine's epoch-to-epoch noise. It matters most where decoding is
a large share of a step.

The budget is ``$DNAS_IMAGE_CACHE_MB`` (default 1024; 0 turns the cache off) per run,
shared among the loading processes: a DataLoader worker keeps its share (the budget over
the number of workers). Images past the budget are read from their files as before.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import get_worker_info
from torchvision.transforms import v2

DEFAULT_BUDGET_MB = 1024
BUDGET_ENV = "DNAS_IMAGE_CACHE_MB"
log = logging.getLogger(__name__)
_warned: set[str] = set()


def budget_bytes() -> int:
    """This process's share of ``$DNAS_IMAGE_CACHE_MB`` (bytes; 0 = no cache)."""
    raw = os.environ.get(BUDGET_ENV, "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BUDGET_MB
        if not mb >= 0:
            raise ValueError
    except ValueError:
        if raw not in _warned:  # a speed setting: the run goes on with the default, said once
            _warned.add(raw)
            log.warning("%s=%r: expected a number of megabytes >= 0 (0 turns the cache off); "
                        "using %d", BUDGET_ENV, raw, DEFAULT_BUDGET_MB)
        mb = DEFAULT_BUDGET_MB
    info = get_worker_info()
    share = info.num_workers if info is not None else 1
    return max(0, int(mb * 2**20 / share))


def split_leading_resize(transform: Callable | None) -> tuple[v2.Resize | None, Callable | None]:
    """``(resize, rest)`` when ``transform`` is a ``v2.Compose`` that starts with a
    ``v2.Resize``; ``(None, transform)`` otherwise (nothing to cache)."""
    ops = getattr(transform, "transforms", None)
    if isinstance(transform, v2.Compose) and ops and isinstance(ops[0], v2.Resize):
        return ops[0], v2.Compose(list(ops[1:]))
    return None, transform


class ResizedImageCache:
    """Resized images as ``uint8`` CHW tensors, keyed by path, size and the file's
    modification time and length, up to a byte budget.

    One cache serves every data set of a process (the training and the evaluation
    transforms resize to the same size, so they share entries).
    """

    def __init__(self) -> None:
        self._images: dict[tuple[str, tuple], torch.Tensor] = {}
        self.nbytes = 0

    def get(self, path: str, resize: v2.Resize, read: Callable[[str], Image.Image]) -> torch.Tensor | Image.Image:
        """The resized image of ``path``: from memory, or read with ``read`` and resized (and
        kept while the budget allows). A ``uint8`` CHW tensor, or the PIL image when the
        cache is off."""
        try:  # a file replaced during the run is read again
            st = os.stat(path)
            key = (path, tuple(resize.size), st.st_mtime_ns, st.st_size)
        except OSError:
            key = None  # unreadable: ``read`` raises the error that names the file
        hit = self._images.get(key) if key is not None else None
        if hit is not None:
            return hit
        img = resize(read(path))
        budget = budget_bytes()
        if budget <= 0:
            return img
        tensor = v2.functional.pil_to_tensor(img)
        if key is not None and self.nbytes + tensor.numel() <= budget:
            self._images[key] = tensor
            self.nbytes += tensor.numel()
        return tensor

    def clear(self) -> None:
        self._images.clear()
        self.nbytes = 0


RESIZED = ResizedImageCache()
