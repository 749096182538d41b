"""Output directories a command owns, and what ``--overwrite`` may replace.

Every directory a command creates (a ``dnas-derive`` output, a ``dnas-search`` run, a
``dnas-retrain`` run) holds a small marker file, :data:`MARKER`, naming its kind and
the command that wrote it. ``--overwrite`` only replaces a directory of the same kind
(recognised by its marker, or for directories written before markers existed, by its
files); it never replaces the working directory or one of its parents, a directory that
holds an input of the command, a file, or a directory some other program wrote. Each
refusal is a :class:`dnas.errors.DnasError` naming the path and what to do instead.
:func:`atomic_directory` builds such a directory in a temporary sibling under the
output's lock (:mod:`dnas.runlock`) and renames it into place. No paper counterpart.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from dnas.errors import DnasError
from dnas.io import UMASK, atomic_write_json, fsync_dir, real_target
from dnas.runlock import output_lock
from dnas.strict_yaml import read_yaml
from dnas.version import __version__

MARKER = ".dnas-output.json"
#: the kinds of output, the one vocabulary: a directory's marker and a training run's checkpoints name them
DERIVED, SEARCH_RUN, REID_RUN, IMAGENET_RUN, FIGURES = "derived", "search-run", "reid-run", "imagenet-run", "figures"
COMMANDS = {DERIVED: "dnas-derive", SEARCH_RUN: "dnas-search", REID_RUN: "dnas-retrain reid",
            IMAGENET_RUN: "dnas-retrain imagenet", FIGURES: "dnas-visualize"}
DESCRIPTIONS = {DERIVED: "a dnas-derive output (an exported network)", SEARCH_RUN: "a dnas-search run",
                REID_RUN: "a dnas-retrain reid run", IMAGENET_RUN: "a dnas-retrain imagenet run",
                FIGURES: "a dnas-visualize output (figures)"}
#: what checkpoints named their run before they used the output kinds (still read)
LEGACY_RUN_KINDS = {"search": SEARCH_RUN, "retrain-reid": REID_RUN, "retrain-imagenet": IMAGENET_RUN}


def run_kind(name: str) -> str:
    """The kind of run ``name`` stands for: an output kind, or a checkpoint's older name for one."""
    return LEGACY_RUN_KINDS.get(name, name)


def describe(kind: str | None) -> str:
    """``"a dnas-search run"`` etc.; ``None``: a directory dnas did not write."""
    return DESCRIPTIONS.get(kind or "", "a directory dnas did not write")


def write_marker(directory: str | os.PathLike, kind: str) -> Path:
    """Write the marker naming ``kind`` into ``directory`` (atomically)."""
    return atomic_write_json(Path(directory) / MARKER, {"kind": kind, "command": COMMANDS[kind],
                                                        "dnas_version": __version__})


def _legacy_kind(directory: Path) -> str | None:
    """The kind of a directory written before markers existed, from its files."""
    if (directory / "config.yaml").is_file():
        try:
            cfg = read_yaml(directory / "config.yaml")
        except DnasError:
            return None
        if not isinstance(cfg, dict):
            return None
        if "supernet" in cfg and "a_lr" in cfg:
            return "search-run"
        if "arch" in cfg and "size" in cfg:
            return "imagenet-run"
        if "arch" in cfg and "p" in cfg:
            return "reid-run"
        return None
    if (directory / "top_k.csv").is_file() or all((directory / f).is_file()
                                                   for f in ("arch.yaml", "model.pt", "summary.json")):
        return "derived"
    return None


def output_kind(directory: str | os.PathLike) -> str | None:
    """The kind of an output directory (marker first, then its files), or ``None``."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    marker = directory / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if kind in COMMANDS else None
    return _legacy_kind(directory)


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_writable_target(target: str | os.PathLike, what: str = "--out", shown=None) -> Path:
    """Refuse a target that is a file, lies under a file, or in a directory we cannot write.

    Args:
        target: the directory to create or write in (a symbolic link: the directory it
            points to, see :func:`real_target`).
        what: the option's name in messages.
        shown: the path named in messages (default: ``target``).

    Returns:
        The absolute target path (a link resolved).
    """
    if shown is None and Path(target).is_symlink():
        shown = f"{target} (a link to {real_target(target)})"
    target = real_target(target)
    shown = target if shown is None else shown
    if target.exists() and not target.is_dir():
        where = "is a file" if shown == target else f"{target} is a file"
        raise DnasError(f"{what} {shown}: {where}, not a directory; pick another {what}")
    anc = target
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise DnasError(f"{what} {shown}: {anc} is a file, not a directory")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DnasError(f"{what} {shown}: cannot write in {anc} (permission denied)")
    return target


def check_replace(target: str | os.PathLike, kind: str, overwrite: bool, inputs: Iterable = (),
                  what: str = "--out") -> bool:
    """Check that ``target`` may become (or be replaced by) a ``kind`` output.

    Args:
        target: the output directory.
        kind: the kind the command writes (a key of :data:`COMMANDS`).
        overwrite: ``--overwrite`` was given.
        inputs: paths the command reads (a run, a space YAML, data roots): never replaced.
        what: the option's name in messages.

    Returns:
        ``True`` when ``target`` exists, is not empty and will be replaced.

    Raises:
        DnasError: the target is a file, unwritable, the working directory or a parent of
            it, holds an input, was written by something else, or exists without
            ``overwrite``.
    """
    target = check_writable_target(target, what)
    cwd = Path.cwd().resolve()
    real = target.resolve()
    if _is_within(cwd, real):
        raise DnasError(f"{what} {target}: is the working directory or a parent of it; give a new "
                        "directory name for the output")
    if not target.is_dir() or not any(target.iterdir()):
        return False
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        p = Path(os.path.abspath(inp))
        if p.exists() and _is_within(p.resolve(), real):
            raise DnasError(f"{what} {target}: holds the input {inp}; --overwrite never replaces an input, "
                            "pick another directory")
    have = output_kind(target)
    if have != kind:
        raise DnasError(f"{what} {target}: exists and is {describe(have)}; --overwrite only replaces "
                        f"{describe(kind)}; pick another {what} or remove it yourself")
    if not overwrite:
        raise DnasError(f"{what} {target}: exists ({describe(have)}); pass --overwrite to replace it")
    return True


def claim_run_dir(run_dir: str | os.PathLike, kind: str, replace: bool = False) -> Path:
    """Create (or, with ``replace``, empty) a run directory and mark it as ``kind``.

    Called by the training commands once every input has been validated, so a bad
    input never costs the old run. ``replace`` re-checks the kind before deleting.
    """
    run_dir = real_target(run_dir)
    if replace and run_dir.is_dir():
        have = output_kind(run_dir)
        if have != kind:
            raise DnasError(f"{run_dir}: is {describe(have)}, not {describe(kind)}; not replaced")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / MARKER).is_file():
        write_marker(run_dir, kind)
    return run_dir


def kept_run_note(run_dir: str | os.PathLike) -> str:
    """What a failed run leaves and how to take it up: ``--resume`` from its last
    checkpoint, or ``--overwrite`` (and, before its first checkpoint, the same ``--out``)."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoint-last.pt").is_file():
        return (f"the run directory {run_dir} is kept: continue it from its last checkpoint with --resume {run_dir} "
                "(--set changes a key), or start afresh with --overwrite")
    return (f"the run directory {run_dir} is kept (no checkpoint yet): start afresh with the same --out "
            "(or --overwrite)")


def require_kind(path: str | os.PathLike, kinds: tuple[str, ...], taker: str) -> str | None:
    """Refuse a directory of another kind than ``kinds`` with a line saying which command takes it.

    Args:
        path: the directory given to a command.
        kinds: the kinds the command takes.
        taker: the command and option in messages (``"dnas-derive RUN"``).

    Returns:
        The directory's kind (``None`` when not recognised; the caller reports that).
    """
    have = output_kind(path)
    if have is None or have in kinds:
        return have
    hints = {"search-run": f"export it with dnas-derive {path} --out DIR, or continue it with "
                           f"dnas-search --resume {path}",
             "reid-run": f"its exported network is {Path(path) / 'final'}; evaluate it with "
                         f"dnas-retrain reid --eval-only {path}, continue it with dnas-retrain reid --resume {path}",
             "imagenet-run": f"finetune from it with dnas-retrain reid --pretrained {path}, continue it with "
                             f"dnas-retrain imagenet --resume {path}",
             "derived": f"retrain it with dnas-retrain reid --arch {path}",
             "figures": "it holds figures, not a network; give the model they were drawn from"}
    raise DnasError(f"{path}: is {describe(have)}, but {taker} takes {' or '.join(describe(k) for k in kinds)}; "
                    f"{hints[have]}")


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
        kind: the kind of output (see :data:`COMMANDS`): its marker is written into
            the directory, and ``overwrite`` only replaces a directory of that kind.
        inputs: paths the command reads; a target holding one is never replaced.

    Yields:
        The temporary directory to write into.
    """
    target = check_writable_target(target)  # absolute: ``--out .`` has a name
    if kind is not None:  # refused before the lock too (``--out .``: no lock file beside the working directory)
        check_replace(target, kind, overwrite, inputs)
    with output_lock(target):  # one process at a time builds and renames into ``target``
        yield from _build_directory(target, overwrite, kind, inputs)


def _build_directory(target: Path, overwrite: bool, kind: str | None, inputs: tuple) -> Iterator[Path]:
    """The body of :func:`atomic_directory` (under the output's lock)."""
    if kind is not None:
        check_replace(target, kind, overwrite, inputs)
    elif target.exists() and not overwrite and any(target.iterdir()):
        raise DnasError(f"{target}: output directory exists and is not empty (pass --overwrite)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise DnasError(f"{target}: cannot create the output directory ({exc.strerror})") from None
    os.chmod(tmp, 0o777 & ~UMASK)
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
    fsync_dir(target.parent)
