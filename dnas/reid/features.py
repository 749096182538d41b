"""Feature extraction for Re-ID evaluation (paper section 4.1).

The model is called as ``model(x, return_features=True)`` and must return a dict with
key ``"embedding"`` ``(B, D)``; any other network can be evaluated by passing
``feature_fn(x) -> (B, D)`` instead. Optional flip averaging (the mean of the features
of the image and of its horizontal mirror) and L2 normalisation. A tqdm progress bar
counts the batches, only when stderr is a terminal and the caller has not switched it
off (``progress=False``).
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable

import numpy as np
import torch


def _default_feature_fn(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    def fn(x: torch.Tensor, **camera) -> torch.Tensor:
        out = model(x, return_features=True, **camera)
        if not isinstance(out, dict) or "embedding" not in out:
            raise TypeError("model(x, return_features=True) must return a dict with key "
                            "'embedding'; pass feature_fn= for other models")
        return out["embedding"]

    return fn


@torch.no_grad()
def extract_features(model: torch.nn.Module | None, loader: Iterable, device: str | torch.device,
                     flip: bool = True, normalize: bool = False,
                     feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     progress: bool = True, desc: str = "features") -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Embed every image of a loader.

    Args:
        model: the network (switched to eval mode for the pass, then restored); may be
            ``None`` when ``feature_fn`` is given.
        loader: yields ``(images, pids, camids)`` batches (extra items are ignored).
        device: where the model runs.
        flip: average with the features of the horizontally flipped images.
        normalize: L2-normalise the (averaged) features.
        feature_fn: ``images -> (B, D)`` features, replacing the model call.
        progress: show a progress bar (only when stderr is a terminal).
        desc: the progress bar's label.

    Returns:
        ``(features (N, D) float32 on CPU, pids (N,), camids (N,))``.
    """
    if model is None and feature_fn is None:
        raise ValueError("extract_features needs a model or a feature_fn")
    fn = feature_fn or _default_feature_fn(model)
    # a model with a camera embedding (TransReID's SIE) gets each image's camera
    with_camera = feature_fn is None and bool(getattr(model, "uses_camera", False))
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    feats, pids, camids = [], [], []
    try:
        for batch in _progress(loader, progress, desc):
            images, pid, camid = batch[0], batch[1], batch[2]
            x = images.to(device, non_blocking=True)  # (B, 3, H, W)
            cam = {"camera": torch.as_tensor(camid).to(device)} if with_camera else {}
            f = fn(x, **cam).float()
            if flip:
                f = (f + fn(torch.flip(x, dims=[3]), **cam).float()) / 2.0
            if normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            feats.append(f.cpu())
            pids.append(np.asarray(pid))
            camids.append(np.asarray(camid))
    finally:
        if model is not None:
            model.train(was_training)
    if not feats:
        raise ValueError("extract_features: the loader yielded no batch")
    return (torch.cat(feats), np.concatenate(pids).astype(np.int64),
            np.concatenate(camids).astype(np.int64))


def _progress(loader: Iterable, enabled: bool, desc: str) -> Iterable:
    """``loader`` wrapped in a tqdm bar of batches when enabled and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return loader
    from tqdm import tqdm

    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return tqdm(loader, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
