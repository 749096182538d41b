"""``dnas-search``: the bilevel DCS-DNAS search (paper section 3.4; FORMULAS.md 2-5),
and ``--describe`` to inspect a search space."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from dnas.cli.common import cli_entry, setup_logging

EPILOG = """examples:
  dnas-search --supernet xlarge --describe            # the space as a table
  dnas-search --supernet large --describe --json      # the space as one JSON object
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnas-search", description="Search an architecture with DCS-DNAS (bilevel, latency-aware).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="space: tiny, fbnetv2, large, xlarge, or a YAML path")
    p.add_argument("--describe", action="store_true", help="print the space and exit")
    p.add_argument("--json", action="store_true", help="with --describe: one JSON object")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@cli_entry("dnas-search")
def main(argv: Sequence[str] | None = None) -> int:
    from dnas.errors import DnasError
    from dnas.space import load_space

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.describe:
        if not args.supernet:
            raise DnasError("--describe needs --supernet NAME_OR_PATH")
        space = load_space(args.supernet)
        print(json.dumps(space.to_json()) if args.json else space.describe())
        return 0
    raise DnasError("the search loop is not available yet; use --describe")


if __name__ == "__main__":
    sys.exit(main())
