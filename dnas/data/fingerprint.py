"""Data-set fingerprints: which version of a Re-ID data set a run was given.

Published Re-ID figures depend on the exact data (MSMT17 V1 or V2, with or without
``list_val.txt``, CUHK03-NP labeled or detected, a Market-1501 copy with missing files).
:func:`fingerprint_splits` counts the identities and images of each split of a loaded
:class:`dnas.data.reid_datasets.ReIDSplits` (train, query, gallery, before any
validation split is carved) and compares them with the published counts of Market-1501,
DukeMTMC-reID, MSMT17 V1 and V2 and CUHK03-NP labeled and detected. The verdict is a
JSON-ready dict whose ``line`` is one log line, e.g.::

    market1501: matches Market-1501 (751 ids / 12,936 train images, 3,368 query, 15,913 gallery)
    market1501: differs from Market-1501: train 12,930 images (-6 of 12,936); gallery 15,910 images (-3 of 15,913)

A difference is a warning, never an error. When the counts are those of another
published version (CUHK03-NP detected read as labeled, an MSMT17 ``list_train.txt``
that already holds ``list_val.txt``), the line says so. The synthetic set has no
published counts and says that. :func:`dnas.data.loaders.load_splits` attaches the
verdict to the splits (``splits.fingerprint``) and logs it; runs record it in
``data_fingerprint.json`` beside ``config.yaml`` and in ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "gallery")
MSMT17_LAYOUTS = {"MSMT17_V1": "V1", "MSMT17_V2": "V2"}
FILE_NAME = "data_fingerprint.json"  # beside a run's config.yaml: {"data": spec, "data_fingerprint": verdict}


@dataclasses.dataclass(frozen=True)
class PublishedCounts:
    """The published size of one version of a data set.

    Attributes:
        label: the version's name in the verdict (``Market-1501``, ``MSMT17 V2 ...``).
        counts: ``{split: (identities, images)}`` for train, query and gallery, counted
            the way this package's readers count (see ``counted``).
        counted: how the figures are counted (junk, distractors, lists).
        source: where the figures come from.
    """

    label: str
    counts: dict[str, tuple[int, int]]
    counted: str
    source: str


# Where the counts come from, and how they are counted. The readers of
# dnas/data/reid_datasets.py count the way torchreid does, so these are also the figures
# torchreid prints in its "subset | # ids | # images" table.
#
# Market-1501: the data set's own readme (Zheng et al., "Scalable Person
# Re-identification: A Benchmark", ICCV 2015): 751 training identities, 12,936 training
# images, 750 test identities, 3,368 query images, 19,732 images in bounding_box_test.
# The standard protocol (torchreid's Market1501 reader, open-reid) drops the junk images
# (pid -1) and keeps the distractors (pid 0) in the gallery: 15,913 gallery images of 751
# "identities" (the 750 test ids plus the distractor id 0); 19,732 - 15,913 = 3,819 junk.
_MARKET = PublishedCounts(
    "Market-1501", {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)},
    "junk images (pid -1) dropped; gallery distractors (pid 0) kept and counted as one identity",
    "Zheng et al. ICCV 2015 (the data set's readme); torchreid Market1501 (12936 + 3368 + 15913)")

# DukeMTMC-reID: the DukeMTMC-reID_evaluation readme (Zheng et al., ICCV 2017): 16,522
# training images of 702 identities, 2,228 query images of the other 702 identities and
# 17,661 gallery images (702 ids + 408 distractor ids = 1,110); no junk images.
_DUKE = PublishedCounts(
    "DukeMTMC-reID", {"train": (702, 16522), "query": (702, 2228), "gallery": (1110, 17661)},
    "every image; the gallery's 1,110 identities are the 702 test ids and 408 distractor ids",
    "DukeMTMC-reID_evaluation readme (Zheng et al. ICCV 2017); torchreid DukeMTMCreID (16522 + 2228 + 17661)")

# CUHK03-NP: the CUHK03-NP readme of person-re-ranking (Zhong et al., "Re-ranking Person
# Re-identification with k-reciprocal Encoding", CVPR 2017): 767 training and 700 test
# identities; one query image per camera per test identity (700 x 2 = 1,400); images
# labeled 7,368 / 1,400 / 5,328, detected 7,365 / 1,400 / 5,332 (train / query / gallery).
_CUHK03_SOURCE = "CUHK03-NP readme, Zhong et al. CVPR 2017 (767 / 700 identities)"
_CUHK03_COUNTED = "every image of the Market-style folders (.png, 2 cameras)"
_CUHK03_LABELED = PublishedCounts(
    "CUHK03-NP labeled", {"train": (767, 7368), "query": (700, 1400), "gallery": (700, 5328)},
    _CUHK03_COUNTED, _CUHK03_SOURCE)
_CUHK03_DETECTED = PublishedCounts(
    "CUHK03-NP detected", {"train": (767, 7365), "query": (700, 1400), "gallery": (700, 5332)},
    _CUHK03_COUNTED, _CUHK03_SOURCE)

# MSMT17: Wei et al., "Person Transfer GAN to Bridge Domain Gap for Person
# Re-Identification", CVPR 2018: 32,621 training images of 1,041 identities, 93,820 test
# images of 3,060 identities (11,659 query + 82,161 gallery); torchreid's MSMT17 reader
# quotes 32621 + 11659 + 82161. The training images are list_train.txt (30,248) plus
# list_val.txt (2,373) of the same identities; torchreid and fast-reid train on
# list_train.txt only unless asked to combine. V1 and V2 hold the same lists; V2's images
# have the faces masked and live in mask_train_v2/ and mask_test_v2/ instead of train/ and
# test/ (torchreid's VERSION_DICT).
_MSMT17_SOURCE = "Wei et al. CVPR 2018 (32,621 train images incl. list_val.txt, 11,659 query, 82,161 gallery)"


def _msmt17(version: str, use_val: bool) -> PublishedCounts:
    folders = "train/, test/" if version == "V1" else "mask_train_v2/, mask_test_v2/: faces masked"
    lists = "list_train.txt + list_val.txt" if use_val else "list_train.txt only"
    return PublishedCounts(
        f"MSMT17 {version} ({folders}; {lists})",
        {"train": (1041, 32621 if use_val else 30248), "query": (3060, 11659), "gallery": (3060, 82161)},
        f"the lines of the list files; training: {lists}", _MSMT17_SOURCE)


PUBLISHED: dict[str, PublishedCounts] = {
    "market1501": _MARKET,
    "dukemtmc": _DUKE,
    "cuhk03-labeled": _CUHK03_LABELED,
    "cuhk03-detected": _CUHK03_DETECTED,
    **{f"msmt17-{v.lower()}{'+val' if val else ''}": _msmt17(v, val) for v in ("V1", "V2") for val in (False, True)},
}


def reference_key(name: str, layout: str = "", msmt17_use_val: bool = False) -> str | None:
    """The :data:`PUBLISHED` key of a loaded set (``None``: no published counts).

    Args:
        name: the splits' name (``market1501``, ``cuhk03-labeled``, ``msmt17``, ...).
        layout: MSMT17: the folder layout read, ``MSMT17_V1`` or ``MSMT17_V2``.
        msmt17_use_val: MSMT17: ``list_val.txt`` was added to the training set.
    """
    if name == "msmt17":
        version = MSMT17_LAYOUTS.get(layout, "V1")
        return f"msmt17-{version.lower()}{'+val' if msmt17_use_val else ''}"
    return name if name in PUBLISHED else None


def split_counts(splits) -> dict[str, dict[str, int]]:
    """``{split: {"ids", "images"}}`` of the train, query and gallery lists of ``splits``."""
    return {s: {"ids": len({pid for _, pid, _ in getattr(splits, s)}), "images": len(getattr(splits, s))}
            for s in SPLITS}


def format_counts(counts: dict[str, tuple[int, int]]) -> str:
    """``751 ids / 12,936 train images, 3,368 query, 15,913 gallery``."""
    (ids, train), (_, query), (_, gallery) = (counts[s] for s in SPLITS)
    return f"{ids:,} ids / {train:,} train images, {query:,} query, {gallery:,} gallery"


def _as_pairs(counts: dict[str, dict[str, int]]) -> dict[str, tuple[int, int]]:
    return {s: (c["ids"], c["images"]) for s, c in counts.items()}


def _difference(split: str, seen: tuple[int, int], published: tuple[int, int]) -> str:
    parts = []
    for (n, p), unit in ((seen[1], published[1]), "images"), ((seen[0], published[0]), "ids"):
        if n != p:
            parts.append(f"{n:,} {unit} ({n - p:+,} of {p:,})")
    return f"{split} " + ", ".join(parts)


def _other_version(seen: dict[str, tuple[int, int]], expected_key: str) -> str | None:
    """The label of another published version whose counts ``seen`` are exactly; of
    several, the closest relative of ``expected_key`` (MSMT17 V2 with list_val.txt for
    MSMT17 V2, not V1)."""
    expected = PUBLISHED[expected_key].counts
    keys = [k for k, ref in PUBLISHED.items() if ref.counts == seen and ref.counts != expected]
    if not keys:
        return None
    shared = [len(os.path.commonprefix([k, expected_key])) for k in keys]
    return PUBLISHED[keys[shared.index(max(shared))]].label


def fingerprint_splits(splits, msmt17_use_val: bool = False) -> dict:
    """Compare the counts of a loaded Re-ID set with the published ones.

    Args:
        splits: a :class:`ReIDSplits` as its reader returned it (before a validation
            split is carved from its training identities).
        msmt17_use_val: MSMT17: ``list_val.txt`` was added to the training set.

    Returns:
        ``{"dataset", "status", "reference", "layout", "counts", "published",
        "differences", "also_matches", "counted", "source", "line"}``; ``status`` is
        ``matches``, ``differs`` (a warning: ``differences`` names each split that
        differs, seen minus published), ``generated`` (the synthetic set) or
        ``unpublished`` (a data set without published counts).
    """
    name = splits.name
    layout = getattr(splits, "layout", "") or None
    counts = split_counts(splits)
    seen = _as_pairs(counts)
    out = {"dataset": name, "status": "", "reference": None, "layout": layout, "counts": counts,
           "published": None, "differences": {}, "also_matches": None, "counted": None, "source": None}
    key = reference_key(name, layout or "", msmt17_use_val)
    if key is None:
        generated = name == "synthetic"
        out["status"] = "generated" if generated else "unpublished"
        what = "generated set, no published counts" if generated else "no published counts to compare with"
        out["line"] = f"{name}: {what} ({format_counts(seen)})"
        return out
    ref = PUBLISHED[key]
    out.update(reference=ref.label, counted=ref.counted, source=ref.source,
               published={s: {"ids": i, "images": n} for s, (i, n) in ref.counts.items()})
    differing = [s for s in SPLITS if seen[s] != ref.counts[s]]
    if not differing:
        out["status"] = "matches"
        out["line"] = f"{name}: matches {ref.label} ({format_counts(ref.counts)})"
        return out
    out["status"] = "differs"
    out["differences"] = {s: {"ids": seen[s][0] - ref.counts[s][0], "images": seen[s][1] - ref.counts[s][1]}
                          for s in differing}
    line = f"{name}: differs from {ref.label}: " + "; ".join(_difference(s, seen[s], ref.counts[s])
                                                             for s in differing)
    other = _other_version(seen, key)
    if other is not None:
        out["also_matches"] = other
        line += f"; these are the counts of {other}"
    out["line"] = line
    return out


def announce(verdict: dict | None) -> None:
    """Log a verdict's line: a warning when the counts differ, else info."""
    if verdict:
        (log.warning if verdict["status"] == "differs" else log.info)("%s", verdict["line"])


def recorded_fingerprint(run_dir) -> dict | None:
    """The verdict a run recorded (``data_fingerprint.json``, else its ``summary.json``
    files), or ``None`` for a run from before fingerprints or without a Re-ID set."""
    import json

    run_dir = Path(run_dir)
    for path in (run_dir / FILE_NAME, run_dir / "summary.json", run_dir / "final" / "summary.json"):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        verdict = content.get("data_fingerprint") if isinstance(content, dict) else None
        if isinstance(verdict, dict) and isinstance(verdict.get("line"), str):
            return verdict
    return None

