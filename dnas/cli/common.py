"""Shared CLI plumbing: one-line errors with exit status 2, logging set-up.

Every console script's ``main(argv=None)`` is wrapped by :func:`cli_entry`, so a
:class:`dnas.errors.DnasError` (bad input) becomes one line on stderr and exit status 2,
never a traceback. Argument-parsing errors also exit 2 (argparse's convention).
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
                return int(fn(argv) or 0)
            except DnasError as exc:
                msg = " ".join(str(exc).split("\n"))
                print(f"{prog}: error: {msg}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return main

    return wrap


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
    p.add_argument("--out", help=f"run directory (default {out_default})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start afresh in --out, deleting a run already there")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (bit-exact resume on CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")
