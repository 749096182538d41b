"""Atomic file output: nothing half-written.

Every file a command produces is written to a temporary sibling, flushed and fsynced,
then renamed over the target, so a crash (or SIGKILL) leaves either the old file or the
new one. Output directories (built in a temporary sibling directory and renamed into
place at the end) are :func:`dnas.outputs.atomic_directory`: they add the policy of what
``--overwrite`` may replace and the output's lock. No paper counterpart.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from dnas.errors import CheckpointError

UMASK = os.umask(0)  # the process's umask (read by setting it; set back at once)
os.umask(UMASK)


def real_target(target: str | os.PathLike) -> Path:
    """The absolute path of an output; a symbolic link is followed (``--out LINK`` writes,
    and with ``--overwrite`` replaces, the directory the link points to; the link stays)."""
    target = Path(os.path.abspath(target))
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform can."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename).

    Args:
        path: target file; its parent directory must exist.
        data: the bytes to write.

    Returns:
        The target path.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class _NoAliasDumper(yaml.SafeDumper):
    """A safe dumper that writes repeated lists out in full (no ``&id001`` anchors)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(obj: Any) -> str:
    """YAML text of ``obj``: key order kept, short lists inline, no anchors."""
    return yaml.dump(obj, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None, width=120)


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as YAML to ``path`` atomically."""
    return atomic_write_text(path, dump_yaml(obj))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into memory, then write atomically."""
    import torch  # here, not at the top: torch-free modules (spaces, latency keys) write files too

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution).

    Raises:
        CheckpointError: the file is missing or cannot be read as a safe checkpoint.
    """
    import torch  # here, not at the top: see atomic_torch_save

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise beside the one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised as a user-facing error
        text = str(exc).strip()
        if "Weights only load failed" in text:
            # NOTE: torch's message suggests weights_only=False; that would run the file's code: never pass it on
            detail = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("Unsupported")),
                          "unsupported content")
            raise CheckpointError(f"{path}: refused: the file holds Python objects that are not weights "
                                  f"({detail[:160]}); dnas reads only tensor checkpoints") from None
        first = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
