"""``dnas-latency``: profile, validate and inspect latency lookup tables.

Subcommands (see ``dnas-latency SUBCOMMAND --help``):

- ``profile``: measure every entry a search space can produce and write a table;
- ``validate``: measure sampled derived networks end to end, compare with the table
  sums (Spearman rho, MAPE, within +-10%); with ``--save-calibration``, store the fitted
  linear calibration in the table (never without it);
- ``show``: a table's provenance, how complete it is, and a summary per kind;
- ``time-net``: time one whole fixed network (an ``arch.yaml``, a ``dnas-derive``
  directory, anything :func:`dnas.build_model` takes) with the tables' protocol, no
  table needed.

Progress bars are drawn only when stderr is a terminal (and never with
``--no-progress``).

Errors in the input (unknown space, missing table, a table made for another space, a
missing key) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from dnas.cli.common import cli_entry, finite_float
from dnas.errors import DnasError
from dnas.latency.table import PROVIDERS, RUNTIMES

PROTOCOL_HELP = """Protocol: modules run in eval mode (inference latency: BN running statistics,
DCS-Attention's deterministic mask) under torch.no_grad. On CUDA each module is
captured in a CUDA graph (repeated inside the graph so one replay lasts at least
--min-replay-ms), warmed up, and timed in --windows windows with CUDA events; on CPU
the same in eager mode with perf_counter (--threads intra-op threads). With --runtime
onnxruntime each module is exported to ONNX (opset 17, fp32, the table's batch and
resolution) and run in an onnxruntime session on --provider (all graph optimisations on,
--threads intra-op threads, inputs and outputs bound on the device), with the same
warm-up and windows; the provider must be there (cuda and tensorrt: onnxruntime-gpu and
a GPU), else the command stops with one line. The median of the windows is one sample; entries are visited in --passes shuffled round-robin passes and
the table holds the median over passes. Partial results go to the incomplete table
TABLE.partial.csv (+ .partial.meta.json) every --checkpoint-every seconds, on Ctrl-C and
when --time-limit runs out; rerunning the same command continues it (commit it to let
the next machine continue) and writes TABLE.csv once every entry has all its passes."""

EXAMPLES = """examples:
  dnas-latency profile --supernet xlarge --dry-run
  dnas-latency profile --supernet tiny --device cpu --batch 8 --dtype fp32 --num-classes 10 60 \\
      --passes 5 --out latency_tables/cpu_tiny_b8_fp32
  dnas-latency profile --supernet tiny --runtime onnxruntime --provider cpu --batch 8 --num-classes 10 60 \\
      --passes 5 --out latency_tables/cpu_tiny_b8_fp32_ort
  dnas-latency profile --supernet xlarge --device cuda --batch 64 --dtype bf16 --channels-last \\
      --out latency_tables/h200_xlarge_b64_bf16
  dnas-latency validate --supernet xlarge --table latency_tables/h200_xlarge_b64_bf16.csv --archs 100 \\
      --out report.json --plot scatter.png
  dnas-latency show latency_tables/cpu_tiny_b8_fp32.csv
  dnas-latency validate --supernet tiny --table cpu_tiny_b8_fp32 --runtime onnxruntime --archs 100
                         # the eager table's sums against whole nets run in onnxruntime
  dnas-latency time-net runs/derived --batch 8 --dtype fp32 --device cpu --json
  dnas-latency time-net runs/derived --batch 8 --runtime onnxruntime --provider cpu"""


def _add_runtime(p, default_help: str) -> None:
    p.add_argument("--runtime", choices=RUNTIMES, help=f"what the modules run in: eager PyTorch or onnxruntime "
                                                      f"(default: {default_help})")
    p.add_argument("--provider", choices=PROVIDERS,
                   help="onnxruntime's execution provider (default: cuda with --device cuda, else cpu); cuda and "
                        "tensorrt need onnxruntime-gpu and a GPU")


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="measure every entry of a space into a table",
                       description=textwrap.fill(
                           "Measure every latency-table entry a search space can produce (stem, every block at "
                           "every in/mid/out width combination, DCS-Attention at each width, head, classifier) "
                           "and write TABLE.csv + TABLE.meta.json atomically.", 88),
                       epilog=PROTOCOL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", required=True, help="space name (tiny, fbnetv2, large, xlarge) or YAML path")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32", help="dtype (default fp32)")
    p.add_argument("--out", help="table path: NAME or NAME.csv (NAME.meta.json is written next to it)")
    p.add_argument("--dry-run", action="store_true", help="print the number of entries per kind and exit")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--num-classes", type=int, nargs="+", help="classifier sizes to cover (default: the space's)")
    p.add_argument("--passes", type=int, default=3, help="shuffled round-robin passes (default 3)")
    p.add_argument("--windows", type=int, default=7, help="timing windows per sample (default 7)")
    p.add_argument("--window-ms", type=finite_float, help="length of one window in ms (default 2 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls/replays (default 3)")
    p.add_argument("--min-replay-ms", type=finite_float, default=0.2, help="CUDA: minimum duration of one graph replay")
    p.add_argument("--threads", type=int, default=1, help="CPU: intra-op threads while timing (0: the runtime's "
                                                          "default)")
    _add_runtime(p, "eager")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed")
    p.add_argument("--checkpoint-every", type=finite_float, default=30.0, help="seconds between partial writes")
    p.add_argument("--restart", action="store_true", help="ignore (and replace) a partial profile")
    p.add_argument("--time-limit", type=finite_float, metavar="SECONDS",
                   help="start no measurement after this many seconds; what is done stays in the incomplete "
                        "table TABLE.partial.csv, which the same command continues later")
    p.add_argument("--overwrite", action="store_true", help="replace an existing table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="compare table sums with end-to-end measurements",
                       description="Sample random architectures (plus min and max), build the plain derived nets, "
                                   "measure them end to end with the table's protocol and report Spearman rho, MAPE "
                                   "and the fraction within +-10%, raw and after a fitted linear calibration "
                                   "a + b * sum. The table is never written unless --save-calibration is given "
                                   "(then the calibration goes into its .meta.json, and searches apply it). A "
                                   "table profiled on another machine is refused unless --force.")
    p.add_argument("--supernet", required=True, help="space name or YAML path (must match the table's hash)")
    p.add_argument("--table", required=True, help="table path (NAME or NAME.csv), or a shipped table")
    p.add_argument("--archs", type=int, default=100, help="random architectures (default 100; min and max added)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--plot", help="write a scatter plot (PNG) of predicted vs measured here")
    p.add_argument("--passes", type=int, help="round-robin passes (default: the table's)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the table's first)")
    p.add_argument("--save-calibration", action="store_true",
                   help="store the fitted calibration in the table's .meta.json (searches then apply it)")
    p.add_argument("--force", action="store_true",
                   help="measure even though this machine is not the one the table was profiled on")
    _add_runtime(p, "the table's; another runtime compares its sums with whole nets run there")
    p.add_argument("--no-store", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="provenance and summary of a table",
                       description="Print a table's provenance and its entries per kind (count, min/median/max ms).")
    p.add_argument("table", help="table path (NAME or NAME.csv), or a shipped table (latency_tables/NAME.csv)")
    p.add_argument("--compare", help="another table of the same space: median relative difference per kind")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _add_time_net(sub) -> None:
    p = sub.add_parser("time-net", help="time one whole fixed network (no table needed)",
                       description="Time the forward pass of one whole network with the tables' protocol "
                                   "(eval mode, no_grad; CUDA graphs on CUDA, eager windows on CPU; the median "
                                   "of the windows per pass, the median over --passes passes, and their spread). "
                                   "ARCH is anything dnas.build_model takes (an arch.yaml, a backbone YAML) or a "
                                   "dnas-derive output directory (its weights are loaded).",
                       epilog=PROTOCOL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", metavar="ARCH_OR_DERIVED_DIR", help="arch/backbone YAML path, or a dnas-derive directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available; default)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32", help="dtype (default fp32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--height", type=int, help="input height (default: the arch's)")
    p.add_argument("--width", type=int, help="input width (default: the arch's)")
    p.add_argument("--passes", type=int, default=3, help="passes (default 3; median and spread over them)")
    p.add_argument("--windows", type=int, default=7, help="timing windows per pass (default 7)")
    p.add_argument("--window-ms", type=finite_float, help="length of one window in ms (default 2 on CUDA, 5 on CPU)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up calls/replays (default 3)")
    p.add_argument("--threads", type=int, default=1, help="CPU: intra-op threads while timing (0: the runtime's "
                                                          "default)")
    _add_runtime(p, "eager")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dnas-latency", description="Profile, validate and inspect latency "
                                     "lookup tables (the LAT of the search loss).", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{profile,validate,show,time-net}")
    _add_profile(sub)
    _add_validate(sub)
    _add_show(sub)
    _add_time_net(sub)
    return parser


def _check_file_target(path: str | Path, option: str) -> None:
    """Refuse an output file path that is a directory or cannot be written, before any work."""
    from dnas.outputs import check_writable_target

    p = Path(path)
    if p.is_dir():
        raise DnasError(f"{option} {path}: is a directory; give a file name")
    check_writable_target(p.parent, option, shown=p)


def _check_table_target(csv_path: Path, overwrite: bool) -> None:
    """``profile --out``: writable, and ``--overwrite`` only replaces a latency table."""
    from dnas.latency.table import table_paths

    _check_file_target(csv_path, "--out")
    meta_path = table_paths(csv_path)[1]
    if meta_path.is_dir():
        raise DnasError(f"--out {meta_path}: is a directory; give another table name")
    if overwrite and csv_path.is_file():
        try:
            is_table = "space_hash" in json.loads(meta_path.read_text())
        except (OSError, ValueError, TypeError):
            is_table = False
        if not is_table:
            raise DnasError(f"--out {csv_path}: exists and is not a latency table written by dnas-latency "
                            "profile (no readable .meta.json); --overwrite only replaces a table")


def cmd_profile(args: argparse.Namespace) -> int:
    from dnas.latency.keys import count_by_kind, space_entries
    from dnas.latency.table import complete_path
    from dnas.space import load_space

    space = load_space(args.supernet)
    for n in args.num_classes or ():
        if n < 1:
            raise DnasError(f"--num-classes {n}: expected a positive integer")
    if args.dry_run:
        counts = count_by_kind(space_entries(space, num_classes=args.num_classes))
        print(f"space {space.name} (hash {space.structure_hash()[:12]}): {sum(counts.values())} entries")
        for kind, n in counts.items():
            print(f"  {kind:<11} {n}")
        return 0
    if not args.out:
        raise DnasError("profile: --out TABLE is required (or pass --dry-run)")
    csv_path = complete_path(args.out)
    if csv_path.is_file() and not args.overwrite:
        raise DnasError(f"{csv_path}: table exists (pass --overwrite to replace it)")
    for name in ("passes", "windows", "batch"):
        if getattr(args, name) < 1:
            raise DnasError(f"--{name} {getattr(args, name)}: expected >= 1")
    for name, value, least in (("threads", args.threads, 0), ("warmup", args.warmup, 0)):
        if value < least:
            raise DnasError(f"--{name} {value}: expected an integer >= {least}")
    for name, value in (("window-ms", args.window_ms), ("min-replay-ms", args.min_replay_ms),
                        ("checkpoint-every", args.checkpoint_every)):
        if value is not None and not value > 0:
            raise DnasError(f"--{name} {value}: expected a positive number")
    if args.time_limit is not None and not args.time_limit >= 0:
        raise DnasError(f"--time-limit {args.time_limit}: expected a number of seconds >= 0")
    from dnas.latency.onnx_timing import check_timing, resolve_runtime
    from dnas.latency.timing import TimingConfig

    device, runtime, provider = resolve_runtime(args.device, args.runtime, args.provider)
    cfg = TimingConfig(device=device, dtype=args.dtype, batch=args.batch,
                       channels_last=args.channels_last, warmup=args.warmup, windows=args.windows,
                       window_ms=args.window_ms, min_replay_ms=args.min_replay_ms, threads=args.threads,
                       runtime=runtime, provider=provider)
    check_timing(cfg)  # a missing provider or CUDA: before anything is written
    _check_table_target(csv_path, args.overwrite)
    from dnas.runlock import acquire

    acquire(csv_path.with_name(csv_path.name[: -len(".csv")]), "--out")  # held until the command ends
    if csv_path.is_file() and not args.overwrite:  # again, now that no other profile can write it
        raise DnasError(f"{csv_path}: table exists (pass --overwrite to replace it)")
    from dnas.latency.profile import profile_space

    if args.restart:
        from dnas.latency.profile import remove_partial

        remove_partial(args.out)
    table = profile_space(space, args.out, cfg, passes=args.passes, seed=args.seed, num_classes=args.num_classes,
                          resume=not args.restart, checkpoint_every_s=args.checkpoint_every,
                          progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                          time_limit_s=args.time_limit)
    if not table.is_complete:
        pr = table.progress()
        print(f"stopped at the time limit ({args.time_limit:g} s): wrote the incomplete table {table.source} "
              f"({pr['measured']} of {pr['total']} entries measured, {pr['finished']} with all {pr['passes']} passes, "
              f"{100 * pr['fraction']:.1f}% done); continue it with: {table.continue_command()}")
        return 0
    print(f"wrote {table.source} ({len(table)} entries, {cfg.method}, {table.meta['device_name']})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from dnas.latency.table import LatencyTable, find_table, table_paths
    from dnas.latency.onnx_timing import table_timing
    from dnas.latency.validate import format_report, plot_report, store_calibration, validate_table
    from dnas.space import load_space

    space = load_space(args.supernet)
    table = LatencyTable.load(find_table(args.table), space)
    if args.archs < 1:
        raise DnasError(f"--archs {args.archs}: expected >= 1")
    if args.passes is not None and args.passes < 1:
        raise DnasError(f"--passes {args.passes}: expected >= 1")
    if args.num_classes is not None and args.num_classes < 1:
        raise DnasError(f"--num-classes {args.num_classes}: expected a positive integer")
    if args.save_calibration and args.no_store:
        raise DnasError("--save-calibration and --no-store disagree: give one of them")
    for option, path in (("--out", args.out), ("--plot", args.plot)):
        if path:
            _check_file_target(path, option)  # before minutes of measuring
    report = validate_table(space, table, archs=args.archs, seed=args.seed, passes=args.passes,
                            num_classes=args.num_classes, progress=not args.no_progress, force=args.force,
                            timing=table_timing(table, args.runtime, args.provider))
    print(format_report(report))
    if args.save_calibration:
        store_calibration(table, report)
        print(f"stored the calibration in {table_paths(table.source)[1]}")
    else:
        print("the table was not changed (pass --save-calibration to store this calibration in it)")
    if args.out:
        from dnas.io import atomic_write_json

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, report)
        print(f"wrote {args.out}")
    if args.plot:
        print(f"wrote {plot_report(report, args.plot)}")
    return 0


def _compare(table, other) -> dict[str, float]:
    common = set(table.entries) & set(other.entries)
    if not common:
        raise DnasError(f"{other.source}: no keys in common with {table.source}")
    by_kind: dict[str, list[float]] = {}
    for key in common:
        a, b = table.entries[key], other.entries[key]
        by_kind.setdefault(key.split("/", 1)[0], []).append(abs(b - a) / a if a > 0 else 0.0)
    out = {k: statistics.median(v) for k, v in by_kind.items()}
    out["all"] = statistics.median([x for v in by_kind.values() for x in v])
    return out


def cmd_show(args: argparse.Namespace) -> int:
    from dnas.latency.table import LatencyTable, find_table

    table = LatencyTable.load(find_table(args.table), allow_incomplete=True)
    m = table.meta
    summary = table.summary()
    progress = table.progress()
    comparison = None
    if args.compare:
        other = LatencyTable.load(find_table(args.compare))
        if other.meta.get("space_hash") != m.get("space_hash"):
            raise DnasError(f"--compare {args.compare}: a table of space {other.meta.get('space')!r} (hash "
                            f"{str(other.meta.get('space_hash'))[:12]}), {table.source} covers "
                            f"{m.get('space')!r} (hash {str(m.get('space_hash'))[:12]}); compare tables of one space")
        comparison = _compare(table, other)
    if args.json:
        print(json.dumps({"meta": m, "complete": table.is_complete, "progress": progress, "summary": summary,
                          "compare": comparison, "continue": None if table.is_complete else table.continue_command()},
                         indent=2))
        return 0
    proto = m.get("protocol", {})
    print(f"table     {table.source}")
    print(f"space     {m.get('space')} (hash {str(m.get('space_hash'))[:12]}), input {m.get('input_size')}")
    print(f"device    {m.get('device_name')} ({m.get('device')}), driver {m.get('driver')}, "
          f"CUDA {m.get('cuda')}, torch {m.get('torch')}")
    print(f"settings  batch {m.get('batch')}, {m.get('dtype')}, channels_last {m.get('channels_last')}, "
          f"method {m.get('method')}, {proto.get('passes')} passes x {proto.get('windows')} windows, "
          f"threads {proto.get('threads')}")
    ort = m.get("onnxruntime") or {}
    runtime = (f"onnxruntime {ort.get('version', '?')}, provider {m.get('provider')} "
               f"({ort.get('execution_provider', '?')}), {ort.get('graph_optimization_level', '?')}, intra-op threads "
               f"{ort.get('intra_op_num_threads', '?')}" if table.runtime == "onnxruntime"
               else "eager PyTorch" + ("" if m.get("runtime") else " (no runtime recorded: an eager table)"))
    print(f"runtime   {runtime}")
    sessions = f" (profiled in {len(m['sessions'])} sessions, from {m['sessions'][0]})" if m.get("sessions") else ""
    print(f"date      {m.get('date')}{sessions}  mode: {m.get('mode', 'eval')}")
    if table.is_complete:
        print(f"complete  yes: {progress['measured']} entries, {progress['passes']} passes each")
    else:
        print(f"complete  NO: {progress['measured']} of {progress['total']} entries measured, {progress['missing']} "
              f"missing, {progress['finished']} with all {progress['passes']} passes "
              f"({100 * progress['fraction']:.1f}% "
              f"of the measurements); searches refuse it until it is complete")
        print(f"continue  {table.continue_command()}")
    cal = m.get("calibration")
    if cal:
        print(f"calibr.   measured ~= {cal['a']:.5g} + {cal['b']:.5g} * sum  (fitted {cal.get('fitted_on')}, "
              f"{cal.get('n_archs')} archs, raw rho {cal.get('raw', {}).get('spearman', float('nan')):.3f})")
    else:
        print("calibr.   none (run dnas-latency validate)")
    print(f"\n{'kind':<11} {'count':>6} {'min ms':>10} {'median ms':>10} {'max ms':>10}")
    for kind, s in summary.items():
        print(f"{kind:<11} {s['count']:>6} {s['min']:>10.4g} {s['median']:>10.4g} {s['max']:>10.4g}")
    print(f"{'total':<11} {len(table):>6}")
    if comparison:
        print(f"\nmedian |relative difference| vs {args.compare}:")
        for kind, v in comparison.items():
            print(f"  {kind:<11} {100 * v:.2f}%")
    return 0


def cmd_time_net(args: argparse.Namespace) -> int:
    from dnas.latency.timing import TimingConfig
    from dnas.latency.whole_net import format_net_timing, time_net

    for name in ("passes", "windows", "batch"):
        if getattr(args, name) < 1:
            raise DnasError(f"--{name} {getattr(args, name)}: expected >= 1")
    for name, value in (("height", args.height), ("width", args.width)):
        if value is not None and value < 1:
            raise DnasError(f"--{name} {value}: expected a positive integer")
    for name, value, least in (("threads", args.threads, 0), ("warmup", args.warmup, 0)):
        if value < least:
            raise DnasError(f"--{name} {value}: expected an integer >= {least}")
    if args.window_ms is not None and not args.window_ms > 0:
        raise DnasError(f"--window-ms {args.window_ms}: expected a positive number")
    from dnas.latency.onnx_timing import resolve_runtime

    device, runtime, provider = resolve_runtime(args.device, args.runtime, args.provider)
    cfg = TimingConfig(device=device, dtype=args.dtype, batch=args.batch,
                       channels_last=args.channels_last, warmup=args.warmup, windows=args.windows,
                       window_ms=args.window_ms, threads=args.threads, runtime=runtime, provider=provider)
    size = (args.height, args.width) if args.height or args.width else None
    report = time_net(args.arch, cfg, passes=args.passes, size=size)
    print(json.dumps(report, indent=2) if args.json else format_net_timing(report))
    return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return {"profile": cmd_profile, "validate": cmd_validate, "show": cmd_show,
            "time-net": cmd_time_net}[args.command](args)


main = cli_entry("dnas-latency")(_main)

if __name__ == "__main__":
    sys.exit(main())
