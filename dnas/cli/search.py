"""``dnas-search``: the bilevel DCS-DNAS search (paper section 3.4; docs/method.md 2-5),
and ``--describe`` to inspect a search space."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from dnas.cli.common import add_run_arguments, check_run_dir, cli_entry, setup_logging
from dnas.cli.common import resolve_config as resolve_config_of
from dnas.outputs import SEARCH_RUN

EPILOG = """examples:
  dnas-search --supernet xlarge --describe                    # the space as a table
  dnas-search --supernet large --describe --json              # the space as one JSON object
  dnas-search --recipe search/tiny_synthetic.yaml --out runs/tiny
  dnas-search --recipe search/xlarge_msmt17.yaml --data msmt17:/data/msmt17 --out runs/xl
  dnas-search --supernet xlarge --data market1501:/data/market --set epochs=90 --set p=16
  dnas-search --resume runs/xl                                # continue a killed run exactly
  torchrun --nproc_per_node=8 -m dnas.search --recipe search/xlarge_msmt17.yaml --out runs/xl8

Recipe keys (override any with --set key=value; see dnas/search/config.py):
  supernet data epochs p k arch_fraction seed deterministic w_lr w_schedule w_milestones
  a_lr a_weight_decay warmup_epochs tau0 tau_decay label_smoothing triplet_margin ib_eta
  use_ibb attention attention_form latency_table latency_loss latency_alpha latency_beta latency_lambda
  latency_target_ms latency_profile_budget_s device amp channels_last compile grad_clip checkpoint_every ...

Latency cost (latency_table; the run's log, config.yaml latency_source and summary.json
latency_cost say which one it used):
  auto (default)  a table of this space for this device (cpu/cuda), shipped in latency_tables/
                  or cached; else, when the estimate (printed first) fits latency_profile_budget_s
                  (default 300 s on CPU, which covers tiny, 7200 s on CUDA), one profiled on first
                  use into $DNAS_CACHE/latency/DEVICE/ (default ~/.cache/dnas; resumable); else the
                  MACs of each op as a proxy, with a warning naming the dnas-latency profile command
                  that makes a real table
  PATH            that table (NAME.csv + NAME.meta.json)
  none            no latency cost (accuracy only)
  A resumed run keeps the cost it started with.

--data: synthetic (embedded, generated on first use), market1501:ROOT, dukemtmc:ROOT,
msmt17:ROOT, cuhk03:ROOT (cuhk03-labeled:ROOT for the labeled boxes).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnas-search", description="Search an architecture with DCS-DNAS (bilevel, latency-aware, IBB).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", help="space: tiny, fbnetv2, large, xlarge, or a YAML path")
    p.add_argument("--describe", action="store_true", help="print the space and exit")
    p.add_argument("--json", action="store_true", help="with --describe: one JSON object")
    add_run_arguments(p, "runs/search-SPACE-TIME",
                      "recipe YAML, or a shipped one by name (e.g. search/tiny_synthetic.yaml, tiny_synthetic)")
    return p


def resolve_config(args: argparse.Namespace):
    from dnas.search.config import SearchConfig

    return resolve_config_of(args, SearchConfig, command="dnas-search", run_kind=SEARCH_RUN,
                             recipe_folder="search",
                             direct={"supernet": args.supernet, "data": args.data, "seed": args.seed})


def describe_macs(space) -> dict:
    """MACs (fvcore, attention matmuls included) of the widest and narrowest archs, with and
    without the space's attention modules."""
    import warnings

    from dnas.model_stats import count_macs
    from dnas.models import PlainNet
    from dnas.space import SearchSpace

    out = {}
    for mode in ("max", "min"):
        arch = SearchSpace.from_dict(space.arch_from_indices(space.sample_indices(mode)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[mode] = {"with_attention": count_macs(PlainNet(arch), arch.input_size),
                         "without_attention": count_macs(PlainNet(arch, attention="none"), arch.input_size)}
    return out


@cli_entry("dnas-search")
def main(argv: Sequence[str] | None = None) -> int:
    from dnas.errors import DnasError
    from dnas.space import load_space

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.describe:
        import json

        if not args.supernet:
            raise DnasError("--describe needs --supernet NAME_OR_PATH")
        from dnas.memory import MemoryLimitError, check_build, describe_footprint, footprint

        space = load_space(args.supernet)
        try:
            check_build(space, 1)
            macs, too_big = describe_macs(space), None
        except MemoryLimitError as exc:  # too large to build here: the arithmetic alone
            macs, too_big = None, str(exc)
        if args.json:
            print(json.dumps({**space.to_json(), "macs": macs, "widest_net": footprint(space)}))
        else:
            print(space.describe())
            print(describe_footprint(space))
            if too_big:
                print(f"MACs not counted: {too_big}")
            for mode in ("max", "min") if macs else ():
                m = macs[mode]
                print(f"{mode} arch: {m['with_attention'] / 1e6:.1f} M MACs with its attention modules, "
                      f"{m['without_attention'] / 1e6:.1f} M without (fvcore, {space.input_size[1]}x"
                      f"{space.input_size[2]}, classifier included)")
        return 0
    if not (args.recipe or args.supernet or args.resume):
        raise DnasError("give --recipe, --supernet or --resume (see --help)")
    cfg = resolve_config(args)
    from dnas.memory import check_build

    space = cfg.load_space()  # once for the run
    check_build(space, 1, what="supernet")  # fail early on a bad space, attention setting or size
    run_dir = Path(args.resume or args.out or f"runs/search-{Path(cfg.supernet).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    table = cfg.latency_table if cfg.has_latency_cost and cfg.latency_table.lower() != "auto" else None
    replace = check_run_dir(run_dir, SEARCH_RUN, args, [args.recipe, cfg.supernet, table,
                                                           cfg.data.partition(":")[2]])
    if args.verify_images and int(os.environ.get("RANK", "0")) == 0:
        from dnas.data.verify import verify_from_config

        verify_from_config(cfg)
    from dnas.search.run import run_search

    t0 = time.time()
    summary = run_search(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress, overwrite=replace,
                         space=space)
    if int(os.environ.get("RANK", "0")) == 0:
        from dnas.search.result import format_result

        print(f"search finished in {time.time() - t0:.1f}s; run directory: {run_dir.resolve()}")
        found = summary.get("found")
        if found:
            print("\n".join(format_result(found)))
        print(f"final architecture: {(run_dir / 'final_arch.yaml').resolve()}")
        print(f"export it: dnas-derive {run_dir} --out {run_dir / 'derived'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
