"""Search checkpoints: everything needed to continue exactly (supernet weights and arch
parameters, both optimizers, the IB tracker, epoch / phase / batch position, Gumbel
temperature and noise generator, every RNG, the epoch's running metrics), written
atomically (temp file, fsync, rename) and read back with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

from dnas.errors import CheckpointError
from dnas.io import atomic_torch_save, safe_torch_load

CHECKPOINT_VERSION = 1
LAST, BEST = "checkpoint-last.pt", "checkpoint-best.pt"


def save_checkpoint(run_dir: Path, state: dict, best: bool = False) -> None:
    state = {"version": CHECKPOINT_VERSION, **state}
    atomic_torch_save(state, run_dir / LAST)
    if best:
        atomic_torch_save(state, run_dir / BEST)


def load_checkpoint(run_dir: Path, which: str = "last") -> dict:
    """Load ``checkpoint-{which}.pt`` of a run.

    Raises:
        CheckpointError: missing, unreadable or of another format version.
    """
    path = Path(run_dir) / (LAST if which == "last" else BEST)
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "model" not in state:
        raise CheckpointError(f"{path}: not a dnas-search checkpoint (version {CHECKPOINT_VERSION})")
    return state
