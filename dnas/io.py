"""Atomic file output: nothing half-written.

Every file a command produces is written to a temporary sibling, flushed and fsynced,
then renamed over the target, so a crash (or SIGKILL) leaves either the old file or the
new one. Output directories are built in a temporary sibling directory and renamed into
place at the end (:func:`atomic_directory`).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import yaml


_UMASK = os.umask(0)
os.umask(_UMASK)


def _fsync_dir(path: Path) -> None:
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
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
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
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution).

    Raises:
        CheckpointError: the file is missing or cannot be read as a safe checkpoint.
    """
    import torch

    from dnas.errors import CheckpointError

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


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False, kind: str | None = None,
                     inputs: tuple = ()) -> Iterator[Path]:
    """Build a directory in a temporary sibling and rename it into place on success.

    On an exception the temporary directory is removed and ``target`` is untouched. The
    output's lock (:mod:`dnas.runlock`) is held throughout: a second process given the
    same ``target`` is refused. A ``target`` that is a symbolic link is followed: the
    directory it points to is written (and with ``overwrite`` replaced); the link stays.

    Args:
        target: the directory to create.
        overwrite: replace an existing ``target``; otherwise an existing non-empty
            target raises :class:`dnas.errors.DnasError`.
        kind: the kind of output (see :mod:`dnas.outputs`): its marker is written into
            the directory, and ``overwrite`` only replaces a directory of that kind.
        inputs: paths the command reads; a target holding one is never replaced.

    Yields:
        The temporary directory to write into.
    """
    from dnas.outputs import check_replace, check_writable_target
    from dnas.runlock import output_lock

    target = check_writable_target(target)  # absolute: ``--out .`` has a name
    if kind is not None:  # refused before the lock too (``--out .``: no lock file beside the working directory)
        check_replace(target, kind, overwrite, inputs)
    with output_lock(target):  # one process at a time builds and renames into ``target``
        yield from _build_directory(target, overwrite, kind, inputs)


def _build_directory(target: Path, overwrite: bool, kind: str | None, inputs: tuple) -> Iterator[Path]:
    """The body of :func:`atomic_directory` (under the output's lock)."""
    from dnas.errors import DnasError
    from dnas.outputs import check_replace, write_marker

    if kind is not None:
        check_replace(target, kind, overwrite, inputs)
    elif target.exists() and not overwrite and any(target.iterdir()):
        raise DnasError(f"{target}: output directory exists and is not empty (pass --overwrite)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise DnasError(f"{target}: cannot create the output directory ({exc.strerror})") from None
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if kind is not None:
            write_marker(tmp, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        try:
            os.replace(target, old)  # an empty directory is replaced by rename
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if old.exists() and not target.exists():
                os.replace(old, target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)
