"""Model-selection protocol of the Re-ID runs: a validation split carved from the training
identities, and statistics of the search's weight/architecture split.

The test query/gallery of a Re-ID set is for the final figures only. To choose a
checkpoint (``checkpoint-best.pt``) without looking at it, :func:`carve_validation`
holds out a seeded few percent of the *training identities* and builds a small
query/gallery set from them in the Market-1501 style: for every held-out identity one
image per camera is a query and its other images are the gallery (a query whose
identity has no gallery image from another camera is moved to the gallery, so every
validation query has a true match). The held-out identities leave the training set and
the remaining training labels are re-indexed to ``0..N-1``.

:func:`split_statistics` / :func:`format_split_statistics` describe the two parts of the
search's weight/architecture split (identities, images per identity, identities with
fewer than K images, identities seen by one camera only), for the run log.

:func:`legacy_protocol_changes` keeps a run written before these keys existed resuming on
the data it started with (no validation split; MSMT17 with ``list_val``).
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from dnas.data.reid_datasets import Item, relabel
from dnas.errors import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ValidationSplit:
    """Query/gallery images of the identities held out from training for model selection.

    Attributes:
        query: ``(path, pid, camid)``; pids are the identities' training labels before
            re-indexing (unique, consistent between query and gallery).
        gallery: ``(path, pid, camid)``.
        num_ids: held-out identities.
        num_train_ids: identities of the training set before the split.
        fraction: the recipe's ``val_ids_fraction``.
        min_ids: the recipe's ``val_min_ids``.
        seed: the recipe's ``val_seed``.
    """

    query: list[Item]
    gallery: list[Item]
    num_ids: int
    num_train_ids: int
    fraction: float
    min_ids: int
    seed: int

    def summary_line(self) -> str:
        """One line for the run log."""
        return (f"validation split (model selection): {self.num_ids} of {self.num_train_ids} training ids held out "
                f"(val_ids_fraction={self.fraction:g}, val_min_ids={self.min_ids}, val_seed={self.seed}): "
                f"{len(self.query)} query / {len(self.gallery)} gallery images; the other "
                f"{self.num_train_ids - self.num_ids} ids train, labels re-indexed")

    def to_dict(self) -> dict:
        """JSON-ready description (no image lists)."""
        return {"num_ids": self.num_ids, "num_train_ids_before": self.num_train_ids,
                "num_query": len(self.query), "num_gallery": len(self.gallery),
                "val_ids_fraction": self.fraction, "val_min_ids": self.min_ids, "val_seed": self.seed}


def _query_gallery(items: list[Item], rng: np.random.Generator) -> tuple[list[Item], list[Item]]:
    """One query per camera, the rest gallery; queries without a cross-camera match are moved."""
    by_cam: dict[int, list[Item]] = defaultdict(list)
    for it in items:
        by_cam[it[2]].append(it)
    query, gallery = [], []
    for cam in sorted(by_cam):
        imgs = by_cam[cam]
        order = rng.permutation(len(imgs))
        query.append(imgs[order[0]])
        gallery.extend(imgs[i] for i in order[1:])
    while True:
        g_cams = {c for _, _, c in gallery}
        bad = [q for q in query if not (g_cams - {q[2]})]
        if not bad:
            return query, gallery
        query.remove(bad[0])  # a gallery image in its camera may give the others a match
        gallery.append(bad[0])


def carve_validation(train: Sequence[Item], fraction: float, min_ids: int = 8, seed: int = 0,
                     keep_ids: int = 2) -> tuple[list[Item], ValidationSplit | None]:
    """Hold out training identities as a query/gallery validation set.

    Args:
        train: training ``(path, pid, camid)`` items.
        fraction: share of the training identities to hold out; 0 disables the split.
        min_ids: hold out at least this many identities (when ``fraction > 0``).
        seed: seed of the choice of identities and of the query images.
        keep_ids: identities that must stay for training (the PK sampler's P).

    Returns:
        ``(training items with re-indexed labels, the split)``; with ``fraction == 0``
        the training items unchanged and ``None``.

    Raises:
        DataError: too few identities seen by two cameras, or too few left to train.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_ids_fraction={fraction}: expected a number in [0, 1) (0 = no validation split)")
    train = list(train)
    if fraction == 0:
        return train, None
    by_pid: dict[int, list[Item]] = defaultdict(list)
    for it in train:
        by_pid[it[1]].append(it)
    n_ids = len(by_pid)
    eligible = sorted(p for p, its in by_pid.items() if len({c for _, _, c in its}) >= 2)
    n_val = max(int(min_ids), int(round(fraction * n_ids)), 1)
    if len(eligible) < n_val:
        raise DataError(f"validation split: {n_val} identities asked (val_ids_fraction={fraction:g}, "
                        f"val_min_ids={min_ids}) but only {len(eligible)} training identities are seen by two "
                        "cameras; lower val_min_ids or set val_ids_fraction=0")
    if n_ids - n_val < keep_ids:
        raise DataError(f"validation split: holding out {n_val} of {n_ids} training identities leaves "
                        f"{n_ids - n_val}, fewer than p={keep_ids} per batch; lower val_min_ids / "
                        "val_ids_fraction, or set val_ids_fraction=0")
    rng = np.random.default_rng([seed, 0x7A1])
    held = sorted(int(p) for p in rng.choice(eligible, size=n_val, replace=False))
    query, gallery = [], []
    for pid in held:
        q, g = _query_gallery(by_pid[pid], rng)
        query += q
        gallery += g
    held_set = set(held)
    rest = relabel([it for it in train if it[1] not in held_set])
    return rest, ValidationSplit(query, gallery, n_val, n_ids, fraction, int(min_ids), int(seed))


def split_statistics(labels: Sequence[int], camids: Sequence[int], k: int) -> dict:
    """Identities, images per identity (min / mean), identities with fewer than ``k``
    images and identities whose images all come from one camera, of one split part."""
    labels, camids = np.asarray(labels), np.asarray(camids)
    if len(labels) == 0:
        return {"ids": 0, "images": 0, "images_per_id_min": 0, "images_per_id_mean": 0.0,
                "ids_fewer_than_k": 0, "ids_one_camera": 0}
    ids, counts = np.unique(labels, return_counts=True)
    cams_per_id = np.asarray([len(np.unique(camids[labels == i])) for i in ids])
    return {"ids": int(len(ids)), "images": int(len(labels)), "images_per_id_min": int(counts.min()),
            "images_per_id_mean": float(counts.mean()), "ids_fewer_than_k": int((counts < k).sum()),
            "ids_one_camera": int((cams_per_id == 1).sum())}


def format_split_statistics(parts: dict[str, dict], k: int, title: str) -> str:
    """The statistics of :func:`split_statistics` for several parts, as a table."""
    total = sum(p["images"] for p in parts.values()) or 1
    rule = "  " + "-" * 82
    lines = [title, rule, f"  part     |   ids | images | share | imgs/id min | imgs/id mean | ids < K={k} | ids 1 camera",
             rule]
    for name, s in parts.items():
        lines.append(f"  {name:<8} | {s['ids']:5d} | {s['images']:6d} | {100 * s['images'] / total:4.1f}% | "
                     f"{s['images_per_id_min']:11d} | {s['images_per_id_mean']:12.2f} | {s['ids_fewer_than_k']:9d} | "
                     f"{s['ids_one_camera']:12d}")
    lines.append(rule)
    return "\n".join(lines)


def legacy_protocol_changes(config_yaml: str | Path, cfg) -> dict:
    """Recipe changes that let a run resume on the data it was started with.

    A ``config.yaml`` written before ``val_ids_fraction`` existed trained on every
    training identity (and on MSMT17 ``list_train`` + ``list_val``, the old default);
    resuming it with today's defaults would change its classes. Returns the
    ``dataclasses.replace`` changes (``{}`` for a current run), with a warning.
    """
    from dnas.errors import DnasError
    from dnas.strict_yaml import read_yaml

    try:
        old = read_yaml(config_yaml)
    except DnasError:
        return {}
    if not isinstance(old, dict):
        return {}
    changes = {}
    if "val_ids_fraction" not in old and getattr(cfg, "val_ids_fraction", 0):
        changes["val_ids_fraction"] = 0.0
    if "msmt17_use_val" not in old and str(old.get("data", "")).lower().startswith("msmt17"):
        changes["msmt17_use_val"] = True
    if changes:
        log.warning("%s: written before the validation split / msmt17_use_val keys; resuming with %s "
                    "(the data the run started with)", config_yaml, changes)
    return changes
