"""Loading weights into a network (no paper counterpart; the transfer rule of
``--pretrained`` is paper section 4.2's ImageNet pretraining, docs/method.md).

- :func:`load_weights`: strict loading with a one-line error naming the file and key.
- :func:`load_run_weights`: the model weights of a training run's checkpoint
  (``checkpoint-last.pt`` / ``checkpoint-best.pt``), the EMA weights when the run kept
  them: the one reader behind ``--eval-only``, the best checkpoint's test figures,
  ``--pretrained`` and ``dnas-visualize``.
- :func:`read_pretrained_weights` and :func:`load_pretrained`: what ``dnas-retrain
  --pretrained`` starts from, loaded without the source's classifier and BNNeck.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from dnas.engine.checkpoint import BEST, CHECKPOINT_VERSION, LAST, load_checkpoint
from dnas.errors import CheckpointError
from dnas.io import safe_torch_load

DROP_PREFIXES = ("head.classifier.", "head.neck.")  # task-specific head: never transferred


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 target: str = "the architecture") -> None:
    """``load_state_dict`` (strict) with a one-line error naming ``source``, the key and
    ``target`` (what is being loaded) on any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: weights do not fit {target} ({what})")
    for key, t in own.items():
        if tuple(state[key].shape) != tuple(t.shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(state[key].shape)}, "
                                  f"{target} needs {tuple(t.shape)}")
    model.load_state_dict(state)


def checkpoint_file(run: str | Path, which: str = "last") -> Path:
    """``run`` itself when it is a file, else the run directory's ``checkpoint-{which}.pt``."""
    if which not in ("last", "best"):
        raise ValueError(f"which={which!r}: expected 'last' or 'best'")
    run = Path(run)
    return run if run.is_file() else run / (BEST if which == "best" else LAST)


def model_weights(state: Mapping, source: str, ema: bool = True) -> tuple[dict, str]:
    """The network weights of a loaded checkpoint: the EMA's when ``ema`` and the run kept
    one, else the trained ones; with the description of what was read."""
    if ema and state.get("ema"):
        return dict(state["ema"]["model"]), f"{source} (EMA weights)"
    return dict(state["model"]), source


def load_run_weights(run: str | Path, which: str = "last", ema: bool = True,
                     kind: str | None = None) -> tuple[dict, str]:
    """The model weights of a run's checkpoint.

    Args:
        run: a run directory (its ``checkpoint-{which}.pt``) or a checkpoint file.
        which: ``last`` or ``best``.
        ema: the EMA weights when the run kept them (what the run evaluates and exports).
        kind: the kind of run required (``reid-run``, ...: :data:`dnas.outputs.COMMANDS`;
            the older checkpoint names are read as these; ``None``: any).

    Returns:
        ``(state dict, description of the weights read)``.

    Raises:
        CheckpointError: missing, unreadable, another format or another kind of run.
    """
    path = checkpoint_file(run, which)
    return model_weights(load_checkpoint(path, kind), str(path), ema)


def read_pretrained_weights(source: str | Path) -> tuple[dict, str]:
    """Weights to start from: an ``imagenet`` run (its ``final/model.pt``, else its last
    checkpoint, EMA weights preferred), a ``dnas-derive`` directory (``model.pt``), a
    retrain checkpoint file or a plain state-dict file.

    Returns:
        ``(state_dict, description of the file read)``.

    Raises:
        CheckpointError: nothing usable at ``source``.
    """
    path = Path(source)
    if path.is_dir():
        for cand in (path / "final" / "model.pt", path / LAST, path / "model.pt"):
            if cand.is_file():
                path = cand
                break
        else:
            raise CheckpointError(f"{source}: no final/model.pt, {LAST} or model.pt in this directory")
    state = safe_torch_load(path)
    if isinstance(state, Mapping) and state.get("version") == CHECKPOINT_VERSION and "model" in state:
        return model_weights(state, str(path))
    if not (isinstance(state, Mapping) and state and all(torch.is_tensor(v) for v in state.values())):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor) or a dnas-retrain checkpoint")
    return dict(state), str(path)


def load_pretrained(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> dict:
    """Load transferable weights into ``model``; drop the source's classifier and BNNeck.

    DCS-Attention modules present on one side only (``use_dcs`` differs) are dropped
    or left freshly initialised; any other missing or extra key, or any shape
    mismatch, is an error.

    Returns:
        ``{"source", "loaded", "dropped", "fresh"}``: keys loaded, source keys dropped,
        model keys left at their initialisation.

    Raises:
        CheckpointError: the weights do not fit the architecture (naming key and shapes).
    """
    own = model.state_dict()
    dropped = sorted(k for k in state if k.startswith(DROP_PREFIXES) or (k not in own and k.startswith("dcs.")))
    unexpected = sorted(k for k in state if k not in own and k not in dropped)
    fresh = sorted(k for k in own if (k not in state or k.startswith(DROP_PREFIXES))
                   and (k.startswith(DROP_PREFIXES) or k.startswith("dcs.")))
    missing = sorted(k for k in own if k not in state and k not in fresh)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: pretrained weights do not fit the architecture ({what}); "
                              "pretrain the same derived arch")
    loaded = sorted(k for k in own if k not in fresh)
    for k in loaded:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(state[k].shape)}, the architecture "
                                  f"needs {tuple(own[k].shape)}; pretrain the same derived arch")
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return {"source": source, "loaded": loaded, "dropped": dropped, "fresh": fresh}
