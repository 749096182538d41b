"""Grad-CAM maps of Re-ID networks (paper section 4.7, Figure 1: networks with and
without DCS-Attention and IBB), computed with pytorch-grad-cam.

Target (what the map explains):

- ``logit``: the identity logit the network scores highest (test identities are not
  training classes, so the predicted training identity stands in for "its identity";
  for training images it is their own class when ``classes`` is given).
- ``match``: the cosine similarity of the image's embedding to the embedding of its
  best true match in the gallery (the nearest image of the same identity from another
  camera), what retrieval ranks by.

Layer: a model may name its layer (``gradcam_layer``, a module or a module name); the
derived networks use the head's last convolution (the feature map the embedding pools),
token models (ViT, also one wrapped as ``model.backbone``) the first norm of their last
block, any other network the last module with a 4-D output. Token models: the tokens
``(B, N, C)`` are reshaped to the patch grid ``(B, C, gh, gw)`` after dropping the
``N - gh * gw`` leading class/distillation tokens; the grid is the model's
``patch_grid`` or ``grid_size`` (timm's ``patch_embed.grid_size``), or given, e.g. 21x10
for TransReID at 256x128 (stride 12).

Maps are per image min-max scaled to [0, 1] and resized to the input size
(pytorch-grad-cam's convention).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch
from torch import nn

from dnas.errors import DnasError


def _owners(model: nn.Module) -> list[nn.Module]:
    """The model and the network it wraps (``model.backbone``, e.g. a timm ViT inside a Re-ID net)."""
    inner = getattr(model, "backbone", None)
    return [model] + ([inner] if isinstance(inner, nn.Module) else [])


def patch_grid(model: nn.Module) -> tuple[int, int] | None:
    """The patch grid ``(rows, cols)`` of a token model, or ``None`` for a CNN."""
    for owner in _owners(model):
        for holder in (owner, getattr(owner, "patch_embed", None)):
            for name in ("patch_grid", "grid_size"):
                grid = getattr(holder, name, None) if holder is not None else None
                if isinstance(grid, (tuple, list, torch.Size)) and len(grid) == 2:
                    return int(grid[0]), int(grid[1])
    return None


class TokensToGrid:
    """``reshape_transform`` of pytorch-grad-cam: tokens ``(B, N, C)`` -> ``(B, C, gh, gw)``.

    Args:
        grid: ``(gh, gw)``; the ``N - gh * gw`` leading tokens (class, distillation) are dropped.
    """

    def __init__(self, grid: tuple[int, int]):
        self.grid = (int(grid[0]), int(grid[1]))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        if tokens.dim() != 3 or tokens.shape[1] < gh * gw:
            raise DnasError(f"Grad-CAM: tokens of shape {tuple(tokens.shape)} do not hold a {gh}x{gw} patch grid; "
                            "give the grid (--grid ROWSxCOLS) of the model")
        patches = tokens[:, tokens.shape[1] - gh * gw:, :]  # (B, gh*gw, C)
        return patches.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)  # (B, C, gh, gw)


def _last_spatial_module(model: nn.Module, input_size: Sequence[int]) -> nn.Module:
    """The last module (in call order) whose output is a 4-D feature map."""
    found: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out: found.append(mod)
                                     if torch.is_tensor(out) and out.dim() == 4 else None)
             for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise DnasError("Grad-CAM: the model has no layer with a 4-D feature map; name one with gradcam_layer")
    return found[-1]


def target_layer(model: nn.Module, grid: tuple[int, int] | None = None,
                 input_size: Sequence[int] | None = None) -> nn.Module:
    """The layer whose activations and gradients make the map (see the module docstring)."""
    named = getattr(model, "gradcam_layer", None)
    if isinstance(named, str):
        return model.get_submodule(named)
    if isinstance(named, nn.Module):
        return named
    for owner in _owners(model) if grid is not None else []:
        blocks = getattr(owner, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks):
            return getattr(blocks[-1], "norm1", blocks[-1])
    head_conv = getattr(getattr(model, "head", None), "conv", None)
    if isinstance(head_conv, nn.Module):
        return head_conv
    size = input_size or tuple(model.arch.input_size)
    return _last_spatial_module(model, size)


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next((n for n, m in model.named_modules() if m is layer), type(layer).__name__)


class ModelOutput(nn.Module):
    """``model`` with one output: ``logits`` or ``embedding`` (pytorch-grad-cam takes a tensor)."""

    def __init__(self, model: nn.Module, key: str):
        super().__init__()
        self.model, self.key = model, key
        self.feature_dict = "return_features" in inspect.signature(model.forward).parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feature_dict:
            return self.model(x, return_features=True)[self.key]
        if self.key != "logits":
            raise DnasError(f"Grad-CAM: {type(self.model).__name__} returns logits only; use --target logit")
        return self.model(x)


class SimilarityTarget:
    """Cosine similarity of an embedding to a reference embedding (a Grad-CAM target)."""

    def __init__(self, reference: torch.Tensor):
        self.reference = torch.nn.functional.normalize(reference.detach().float().flatten(), dim=0)

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        ref = self.reference.to(embedding.device)
        return torch.nn.functional.normalize(embedding.float().flatten(), dim=0) @ ref


def gradcam_maps(model: nn.Module, images: torch.Tensor, target: str = "logit",
                 references: torch.Tensor | None = None, classes: Sequence[int] | None = None,
                 grid: tuple[int, int] | None = None, layer: nn.Module | None = None) -> dict:
    """Grad-CAM maps of ``images`` for one model.

    Args:
        model: the network (eval mode is set; weights are not changed).
        images: ``(N, 3, H, W)`` normalised input images.
        target: ``logit`` or ``match`` (needs ``references``).
        references: ``(N, D)`` the embeddings each image's similarity is explained to.
        classes: ``logit``: the class of each image (default: the highest-scoring one).
        grid: the patch grid of a token model (default: :func:`patch_grid`).
        layer: the target layer (default: :func:`target_layer`).

    Returns:
        ``{"maps": (N, H, W) float32 in [0, 1], "scores": (N,) the target's value,
        "classes": (N,) (logit target; else -1), "layer": name, "grid": (gh, gw) or None}``.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if target not in ("logit", "match"):
        raise DnasError(f"--target {target}: expected logit or match")
    model.eval()
    grid = grid or patch_grid(model)
    layer = layer or target_layer(model, grid, tuple(images.shape[1:]))
    wrapped = ModelOutput(model, "logits" if target == "logit" else "embedding").eval()
    device = next(model.parameters()).device
    images = images.to(device)
    with torch.no_grad():
        out = wrapped(images)
    if target == "logit":
        cls = np.asarray(classes if classes is not None else out.argmax(1).cpu().numpy(), dtype=np.int64)
        targets = [ClassifierOutputTarget(int(c)) for c in cls]
        scores = out[torch.arange(len(cls), device=device), torch.as_tensor(cls, device=device)].cpu().numpy()
    else:
        if references is None or len(references) != len(images):
            raise ValueError("target 'match' needs one reference embedding per image")
        cls = np.full(len(images), -1, dtype=np.int64)
        targets = [SimilarityTarget(r) for r in references]
        scores = np.asarray([float(t(o)) for t, o in zip(targets, out)])
    reshape = TokensToGrid(grid) if grid is not None else None
    with GradCAM(model=wrapped, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=images, targets=targets)  # (N, H, W), each in [0, 1]
    model.zero_grad(set_to_none=True)
    return {"maps": np.asarray(maps, dtype=np.float32), "scores": np.asarray(scores, dtype=np.float64),
            "classes": cls, "layer": layer_name(model, layer), "grid": grid}


def draw_gradcam(pictures: np.ndarray, maps: dict[str, np.ndarray], captions: Sequence[str], title: str):
    """A grid like the paper's Figure 1: the inputs in the first row, one row per model.

    Args:
        pictures: ``(N, H, W, 3)`` the images in [0, 1].
        maps: model label -> ``(N, H, W)`` maps in [0, 1].
        captions: one caption per image (column titles).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pytorch_grad_cam.utils.image import show_cam_on_image

    n, h, w = pictures.shape[:3]
    rows = 1 + len(maps)
    cell_w = 1.5
    fig, axes = plt.subplots(rows, n, figsize=(cell_w * n + 1.0, cell_w * h / w * rows + 0.8), squeeze=False)
    for c in range(n):
        axes[0, c].imshow(pictures[c])
        axes[0, c].set_title(captions[c], fontsize=7)
        for r, (label, m) in enumerate(maps.items(), start=1):
            axes[r, c].imshow(show_cam_on_image(pictures[c].astype(np.float32), m[c], use_rgb=True,
                                                image_weight=0.5))
    for r, label in enumerate(["input", *maps], start=0):
        axes[r, 0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
