"""Shared CLI plumbing: one-line errors with exit status 2, logging set-up.

Every console script's ``main(argv=None)`` is wrapped by :func:`cli_entry`, so a
:class:`dnas.errors.DnasError` (bad input) becomes one line on stderr and exit status 2,
never a traceback. Argument-parsing errors also exit 2 (argparse's convention). The
output locks a command took (:mod:`dnas.runlock`) are released when it returns.
"""
from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, Sequence

from dnas.errors import DnasError

log = logging.getLogger("dnas")


def cli_entry(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[..., int]]:
    """Decorate a ``main(argv)`` so user errors exit 2 with one line on stderr."""

    def wrap(fn: Callable[[Sequence[str] | None], int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def main(argv: Sequence[str] | None = None) -> int:
            try:
                rc = int(fn(argv) or 0)
                sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
                return rc
            except DnasError as exc:
                print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
                return 2
            except BrokenPipeError:  # ``... | head``: the reader left; not an error of ours
                _silence_stdout()
                return 0
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            except (RuntimeError, MemoryError) as exc:  # an allocator failure: one line, the size and where
                from dnas.memory import allocation_error

                err = allocation_error(exc)
                if err is None:
                    raise
                print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                return 2
            except OSError as exc:  # a file system refusal (read-only, full disk, permissions)
                if exc.filename is None:
                    raise
                where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
                print(f"{prog}: error: {where}: {exc.strerror or exc}", file=sys.stderr)
                return 2
            finally:
                from dnas.runlock import release_all

                release_all()

        return main

    return wrap


def finite_float(text: str) -> float:
    """``argparse`` type of a number option: a finite float (``inf`` and ``nan`` are refused
    with argparse's one error line naming the option and the value)."""
    import argparse
    import math

    from dnas.errors import brief

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {brief(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {brief(text)}")
    return value


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    An error raised in a DataLoader worker comes back wrapped in the worker's traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): only
    the original message is kept.
    """
    msg = str(exc)
    if "Original Traceback" in msg:
        last = [ln for ln in msg.splitlines() if ln.strip()][-1].strip()
        name = type(exc).__name__
        for prefix in (f"{type(exc).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                last = last[len(prefix):]
        msg = last
    return " ".join(msg.split("\n"))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def setup_logging(verbose: bool = False) -> None:
    """Plain INFO logging to stderr (DEBUG with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def add_run_arguments(p, out_default: str, recipe_help: str = "recipe YAML") -> None:
    """The options every training command shares (recipe, data, run dir, resume, overrides)."""
    p.add_argument("--recipe", help=recipe_help)
    p.add_argument("--data", help="data set spec, e.g. synthetic or market1501:/data/market")
    p.add_argument("--out", help=f"run directory (default {out_default}); a symbolic link is followed (with "
                                 "--overwrite the directory it points to is replaced, the link stays); one process "
                                 "at a time (a second one is refused, naming the first one's pid)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in --out, replacing a run of the same command already there (never "
                        "another kind of directory)")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume on CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--verify-images", action="store_true",
                   help="first open every image of --data once (in parallel) and stop with a list of the "
                        "unreadable ones, if any")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")


def check_run_dir(run_dir, kind: str, args, inputs=(), started_files=("checkpoint-last.pt",)) -> bool:
    """Check a training command's run directory before any work is done.

    With ``--resume``: the directory must be a run of this command. Otherwise ``--out``
    must be new, empty, an unfinished start of the same command, or (with
    ``--overwrite``) a run of the same command; never a file, the working directory, a
    directory holding an input, or a directory some other program wrote. Then the
    directory's lock is taken (:mod:`dnas.runlock`; held until the command ends; a
    directory another process runs in is refused, naming its pid) and the checks are
    made again (another process may have ended there meanwhile).

    Returns:
        ``True`` when an existing run is to be replaced (done once the inputs validate).
    """
    from pathlib import Path

    from dnas.outputs import COMMANDS, check_replace, output_kind, require_kind
    from dnas.runlock import acquire

    if args.resume:
        path = Path(args.resume)
        if not path.is_dir():
            raise DnasError(f"--resume {path}: run directory not found")
        require_kind(path, (kind,), f"{COMMANDS[kind]} --resume")
        acquire(path, "--resume")
        return False
    run_dir = Path(run_dir)

    def check() -> bool:
        if (not args.overwrite and run_dir.is_dir() and output_kind(run_dir) == kind
                and not any((run_dir / f).exists() for f in started_files)):
            return False  # an unfinished start of the same command: continue into it
        if not args.overwrite and output_kind(run_dir) == kind:
            raise DnasError(f"{run_dir}: holds a run already; continue it with --resume {run_dir}, "
                            "pick another --out, or pass --overwrite")
        return check_replace(run_dir, kind, args.overwrite, inputs)

    check()
    acquire(run_dir, "--out")
    return check()


def resolve_config(args, cls, *, command: str, run_kind: str, recipe_folder: str, direct: dict,
                   default_recipe=None, run_config=None, validate: bool = True):
    """The config of a training command: the recipe (``--recipe`` path or shipped name,
    else ``default_recipe``; with ``--resume`` the run's ``config.yaml``; ``run_config``
    when given), then ``--set`` overrides, then the command's direct flags (``direct``:
    flag values that are not ``None``), all through the same type checks.

    With ``--resume`` no recipe and no direct flag is accepted: a run continues with its
    own config, changed only by ``--set``.
    """
    from pathlib import Path

    from dnas.config import load_config

    direct = {k: v for k, v in direct.items() if v is not None}
    if run_config is not None:
        recipe = Path(run_config)
    elif args.resume:
        if args.recipe or direct:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in direct) or "--recipe"
            raise DnasError(f"--resume continues a run with its own config ({flags} given); "
                            "use --set to change a key")
        from dnas.outputs import require_kind

        require_kind(args.resume, (run_kind,), f"{command} --resume")
        recipe = Path(args.resume) / "config.yaml"
        if not recipe.is_file():
            raise DnasError(f"{args.resume}: not a run directory (no config.yaml)")
    elif args.recipe:
        from dnas.resources import find_data_file

        recipe = find_data_file(args.recipe, recipe_folder, ".yaml")
    else:
        recipe = default_recipe
    if args.deterministic:
        direct["deterministic"] = True
    cfg = load_config(cls, recipe, args.overrides, direct)
    if validate:
        cfg.validate()
    return cfg
