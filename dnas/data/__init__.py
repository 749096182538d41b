"""Data: Re-ID and ImageNet data sets, synthetic sets, samplers, transforms, loaders.

The public entry points (see each module for details):

- :func:`build_loaders` / :class:`ReIDDataConfig`, :class:`ClassificationDataConfig` / :class:`DataLoaders`: loaders from a
  ``--data`` spec (:func:`parse_data_spec`, :data:`DATASET_NAMES`).
- :func:`load_splits` and the per-set readers (:func:`load_market1501`, ...).
- :func:`fingerprint_splits`: a Re-ID set's counts per split against the published ones
  (``splits.fingerprint``, set by :func:`load_splits`).
- :class:`ImageListDataset`: ``(path, pid, camid)`` lists as a torch Dataset.
- :class:`PKSampler`, :class:`RandomBatchSampler`, :func:`split_weight_arch`.
- :func:`carve_validation` / :class:`ValidationSplit` (model selection on held-out
  training identities), :func:`split_statistics`.
- :func:`build_reid_transform`, :func:`build_classification_transform`,
  :func:`mixup_batch`.
- :func:`ensure_synthetic_reid`, :func:`ensure_synthetic_imagefolder`.
"""
from dnas.data.fingerprint import fingerprint_splits
from dnas.data.imagenet import ClassificationSplits, load_imagefolder
from dnas.data.loaders import (CLASSIFICATION_NAMES, DATASET_NAMES, REID_NAMES, ClassificationDataConfig,
                               DataLoaders, DataSpec, ImageListDataset, LoaderConfig, ReIDDataConfig, build_loaders,
                               load_splits, parse_data_spec)
from dnas.data.protocol import ValidationSplit, carve_validation, split_statistics
from dnas.data.reid_datasets import (ReIDSplits, load_cuhk03, load_dukemtmc, load_market1501,
                                     load_market_style, load_msmt17, relabel)
from dnas.data.samplers import PKSampler, RandomBatchSampler, split_weight_arch
from dnas.data.synthetic import (SyntheticImageFolderConfig, SyntheticReIDConfig,
                                 default_cache_dir, ensure_synthetic_imagefolder,
                                 ensure_synthetic_reid)
from dnas.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, MixupBatch,
                                  build_classification_transform, build_reid_transform,
                                  mixup_batch)

__all__ = [
    "CLASSIFICATION_NAMES", "DATASET_NAMES", "REID_NAMES", "ClassificationDataConfig", "ClassificationSplits",
    "DataLoaders", "DataSpec", "LoaderConfig", "ReIDDataConfig", "IMAGENET_MEAN", "IMAGENET_STD", "ImageListDataset",
    "MixupBatch", "PKSampler", "RandomBatchSampler", "ReIDSplits",
    "SyntheticImageFolderConfig", "SyntheticReIDConfig", "ValidationSplit", "build_classification_transform",
    "build_loaders", "build_reid_transform", "carve_validation", "default_cache_dir", "ensure_synthetic_imagefolder",
    "fingerprint_splits",
    "ensure_synthetic_reid", "load_cuhk03", "load_dukemtmc", "load_imagefolder",
    "load_market1501", "load_market_style", "load_msmt17", "load_splits", "mixup_batch",
    "parse_data_spec", "relabel", "split_statistics", "split_weight_arch",
]
