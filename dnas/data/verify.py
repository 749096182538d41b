"""``--verify-images``: open every image of a data set once, in parallel, and list the
unreadable ones before training starts (a truncated JPEG is found in seconds, not at
hour 3 of a run).

Each image is fully decoded (``PIL.Image.load``), so a file whose header is fine but
whose data are cut off is caught as well. Decoding runs in a thread pool (PIL releases
the GIL while it decodes).
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

from PIL import Image

from dnas.data.registry import classification_spec
from dnas.data.synthetic import SyntheticImageFolderConfig, synthetic_reid_from_recipe
from dnas.errors import DataError


def check_image(path: str) -> str | None:
    """``None`` when ``path`` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.width < 1 or im.height < 1:
                return "empty image"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        return (str(exc).splitlines() or [type(exc).__name__])[0][:160] or type(exc).__name__
    return None


def find_unreadable(paths: Sequence[str], workers: int = 0) -> list[tuple[str, str]]:
    """``(path, reason)`` of every image in ``paths`` that does not decode, in input order.

    Args:
        paths: image files.
        workers: threads (0: one per CPU core, at most 32).
    """
    workers = workers or min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_image, paths, chunksize=64))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def _split_paths(splits) -> list[str]:
    seen, out = set(), []
    for name in ("train", "query", "gallery", "val"):
        for item in getattr(splits, name, None) or ():
            if item[0] not in seen:
                seen.add(item[0])
                out.append(item[0])
    return out


def verify_data(spec: str, workers: int = 0, synthetic_reid=None, synthetic_imagefolder=None,
                stream=sys.stderr, show: int = 50) -> int:
    """Open every image a ``--data`` spec names; list the unreadable ones on ``stream``.

    Returns:
        The number of images checked (all readable).

    Raises:
        DataError: some image does not decode (after listing up to ``show`` of them).
    """
    from dnas.data.loaders import load_splits

    splits = load_splits(spec, synthetic_reid, synthetic_imagefolder)
    paths = _split_paths(splits)
    bad = find_unreadable(paths, workers)
    if bad:
        for path, why in bad[:show]:
            print(f"  unreadable: {path}: {why}", file=stream)
        if len(bad) > show:
            print(f"  ... and {len(bad) - show} more", file=stream)
        raise DataError(f"--data {spec}: {len(bad)} of {len(paths)} images are unreadable (listed above); "
                        "replace or remove them")
    print(f"verified {len(paths)} images of {spec}: all readable", file=stream, flush=True)
    return len(paths)


def verify_from_config(cfg, workers: int = 0) -> int:
    """:func:`verify_data` for a search or retrain config (same synthetic-set parameters)."""
    if hasattr(cfg, "synthetic_classes"):  # classification pretraining
        synth = SyntheticImageFolderConfig(num_classes=cfg.synthetic_classes,
                                           train_per_class=cfg.synthetic_train_per_class)
        return verify_data(classification_spec(cfg.data), workers, synthetic_imagefolder=synth)
    synth = synthetic_reid_from_recipe(cfg)
    return verify_data(cfg.data, workers, synthetic_reid=synth)


__all__: Iterable[str] = ["check_image", "find_unreadable", "verify_data", "verify_from_config"]
