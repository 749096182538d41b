"""One process per output directory: an OS lock on a lock file beside it.

A command that writes an output (a ``dnas-search`` or ``dnas-retrain`` run, a
``dnas-derive`` output, a latency table) first takes an exclusive ``fcntl.flock`` on
``.NAME.lock`` in the output's parent directory, and holds it until it ends. A second
process given the same output is refused with one line naming the holder's pid. The
kernel drops the lock when its process ends in any way (SIGKILL included), so a killed
run can be resumed at once; the lock file itself is removed by the process that held
the lock (a killed one leaves an unlocked, harmless file that the next run reuses).

Only rank 0 of a distributed run takes the lock (every rank names the same directory).
On a file system without ``flock`` the output is written unlocked, with a warning.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

from dnas.errors import DnasError
from dnas.io import real_target

log = logging.getLogger(__name__)
_HELD: dict[Path, "_Lock"] = {}
_EXIT_HOOK: list[bool] = []  # non-empty once release_all is registered to run at exit


class _Lock:
    """A held lock: its file descriptor, its path, the directories made for it, a count of holders."""

    def __init__(self, fd: int, path: Path, made: list[Path]) -> None:
        self.fd, self.path, self.made, self.count = fd, path, made, 1

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # still locked: nobody else can hold this inode now
        os.close(self.fd)
        for d in reversed(self.made):  # parents made for the lock file, if still empty
            with contextlib.suppress(OSError):
                d.rmdir()


def lock_path(target: str | os.PathLike) -> Path:
    """``PARENT/.NAME.lock`` of an output (a symbolic link followed)."""
    target = real_target(target)
    return target.parent / f".{target.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()[:200]
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"pid {pid}" + (f", {command}" if command else "") if pid.isdigit() else "another process"


def _make_parents(directory: Path) -> list[Path]:
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            pass
    return made


def acquire(target: str | os.PathLike, what: str = "--out") -> Path | None:
    """Take the lock of output ``target`` for this process (again: counted, see :func:`release`).

    Returns:
        The lock file, or ``None`` where no lock is taken (not rank 0, no ``fcntl``,
        a file system without ``flock``).

    Raises:
        DnasError: another process holds it (the message names its pid).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return None
    path = lock_path(target)
    held = _HELD.get(path)
    if held is not None:
        held.count += 1
        return path
    made: list[Path] = []
    for _ in range(20):  # the holder may remove the file (or its new parent) between our open and flock
        made += _make_parents(path.parent)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                for d in reversed(made):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                raise DnasError(f"{what} {target}: in use by another dnas process ({_holder(path)}; lock "
                                f"{path}); wait for it to end, or pick another {what}") from None
            log.warning("%s: cannot lock (%s); %s %s is written without a lock", path, exc.strerror, what, target)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed this file: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {Path(sys.argv[0]).name} {' '.join(sys.argv[1:])[:60]}\n".encode())
        if not _EXIT_HOOK:  # a library user's process, too, leaves no lock file
            atexit.register(release_all)
            _EXIT_HOOK.append(True)
        _HELD[path] = _Lock(fd, path, made)
        return path
    raise DnasError(f"{what} {target}: cannot take the lock {path} (it keeps changing)")


def release(path: Path | None) -> None:
    """Drop one hold of the lock file ``path`` (from :func:`acquire`); the last one unlocks it."""
    held = _HELD.get(path) if path is not None else None
    if held is None:
        return
    held.count -= 1
    if held.count <= 0:
        del _HELD[path]
        held.release()


def release_all() -> None:
    """Unlock every output this process holds (a command's end)."""
    for path in list(_HELD):
        _HELD.pop(path).release()


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, what: str = "--out") -> Iterator[None]:
    """Hold the lock of output ``target`` for the ``with`` block."""
    path = acquire(target, what)
    try:
        yield
    finally:
        release(path)
