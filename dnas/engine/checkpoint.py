"""Checkpoint files of every training run (search and retraining): everything needed to
continue exactly, written atomically (temp file, fsync, rename) and read back with
``weights_only=True``. A checkpoint names the kind of run that wrote it, in the
vocabulary of the output directories (:data:`dnas.outputs.COMMANDS`: ``search-run``,
``reid-run``, ``imagenet-run``); the names older checkpoints used (``search``,
``retrain-reid``, ``retrain-imagenet``, none at all for the first search checkpoints)
are read as those.
"""
from __future__ import annotations

from pathlib import Path

from dnas.errors import CheckpointError
from dnas.io import atomic_torch_save, safe_torch_load
from dnas.outputs import SEARCH_RUN, run_kind

CHECKPOINT_VERSION = 1
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"
LEGACY_KIND = SEARCH_RUN  # search checkpoints written before they named their kind


def save_checkpoint(run_dir: Path, state: dict, kind: str, best: bool = False) -> None:
    """Write ``checkpoint-last.pt`` (and, with ``best``, ``checkpoint-best.pt``) atomically."""
    state = {"version": CHECKPOINT_VERSION, "kind": kind, **state}
    atomic_torch_save(state, Path(run_dir) / LAST)
    if best:
        atomic_torch_save(state, Path(run_dir) / BEST)


def load_checkpoint(path: Path, kind: str | None = None, which: str = "last") -> dict:
    """Load a checkpoint: a file, or a run directory's ``checkpoint-{which}.pt``; its
    ``kind`` is returned in the current vocabulary (:func:`dnas.outputs.run_kind`).

    Raises:
        CheckpointError: missing, unreadable, another format, or another kind of run.
    """
    path = Path(path)
    if path.is_dir():
        path = path / (BEST if which == "best" else LAST)
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise CheckpointError(f"{path}: not a dnas checkpoint (version {CHECKPOINT_VERSION})")
    found = run_kind(state.get("kind", LEGACY_KIND))
    if kind is not None and found != run_kind(kind):
        raise CheckpointError(f"{path}: a {found} checkpoint, expected {kind}")
    return {**state, "kind": found}
