"""The data-set registry (paper section 4.1: Market-1501, DukeMTMC-reID, MSMT17,
CUHK03-NP; ImageNet for pretraining): every name ``--data NAME:ROOT`` accepts, with its
reader, its task and the retraining recipe it gets by default.

Adding a data set is one :func:`register_dataset` call (docs/architecture.md, "Adding a
data set"): its reader returns :class:`dnas.data.reid_datasets.ReIDSplits` (Re-ID) or
:class:`dnas.data.imagenet.ClassificationSplits` (classification).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from dnas.data.imagenet import load_imagefolder
from dnas.data.reid_datasets import load_cuhk03, load_dukemtmc, load_market1501, load_market_style, load_msmt17
from dnas.data.synthetic import (SyntheticImageFolderConfig, SyntheticReIDConfig, ensure_synthetic_imagefolder,
                                 ensure_synthetic_reid)

TASKS = ("reid", "classification")


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """What a reader may need besides its root: the synthetic sets' parameters and
    MSMT17's ``list_val`` switch."""

    synthetic_reid: SyntheticReIDConfig | None = None
    synthetic_imagefolder: SyntheticImageFolderConfig | None = None
    msmt17_use_val: bool = False


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A registered data set.

    Attributes:
        name: the ``--data`` name.
        task: ``reid`` or ``classification``.
        load: ``(root, LoadOptions) -> splits``.
        recipe: the stem of its default recipe in ``retrain/`` (``None``: the defaults).
        needs_root: ``NAME:ROOT`` is required (the synthetic sets take an optional cache root).
    """

    name: str
    task: str
    load: Callable[[str | None, LoadOptions], object]
    recipe: str | None = None
    needs_root: bool = True


DATASETS: dict[str, Dataset] = {}


def register_dataset(name: str, task: str, load: Callable[[str | None, LoadOptions], object],
                     recipe: str | None = None, needs_root: bool = True) -> Dataset:
    """Register (or replace) a data set under ``name`` (lower case)."""
    if task not in TASKS:
        raise ValueError(f"data set {name!r}: task {task!r}, expected one of {TASKS}")
    entry = Dataset(name.lower(), task, load, recipe, needs_root)
    DATASETS[entry.name] = entry
    return entry


def dataset_names(task: str | None = None) -> tuple[str, ...]:
    """Registered names (of one task), in registration order."""
    return tuple(n for n, d in DATASETS.items() if task is None or d.task == task)


def get_dataset(name: str) -> Dataset | None:
    return DATASETS.get(name.strip().lower())


def classification_spec(spec: str) -> str:
    """A ``--data`` spec for classification: ``synthetic`` (optionally ``synthetic:/cache``)
    means ``synthetic-imagenet`` there."""
    name, sep, root = spec.partition(":")
    return f"synthetic-imagenet{sep}{root}" if name.strip().lower() == "synthetic" else spec


def _synthetic_reid(root: str | None, opts: LoadOptions):
    return load_market_style(ensure_synthetic_reid(opts.synthetic_reid, root), "synthetic", num_cams=6)


def _synthetic_imagefolder(root: str | None, opts: LoadOptions):
    return load_imagefolder(ensure_synthetic_imagefolder(opts.synthetic_imagefolder, root), name="synthetic-imagenet")


register_dataset("market1501", "reid", lambda root, _: load_market1501(root), "reid_market1501")
register_dataset("dukemtmc", "reid", lambda root, _: load_dukemtmc(root), "reid_dukemtmc")
register_dataset("msmt17", "reid", lambda root, o: load_msmt17(root, use_val=o.msmt17_use_val), "reid_msmt17")
register_dataset("cuhk03", "reid", lambda root, _: load_cuhk03(root, "detected"), "reid_cuhk03")
register_dataset("cuhk03-detected", "reid", lambda root, _: load_cuhk03(root, "detected"), "reid_cuhk03")
register_dataset("cuhk03-labeled", "reid", lambda root, _: load_cuhk03(root, "labeled"), "reid_cuhk03")
register_dataset("synthetic", "reid", _synthetic_reid, "reid_synthetic", needs_root=False)
register_dataset("imagenet", "classification", lambda root, _: load_imagefolder(root, name="imagenet"), "imagenet_sgd")
register_dataset("synthetic-imagenet", "classification", _synthetic_imagefolder, "imagenet_synthetic",
                 needs_root=False)
