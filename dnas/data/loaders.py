"""Data sets and DataLoaders from a ``--data`` spec string (paper sections 3.4 and 4).

Specs: ``market1501:/path``, ``dukemtmc:/path``, ``msmt17:/path``, ``cuhk03:/path``
(detected boxes; also ``cuhk03-detected:`` and ``cuhk03-labeled:``), ``imagenet:/path``
(ImageFolder layout), ``synthetic`` (the embedded Re-ID set) and ``synthetic-imagenet``
(the embedded shapes set); the synthetic specs take an optional cache root
(``synthetic:/cache``). An unknown name is a :class:`DataError` listing the valid ones.

:func:`build_loaders` returns the training loader (PK batches for Re-ID, shuffled
batches for classification), optionally split 80/20 into weight and architecture
subsets for the search (:func:`dnas.data.samplers.split_weight_arch`), and the test
loaders (query and gallery, or val). With ``val_ids_fraction > 0`` a Re-ID set also
gets a validation query/gallery carved from its training identities
(:func:`dnas.data.protocol.carve_validation`) for model selection; those identities
leave the training set.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dnas.data.fingerprint import announce as announce_fingerprint
from dnas.data.fingerprint import fingerprint_splits
from dnas.data.image_cache import RESIZED, split_leading_resize
from dnas.data.imagenet import ClassificationSplits
from dnas.data.protocol import carve_validation, format_split_statistics, split_statistics
from dnas.data.registry import LoadOptions, dataset_names, get_dataset
from dnas.data.reid_datasets import ReIDSplits
from dnas.data.samplers import PKSampler, RandomBatchSampler, split_weight_arch
from dnas.data.synthetic import SyntheticImageFolderConfig, SyntheticReIDConfig, synthetic_reid_from_recipe
from dnas.data.transforms import build_classification_transform, build_reid_transform
from dnas.errors import DataError

REID_NAMES = dataset_names("reid")  # the built-in names (dnas.data.registry holds the live list)
CLASSIFICATION_NAMES = dataset_names("classification")
DATASET_NAMES = REID_NAMES + CLASSIFICATION_NAMES


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A parsed ``--data`` spec.

    Attributes:
        name: a registered name (:mod:`dnas.data.registry`).
        root: the data root (for the synthetic sets: the cache root, or ``None``).
    """

    name: str
    root: str | None

    @property
    def task(self) -> str:
        """``"reid"`` or ``"classification"``."""
        return get_dataset(self.name).task


def parse_data_spec(spec: str) -> DataSpec:
    """Parse ``name:/path`` (or a bare ``synthetic`` / ``synthetic-imagenet``).

    Raises:
        DataError: unknown name (the message lists the valid ones) or missing path.
    """
    name, sep, root = spec.partition(":")
    name = name.strip().lower()
    entry = get_dataset(name)
    if entry is None:
        raise DataError(f"--data {spec!r}: unknown data set {name!r}; valid names: "
                        f"{', '.join(dataset_names())}")
    root = root.strip()
    if not root and entry.needs_root:
        raise DataError(f"--data {spec!r}: missing data root; expected '{name}:/path/to/data'")
    return DataSpec(name, root or None)


def load_splits(spec: str | DataSpec, synthetic_reid: SyntheticReIDConfig | None = None,
                synthetic_imagefolder: SyntheticImageFolderConfig | None = None,
                msmt17_use_val: bool = False, announce: bool = True) -> ReIDSplits | ClassificationSplits:
    """Read the image lists a spec names (generating a synthetic set on first use).

    A Re-ID set gets its fingerprint (``splits.fingerprint``: the identity and image
    counts per split against the published ones, :mod:`dnas.data.fingerprint`), logged
    as one line (a warning when the counts differ) unless ``announce`` is false.

    Args:
        spec: a ``--data`` string or a :class:`DataSpec`.
        synthetic_reid: parameters of the ``synthetic`` set.
        synthetic_imagefolder: parameters of the ``synthetic-imagenet`` set.
        msmt17_use_val: MSMT17 only: train on ``list_train`` + ``list_val`` (default:
            ``list_train`` only, as torchreid and fast-reid).
        announce: log the fingerprint line (off on the other DDP ranks).

    Returns:
        :class:`ReIDSplits` for Re-ID sets, :class:`ClassificationSplits` otherwise.
    """
    ds = parse_data_spec(spec) if isinstance(spec, str) else spec
    opts = LoadOptions(synthetic_reid, synthetic_imagefolder, msmt17_use_val)
    splits = get_dataset(ds.name).load(ds.root, opts)
    if isinstance(splits, ReIDSplits):
        splits.fingerprint = fingerprint_splits(splits, msmt17_use_val)
        if announce:
            announce_fingerprint(splits.fingerprint)
    return splits


class ImageListDataset(Dataset):
    """Images from a list of ``(path, label, camid)``; yields ``(image, label, camid)``.

    Args:
        items: the image list (Re-ID ``(path, pid, camid)``; classification
            ``(path, label, 0)``).
        transform: PIL image -> tensor (default: ``torchvision`` ``ToImage`` only).
    """

    def __init__(self, items: Sequence[tuple[str, int, int]],
                 transform: Callable | None = None) -> None:
        self.items = list(items)
        self.transform = transform
        # a leading Resize is applied once per image and kept (dnas.data.image_cache)
        self._resize, self._rest = split_leading_resize(transform)
        self.labels = np.asarray([it[1] for it in self.items], dtype=np.int64)
        self.camids = np.asarray([it[2] for it in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    @staticmethod
    def _read(path: str) -> Image.Image:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # PIL: truncated/broken files
            why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read image ({why})") from None

    def __getitem__(self, index: int):
        path, label, camid = self.items[index]
        if self._resize is not None:
            img = self._rest(RESIZED.get(path, self._resize, self._read))
        else:
            img = self._read(path)
            if self.transform is not None:
                img = self.transform(img)
        return img, label, camid


@dataclasses.dataclass
class LoaderConfig:
    """What the loaders of every task share (:class:`ReIDDataConfig`,
    :class:`ClassificationDataConfig`; :func:`build_loaders` takes either).

    Attributes:
        data: the ``--data`` spec; its task must be the config's.
        test_batch_size: batch of the test loaders.
        workers: DataLoader worker processes.
        seed: seed of batch order and of the weight/arch split.
        arch_fraction: share of training images for the architecture steps; 0 keeps
            all for training and builds no architecture loader. The split keeps ``k``
            images (Re-ID; 1 for classification) and two cameras per identity in each
            part where it can (:func:`dnas.data.samplers.split_weight_arch`).
        rank: this process's rank (DDP).
        world_size: number of processes (DDP).
    """

    task: ClassVar[str] = ""
    data: str = "synthetic"
    test_batch_size: int = 128
    workers: int = 2
    seed: int = 0
    arch_fraction: float = 0.0
    rank: int = 0
    world_size: int = 1


@dataclasses.dataclass
class ReIDDataConfig(LoaderConfig):
    """The loaders of a Re-ID set: PK training batches, query/gallery, and a validation
    query/gallery carved from the training identities.

    Attributes:
        height, width: input size.
        p: identities per training batch.
        k: images per identity in a training batch.
        val_ids_fraction: share of the training identities held out as the validation
            query/gallery (0: none).
        val_min_ids: hold out at least this many identities (with a split).
        val_seed: seed of the validation split (apart from ``seed``, so every
            training seed selects on the same identities).
        msmt17_use_val: MSMT17: add ``list_val.txt`` to the training set.
        flip_prob: horizontal-flip probability.
        pad: padding before the random crop; default ``None`` scales the usual 10
            pixels at height 256 to the input height (3 at 64x32).
        erasing_prob: random-erasing probability.
        synthetic_reid: parameters of the ``synthetic`` set.
    """

    task: ClassVar[str] = "reid"
    height: int = 256
    width: int = 128
    p: int = 16
    k: int = 4
    val_ids_fraction: float = 0.0
    val_min_ids: int = 8
    val_seed: int = 0
    msmt17_use_val: bool = False
    flip_prob: float = 0.5
    pad: int | None = None
    erasing_prob: float = 0.5
    synthetic_reid: SyntheticReIDConfig | None = None

    @classmethod
    def from_recipe(cls, cfg, *, height: int, width: int, test_batch_size: int, rank: int = 0,
                    world_size: int = 1, arch_fraction: float = 0.0) -> "ReIDDataConfig":
        """The Re-ID loaders' settings of a search or retrain recipe (its data, batch,
        split and augmentation keys; the synthetic set from ``data_seed``, never the run
        seed): the one place a recipe is mapped to data."""
        return cls(data=cfg.data, height=height, width=width, p=cfg.p, k=cfg.k, workers=cfg.workers,
                   seed=cfg.seed, arch_fraction=arch_fraction, rank=rank, world_size=world_size,
                   test_batch_size=test_batch_size, synthetic_reid=synthetic_reid_from_recipe(cfg),
                   val_ids_fraction=cfg.val_ids_fraction, val_min_ids=cfg.val_min_ids, val_seed=cfg.val_seed,
                   msmt17_use_val=cfg.msmt17_use_val, flip_prob=cfg.flip_prob, pad=cfg.pad,
                   erasing_prob=cfg.erasing_prob)


@dataclasses.dataclass
class ClassificationDataConfig(LoaderConfig):
    """The loaders of an ImageFolder set: shuffled training batches and the val loader.

    Attributes:
        size: input side.
        batch_size: training batch.
        synthetic_imagefolder: parameters of the ``synthetic-imagenet`` set.
    """

    task: ClassVar[str] = "classification"
    size: int = 224
    batch_size: int = 256
    synthetic_imagefolder: SyntheticImageFolderConfig | None = None


@dataclasses.dataclass
class DataLoaders:
    """The loaders of one experiment.

    Attributes:
        task: ``"reid"`` or ``"classification"``.
        splits: the image lists.
        num_classes: training identities / classes (classifier width).
        train: training batches (on the weight subset when ``arch`` is set).
        train_sampler: its batch sampler (``set_epoch``, ``state_dict``).
        arch: architecture-step batches (search only) or ``None``.
        arch_sampler: its batch sampler or ``None``.
        query: Re-ID query loader (``None`` for classification).
        gallery: Re-ID gallery loader (``None`` for classification).
        val: classification validation loader (``None`` for Re-ID).
        val_query: Re-ID validation query loader (identities held out of training),
            ``None`` without a validation split.
        val_gallery: its gallery loader.
        validation: the :class:`dnas.data.protocol.ValidationSplit` or ``None``.
        train_eval: every training image (weight and architecture parts) with the test
            transforms, in order (the IB measurement of a trained net, Table V).
        arch_split_stats: ``{"weights": ..., "arch": ...}`` statistics of the
            weight/architecture split (:func:`dnas.data.protocol.split_statistics`).
        arch_split_summary: the same as a table for the run log.
    """

    task: str
    splits: ReIDSplits | ClassificationSplits
    num_classes: int
    train: DataLoader
    train_sampler: PKSampler | RandomBatchSampler
    arch: DataLoader | None = None
    arch_sampler: PKSampler | RandomBatchSampler | None = None
    query: DataLoader | None = None
    gallery: DataLoader | None = None
    val: DataLoader | None = None
    val_query: DataLoader | None = None
    val_gallery: DataLoader | None = None
    validation: object | None = None
    train_eval: DataLoader | None = None
    arch_split_stats: dict | None = None
    arch_split_summary: str = ""

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the training (and architecture) samplers."""
        self.train_sampler.set_epoch(epoch)
        if self.arch_sampler is not None:
            self.arch_sampler.set_epoch(epoch)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # set per worker by the DataLoader's generator
    np.random.seed(seed)


def _loader(ds: Dataset, cfg: LoaderConfig, batch_sampler=None, batch_size: int | None = None,
            seed_offset: int = 0) -> DataLoader:
    # training loaders keep their workers across epochs; test loaders release them
    kw = dict(num_workers=cfg.workers, pin_memory=torch.cuda.is_available(),
              worker_init_fn=_worker_init if cfg.workers > 0 else None,
              persistent_workers=cfg.workers > 0 and batch_sampler is not None,
              generator=torch.Generator().manual_seed(cfg.seed * 1000 + seed_offset))
    if batch_sampler is not None:
        return DataLoader(ds, batch_sampler=batch_sampler, **kw)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, drop_last=False, **kw)


def _train_sampler(labels: np.ndarray, cfg: LoaderConfig, reid: bool, offset: int):
    if reid:
        return PKSampler(labels, cfg.p, cfg.k, seed=cfg.seed + offset, rank=cfg.rank,
                         world_size=cfg.world_size)
    bs = min(cfg.batch_size, len(labels))
    return RandomBatchSampler(len(labels), bs, seed=cfg.seed + offset, rank=cfg.rank,
                              world_size=cfg.world_size)


def build_loaders(cfg: ReIDDataConfig | ClassificationDataConfig) -> DataLoaders:
    """Build the training, architecture and test loaders a config asks for.

    Args:
        cfg: a :class:`ReIDDataConfig` or :class:`ClassificationDataConfig` (its
            ``data`` field is the ``--data`` spec, of the config's task).

    Returns:
        The :class:`DataLoaders`; a log-ready summary is ``result.splits.summary()``.

    Raises:
        DataError: bad spec, a spec of the other task (before anything is read), missing
            or malformed data, too few identities for P.
    """
    spec = parse_data_spec(cfg.data)
    if spec.task != cfg.task:
        raise DataError(f"--data {cfg.data}: a {spec.task} data set, where {cfg.task} data was expected")
    reid = isinstance(cfg, ReIDDataConfig)
    if reid:
        splits = load_splits(spec, synthetic_reid=cfg.synthetic_reid, msmt17_use_val=cfg.msmt17_use_val,
                             announce=cfg.rank == 0)
    else:
        splits = load_splits(spec, synthetic_imagefolder=cfg.synthetic_imagefolder, announce=cfg.rank == 0)
    validation = None
    if reid and cfg.val_ids_fraction > 0:
        train, validation = carve_validation(splits.train, cfg.val_ids_fraction, cfg.val_min_ids, cfg.val_seed,
                                             keep_ids=cfg.p)
        splits = dataclasses.replace(splits, train=train, val_query=validation.query,
                                     val_gallery=validation.gallery)
    if reid:
        train_tf = build_reid_transform(cfg.height, cfg.width, train=True, flip_prob=cfg.flip_prob,
                                        pad=cfg.pad if cfg.pad is not None else max(1, round(10 * cfg.height / 256)), erasing_prob=cfg.erasing_prob)
        test_tf = build_reid_transform(cfg.height, cfg.width, train=False)
        num_classes = splits.num_train_pids
    else:
        train_tf = build_classification_transform(cfg.size, train=True)
        test_tf = build_classification_transform(cfg.size, train=False)
        num_classes = splits.num_classes
    items = splits.train
    labels = np.asarray([it[1] for it in items])
    arch_loader = arch_sampler = None
    split_stats, split_summary = None, ""
    if cfg.arch_fraction > 0:
        cams = np.asarray([it[2] for it in items])
        k = cfg.k if reid else 1
        w_idx, a_idx = split_weight_arch(labels, cfg.arch_fraction, cfg.seed, camids=cams, k=k)
        split_stats = {"weights": split_statistics(labels[w_idx], cams[w_idx], k),
                       "arch": split_statistics(labels[a_idx], cams[a_idx], k)}
        split_summary = format_split_statistics(
            split_stats, k, f"weight/architecture split (by image, stratified by identity, seed {cfg.seed}, "
                            f"arch_fraction {cfg.arch_fraction:g}; at least K images and two cameras per id "
                            "in each part where the id has them)")
        arch_items = [items[i] for i in a_idx]
        items = [items[i] for i in w_idx]
        arch_sampler = _train_sampler(labels[a_idx], cfg, reid, offset=1)
        arch_loader = _loader(ImageListDataset(arch_items, train_tf), cfg, arch_sampler,
                              seed_offset=1)
        labels = labels[w_idx]
    train_sampler = _train_sampler(labels, cfg, reid, offset=0)
    out = DataLoaders(spec.task, splits, num_classes,
                      _loader(ImageListDataset(items, train_tf), cfg, train_sampler),
                      train_sampler, arch_loader, arch_sampler,
                      validation=validation, arch_split_stats=split_stats, arch_split_summary=split_summary)
    out.train_eval = _loader(ImageListDataset(splits.train, test_tf), cfg, batch_size=cfg.test_batch_size,
                             seed_offset=6)
    if reid:
        out.query = _loader(ImageListDataset(splits.query, test_tf), cfg,
                            batch_size=cfg.test_batch_size, seed_offset=2)
        out.gallery = _loader(ImageListDataset(splits.gallery, test_tf), cfg,
                              batch_size=cfg.test_batch_size, seed_offset=3)
        if validation is not None:
            out.val_query = _loader(ImageListDataset(validation.query, test_tf), cfg,
                                    batch_size=cfg.test_batch_size, seed_offset=4)
            out.val_gallery = _loader(ImageListDataset(validation.gallery, test_tf), cfg,
                                      batch_size=cfg.test_batch_size, seed_offset=5)
    else:
        out.val = _loader(ImageListDataset(splits.val, test_tf), cfg,
                          batch_size=cfg.test_batch_size, seed_offset=2)
    return out

