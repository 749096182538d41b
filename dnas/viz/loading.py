"""The models and the data ``dnas-visualize`` shows them on (paper section 4.1 protocol).

A model is a ``dnas-derive`` directory, a ``dnas-retrain reid`` run (its
``checkpoint-last.pt`` or ``checkpoint-best.pt``, EMA weights when the run kept them,
as ``dnas-retrain reid --eval-only`` loads it), a checkpoint file in such a run, or the
run's ``final/``. The data set is ``--data`` as the other commands take it; without
it, the one named in the run's ``config.yaml`` (with the synthetic set's size keys).
Images are shown and embedded at the model's input size with the test transform;
embeddings come from :func:`dnas.reid.features.extract_features` (no flip averaging,
as the evaluation's default).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from dnas.architectures import load_derived, load_run_model
from dnas.errors import DnasError
from dnas.outputs import DERIVED, REID_RUN, output_kind, require_kind
from dnas.strict_yaml import read_yaml

log = logging.getLogger(__name__)
Item = tuple[str, int, int]  # (path, pid, camid)


@dataclasses.dataclass
class LoadedModel:
    """A network ready to be shown.

    Attributes:
        model: the network in eval mode.
        label: its name in figures and tables.
        path: what the user gave.
        weights: the weight file read (with ``(EMA weights)`` when so).
        config: the run's ``config.yaml`` as a dict (empty without one).
    """

    model: torch.nn.Module
    label: str
    path: str
    weights: str
    config: dict

    @property
    def input_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the model's input."""
        _, h, w = self.model.arch.input_size
        return int(h), int(w)


def _read_config(run: Path) -> dict:
    path = run / "config.yaml"
    if not path.is_file():
        return {}
    cfg = read_yaml(path, DnasError, "a run's config")
    return cfg if isinstance(cfg, dict) else {}


def load_model(path: str | Path, checkpoint: str = "last", label: str | None = None) -> LoadedModel:
    """Load one model (see the module docstring for what ``path`` may be).

    Args:
        path: a derived directory, a reid run, a checkpoint in one, or ``RUN/final``.
        checkpoint: ``last`` or ``best`` for a run directory.
        label: the name shown (default: the directory's name, ``RUN/final`` as ``RUN``).

    Raises:
        DnasError: not found, or not one of these (a search run is named as such).
    """
    path = Path(path)
    if not path.exists():
        raise DnasError(f"{path}: model not found; expected a dnas-derive directory, a dnas-retrain reid run "
                        "or its final/")
    run = path if path.is_dir() else path.parent
    require_kind(run, (REID_RUN, DERIVED), "dnas-visualize")
    ckpt = path if path.is_file() else run / f"checkpoint-{checkpoint}.pt"
    if output_kind(run) == REID_RUN and ckpt.is_file():
        model, weights = load_run_model(ckpt, kind=REID_RUN)
        config = _read_config(run)
    elif path.is_dir() and (path / "model.pt").is_file():
        model, weights = load_derived(path), str(path / "model.pt")
        parent = path.resolve().parent
        config = _read_config(parent) if output_kind(parent) == REID_RUN else {}
    else:
        raise DnasError(f"{path}: no weights found (expected checkpoint-{checkpoint}.pt of a reid run, or model.pt "
                        "of a dnas-derive directory)")
    if not hasattr(model, "arch") or not hasattr(model.arch, "input_size"):
        raise DnasError(f"{path}: the model records no input size (arch.input_size)")
    model.eval()
    if label is None:
        named = path if path.is_dir() else path.parent
        label = named.resolve().parent.name if named.name == "final" else named.name
    return LoadedModel(model, label, str(path), weights, config)


def load_models(paths: Sequence[str], labels: Sequence[str] | None, checkpoint: str) -> list[LoadedModel]:
    """Several models with distinct labels (``--labels`` in order, else directory names)."""
    if labels and len(labels) != len(paths):
        raise DnasError(f"--labels: {len(labels)} labels for {len(paths)} models; give one label per model")
    models = [load_model(p, checkpoint, labels[i] if labels else None) for i, p in enumerate(paths)]
    seen: dict[str, int] = {}
    for m in models:  # same directory names (runs/a/final, runs/b/final): number them
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m.label = f"{m.label}-{seen[m.label]}"
    sizes = {m.input_hw for m in models}
    if len(sizes) > 1:
        raise DnasError(f"--compare: the models take different input sizes {sorted(sizes)}; compare models "
                        "of one input size")
    return models


@dataclasses.dataclass
class ReIDImages:
    """The image lists of a Re-ID set and the test transform at the models' size.

    Attributes:
        spec: the ``--data`` spec.
        query: ``(path, pid, camid)`` of the test query.
        gallery: the test gallery.
        train: the training images (pids relabelled to ``0..K-1``).
        height: model input height.
        width: model input width.
        fingerprint: the data set's counts against the published ones
            (:mod:`dnas.data.fingerprint`); the figures' JSON files carry it.
    """

    spec: str
    query: list[Item]
    gallery: list[Item]
    train: list[Item]
    height: int
    width: int
    batch_size: int = 64
    fingerprint: dict | None = None

    def split(self, name: str) -> list[Item]:
        """``query``, ``gallery``, ``train``, or ``test`` (query then gallery)."""
        if name == "test":
            return self.query + self.gallery
        return {"query": self.query, "gallery": self.gallery, "train": self.train}[name]

    def loader(self, items: Sequence[Item]):
        from torch.utils.data import DataLoader

        from dnas.data.loaders import ImageListDataset
        from dnas.data.transforms import build_reid_transform

        ds = ImageListDataset(items, build_reid_transform(self.height, self.width, train=False))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def tensors(self, items: Sequence[Item]) -> torch.Tensor:
        """The images as the model sees them: ``(N, 3, H, W)`` normalised."""
        return torch.cat([b[0] for b in self.loader(items)])

    def pictures(self, items: Sequence[Item]) -> np.ndarray:
        """The images for display: ``(N, H, W, 3)`` float RGB in [0, 1] at the model's size."""
        from PIL import Image

        out = []
        for path, _, _ in items:
            with Image.open(path) as im:
                img = im.convert("RGB").resize((self.width, self.height), Image.BILINEAR)
            out.append(np.asarray(img, dtype=np.float32) / 255.0)
        return np.stack(out)


def resolve_data(spec: str | None, models: Sequence[LoadedModel], batch_size: int = 64) -> ReIDImages:
    """The Re-ID set of ``--data`` (default: the first model's run config) at the models' size.

    Raises:
        DnasError: no spec and no run config naming one, or a data set that is not Re-ID.
    """
    from dnas.data.loaders import load_splits, parse_data_spec
    from dnas.data.synthetic import synthetic_reid_from_recipe

    config = next((m.config for m in models if m.config.get("data")), {})
    if spec is None:
        spec = config.get("data")
        if not spec:
            raise DnasError(f"--data: not given, and {models[0].path} has no run config.yaml naming its data set; "
                            "pass --data synthetic or --data market1501:/path/to/Market-1501")
        log.info("data: %s (from the run's config.yaml)", spec)
    ds = parse_data_spec(spec)
    if ds.task != "reid":
        raise DnasError(f"--data {spec}: dnas-visualize shows Re-ID sets (market1501:, dukemtmc:, msmt17:, cuhk03:, "
                        "synthetic), not a classification set")
    synth = synthetic_reid_from_recipe(SimpleNamespace(**{k: int(config.get(k) or 0) for k in (
        "data_seed", "synthetic_ids", "synthetic_images_per_id")}))
    splits = load_splits(ds, synth, msmt17_use_val=bool(config.get("msmt17_use_val", False)))
    h, w = models[0].input_hw
    return ReIDImages(spec, list(splits.query), list(splits.gallery), list(splits.train), h, w, batch_size,
                      fingerprint=splits.fingerprint)


def embed(model: LoadedModel, data: ReIDImages, items: Sequence[Item], device: torch.device,
          progress: bool = True) -> torch.Tensor:
    """``(N, D)`` retrieval embeddings of ``items`` (the evaluation's feature pass)."""
    from dnas.reid.features import extract_features

    feats, _, _ = extract_features(model.model.to(device), data.loader(items), device, flip=False,
                                   progress=progress, desc=f"{model.label} features")
    return feats


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DnasError("--device cuda: no CUDA device is available; use --device cpu")
    return torch.device(name)
