"""Pretrained weights of a DCS-FB backbone (paper section 4: "ImageNet-pretrained"
variants of Table I): timm's own weights (a download, where timm has them) or a local
checkpoint file of the plain timm network.

A local file is read with timm's checkpoint reader (a state dict, or one wrapped under
``state_dict`` / ``model``; EMA weights preferred), passed through the model's own timm
filter where it has one (the ViT's resamples the position embedding to the overlapping
patch grid), stripped of the ImageNet classifier (and, for HRNet, of timm's classification head, which
the Re-ID HRNet replaces), and loaded into ``model.backbone``
strictly: a missing or unexpected key, or a shape that differs, is an error naming the
file and the key. The attention modules, the SIE and the head stay as built, so a new
DCS module starts as the identity (a CNN module's output BN weight is 0; a ViT block's
selection keeps every channel in inference); the JPM branch is copied from the loaded
last block. The report lists every key that did not come from the file
(:func:`start_from_pretrained`, kept by the network as ``pretrained_report``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dnas.errors import CheckpointError
from dnas.weights import load_weights


HRNET_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.")


def _classifier_keys(backbone: nn.Module) -> tuple[str, ...]:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ("fc", "classifier", "head")
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}.{p}" for n in names for p in ("weight", "bias"))


def read_backbone_checkpoint(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of ``path`` in ``model.backbone``'s key space (classifier dropped)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: pretrained file not found")
    from timm.models import load_state_dict  # timm on use: seconds of start-up for commands that never need it

    try:
        state = load_state_dict(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one line
        raise CheckpointError(f"{path}: cannot read a checkpoint ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of the backbone (name -> tensor)")
    if model.family == "vit":
        from timm.models.vision_transformer import checkpoint_filter_fn  # timm on use, as above

        state = checkpoint_filter_fn(state, model.backbone)
    own = model.backbone.state_dict()
    for key in _classifier_keys(model.backbone):
        if key not in own:
            state.pop(key, None)
    if model.family == "hrnet":  # timm's ImageNet head, which the Re-ID HRNet leaves out
        for key in [k for k in state if k.startswith(HRNET_HEAD) and k not in own]:
            del state[key]
    return state


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a checkpoint of the plain backbone into ``model`` strictly.

    Args:
        model: a :class:`~dnas.backbones.model.BackboneNet` or
            :class:`~dnas.backbones.vit.TransReIDNet`.
        path: the checkpoint file.

    Returns:
        ``{"source", "loaded", "new", "copied"}``: the number of backbone tensors loaded,
        the model keys not in the file (attention modules, SIE, head), and the keys
        copied from the loaded last block (the JPM branch).

    Raises:
        CheckpointError: the file does not fit the backbone (naming the key).
    """
    state = read_backbone_checkpoint(model, path)
    load_weights(model.backbone, state, str(path), target=f"backbone {model.arch.backbone}")
    copied = []
    if hasattr(model, "init_jpm_from_last_block") and model.jpm_block is not None:
        model.init_jpm_from_last_block()
        copied = sorted(k for k in model.state_dict() if k.startswith(("jpm_block.", "jpm_norm.")))
    new = sorted(k for k in model.state_dict() if not k.startswith("backbone.") and k not in copied)
    return {"source": str(path), "loaded": len(state), "new": new, "copied": copied}


def start_from_pretrained(model: nn.Module, pretrained: bool, pretrained_file: str | Path | None) -> dict | None:
    """Called by the network at the end of its construction: the JPM branch copied from
    timm's loaded last block (``pretrained``), or ``pretrained_file`` loaded strictly
    (:func:`load_backbone_weights`).

    Returns:
        The report (``{"source", "loaded", "new", "copied"}``), or ``None`` when the
        network starts from nothing pretrained.
    """
    if pretrained and hasattr(model, "init_jpm_from_last_block"):
        model.init_jpm_from_last_block()
    if pretrained_file:
        return load_backbone_weights(model, pretrained_file)
    if pretrained:
        return {"source": f"timm:{model.arch.backbone}", "loaded": len(model.backbone.state_dict()),
                "new": sorted(k for k in model.state_dict() if not k.startswith("backbone.")), "copied": []}
    return None
