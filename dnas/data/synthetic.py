"""Embedded synthetic data sets, written in the real on-disk formats (no paper counterpart).

- :func:`ensure_synthetic_reid`: a small person Re-ID set in the Market-1501 layout
  (``bounding_box_train/``, ``query/``, ``bounding_box_test/``, names like
  ``0002_c1s1_000003_00.jpg``), read back by the real Market-1501 loader. Train and
  test identities are disjoint; every test identity is seen by at least two cameras
  with at least two images per camera; the query holds one image per (identity,
  camera), as in Market-1501. The gallery also holds distractors (pid ``0000``) and
  junk images (pid ``-1``) so the standard protocol is exercised.
- :func:`ensure_synthetic_imagefolder`: a few classes of procedural shapes/textures in
  the ImageFolder layout (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``).

Both are deterministic from their config (seed included) and generated on first use
into ``$DNAS_CACHE/synthetic/<name>-<hash>`` (default cache ``~/.cache/dnas``; the
``cache_dir`` argument overrides both). Generation is atomic: the set is built in a
temporary sibling directory and renamed into place, so a killed generation never
leaves a half data set; a concurrent generator that loses the race discards its copy.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from dnas.data.synthetic_draw import (SHAPE_CLASSES, draw_person, draw_shape, sample_camera,
                                      sample_identity)
from dnas.errors import ConfigError
from dnas.io import atomic_write_json

GENERATOR_VERSION = 1
MARKER = "synthetic.json"


@dataclasses.dataclass(frozen=True)
class SyntheticReIDConfig:
    """Parameters of the synthetic Re-ID set (defaults generate in a few seconds).

    Attributes:
        seed: everything is a function of it.
        num_train_ids: training identities (pids 1..num_train_ids).
        num_test_ids: test identities (the next pids).
        images_per_id: images of each identity.
        num_cams: cameras (2..6; the Market-1501 format has 6).
        height: image height in pixels.
        width: image width in pixels.
        num_distractors: gallery images of unrelated persons (pid 0).
        num_junk: gallery images with pid -1 (ignored by the protocol).
        jpeg_quality: JPEG quality of the saved images.
    """

    seed: int = 0
    num_train_ids: int = 60
    num_test_ids: int = 40
    images_per_id: int = 12
    num_cams: int = 4
    height: int = 128
    width: int = 64
    num_distractors: int = 20
    num_junk: int = 10
    jpeg_quality: int = 90

    def validate(self) -> None:
        if not 2 <= self.num_cams <= 6:
            raise ConfigError(f"synthetic num_cams={self.num_cams}: expected 2..6")
        if self.images_per_id < 4:
            raise ConfigError(f"synthetic images_per_id={self.images_per_id}: expected >= 4 "
                              "(two cameras with two images each)")
        if self.num_train_ids < 1 or self.num_test_ids < 1:
            raise ConfigError("synthetic num_train_ids and num_test_ids must be >= 1")
        if self.num_train_ids + self.num_test_ids > 9999:
            raise ConfigError("synthetic set: at most 9999 identities (4-digit pids)")
        if self.height < 16 or self.width < 8:
            raise ConfigError(f"synthetic image size {self.height}x{self.width}: too small")


@dataclasses.dataclass(frozen=True)
class SyntheticImageFolderConfig:
    """Parameters of the synthetic ImageFolder set.

    Attributes:
        seed: everything is a function of it.
        num_classes: shape classes (at most ``len(SHAPE_CLASSES)``).
        train_per_class: training images per class.
        val_per_class: validation images per class.
        size: square image side in pixels.
        jpeg_quality: JPEG quality of the saved images.
    """

    seed: int = 0
    num_classes: int = 10
    train_per_class: int = 60
    val_per_class: int = 15
    size: int = 64
    jpeg_quality: int = 90

    def validate(self) -> None:
        if not 2 <= self.num_classes <= len(SHAPE_CLASSES):
            raise ConfigError(f"synthetic-imagenet num_classes={self.num_classes}: expected "
                              f"2..{len(SHAPE_CLASSES)}")
        if self.train_per_class < 1 or self.val_per_class < 1:
            raise ConfigError("synthetic-imagenet needs >= 1 train and val image per class")


def synthetic_reid_config(seed: int = 0, num_train_ids: int = 0, images_per_id: int = 0) -> SyntheticReIDConfig:
    """The default synthetic Re-ID set, with the recipe keys that resize it (0 keeps a default)."""
    cfg = SyntheticReIDConfig(seed=seed)
    if num_train_ids:
        cfg = dataclasses.replace(cfg, num_train_ids=num_train_ids)
    if images_per_id:
        cfg = dataclasses.replace(cfg, images_per_id=images_per_id)
    return cfg


def synthetic_reid_from_recipe(cfg) -> SyntheticReIDConfig:
    """The synthetic set of a Re-ID recipe (search, Re-ID retraining, ``--verify-images``):
    ``data_seed``, ``synthetic_ids``, ``synthetic_images_per_id``. The run's ``seed`` never
    enters: every seed of a search and of its retraining sees the same data."""
    return synthetic_reid_config(getattr(cfg, "data_seed", 0), getattr(cfg, "synthetic_ids", 0),
                                 getattr(cfg, "synthetic_images_per_id", 0))


def default_cache_dir() -> Path:
    """``$DNAS_CACHE`` if set, else ``~/.cache/dnas``."""
    return Path(os.environ.get("DNAS_CACHE") or "~/.cache/dnas").expanduser()


def _config_dir(kind: str, config, cache_dir: str | os.PathLike | None) -> Path:
    payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(config)},
                         sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "synthetic" / f"{kind}-v{GENERATOR_VERSION}-{digest}"


def _build_atomically(target: Path, build, meta: dict) -> Path:
    """Run ``build(tmp_dir)`` in a temporary sibling, write the marker, rename into place."""
    if (target / MARKER).is_file():
        return target
    if target.exists():  # left by something else than this module: start afresh
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        build(tmp)
        atomic_write_json(tmp / MARKER, meta)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _save(img, path: Path, quality: int) -> None:
    img.save(path, format="JPEG", quality=quality)


def _write_reid(out: Path, cfg: SyntheticReIDConfig) -> None:
    dirs = {s: out / s for s in ("bounding_box_train", "query", "bounding_box_test")}
    for d in dirs.values():
        d.mkdir()
    size = (cfg.width, cfg.height)
    cams = [sample_camera(np.random.default_rng([cfg.seed, 2, c])) for c in range(cfg.num_cams)]
    frame = 0
    n_ids = cfg.num_train_ids + cfg.num_test_ids
    for pid in range(1, n_ids + 1):
        ident = sample_identity(np.random.default_rng([cfg.seed, 1, pid]))
        rng = np.random.default_rng([cfg.seed, 3, pid])
        is_test = pid > cfg.num_train_ids
        n_seen = int(rng.integers(2, min(cfg.num_cams, cfg.images_per_id // 2) + 1))
        seen = np.sort(rng.choice(cfg.num_cams, size=n_seen, replace=False))
        # at least two images per seen camera, the rest spread at random
        per_cam = np.full(n_seen, 2) + np.bincount(
            rng.integers(0, n_seen, cfg.images_per_id - 2 * n_seen), minlength=n_seen)
        for cam, count in zip(seen, per_cam):
            query_idx = int(rng.integers(count)) if is_test else -1
            for j in range(count):
                frame += 1
                rng_img = np.random.default_rng([cfg.seed, 4, pid, frame])
                img = draw_person(ident, cams[cam], rng_img, size)
                split = "bounding_box_train" if not is_test else (
                    "query" if j == query_idx else "bounding_box_test")
                _save(img, dirs[split] / f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg",
                      cfg.jpeg_quality)
    for k in range(cfg.num_distractors + cfg.num_junk):
        frame += 1
        rng = np.random.default_rng([cfg.seed, 5, k])
        cam = int(rng.integers(cfg.num_cams))
        img = draw_person(sample_identity(rng), cams[cam], rng, size)
        pid = "0000" if k < cfg.num_distractors else "-1"
        _save(img, dirs["bounding_box_test"] / f"{pid}_c{cam + 1}s1_{frame:06d}_00.jpg",
              cfg.jpeg_quality)


def ensure_synthetic_reid(config: SyntheticReIDConfig | None = None,
                          cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of the synthetic Re-ID set, generating it on first use.

    Args:
        config: generator parameters (defaults: :class:`SyntheticReIDConfig`).
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        A folder in the Market-1501 layout, for :func:`dnas.data.load_market_style`.
    """
    cfg = config or SyntheticReIDConfig()
    cfg.validate()
    target = _config_dir("reid", cfg, cache_dir)
    meta = {"kind": "reid", "format": "market1501", "version": GENERATOR_VERSION,
            "config": dataclasses.asdict(cfg)}
    return _build_atomically(target, lambda tmp: _write_reid(tmp, cfg), meta)


def _write_imagefolder(out: Path, cfg: SyntheticImageFolderConfig) -> None:
    for split, n, tag in (("train", cfg.train_per_class, 0), ("val", cfg.val_per_class, 1)):
        for label in range(cfg.num_classes):
            folder = out / split / SHAPE_CLASSES[label]
            folder.mkdir(parents=True)
            for i in range(n):
                img = draw_shape(label, np.random.default_rng([cfg.seed, tag, label, i]), cfg.size)
                _save(img, folder / f"{SHAPE_CLASSES[label]}_{i:05d}.JPEG", cfg.jpeg_quality)


def ensure_synthetic_imagefolder(config: SyntheticImageFolderConfig | None = None,
                                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder of the synthetic ImageFolder set, generating it on first use.

    Args:
        config: generator parameters (defaults: :class:`SyntheticImageFolderConfig`).
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        A folder with ``train/<class>/`` and ``val/<class>/``, for
        :func:`dnas.data.load_imagefolder`.
    """
    cfg = config or SyntheticImageFolderConfig()
    cfg.validate()
    target = _config_dir("imagefolder", cfg, cache_dir)
    meta = {"kind": "imagefolder", "version": GENERATOR_VERSION, "config": dataclasses.asdict(cfg)}
    return _build_atomically(target, lambda tmp: _write_imagefolder(tmp, cfg), meta)
