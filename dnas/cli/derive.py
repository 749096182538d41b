"""``dnas-derive``: export a derived network (arch.yaml, model.pt, model.onnx,
summary.json, arch.dot) from a search run, from a space without search, or a fixed
backbone with attention (DCS-FB, paper section 3.3: ``--backbone NAME``)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from dnas.cli.common import cli_entry, setup_logging
from dnas.errors import DnasError

EPILOG = """examples:
  dnas-derive --supernet xlarge --sample max --num-classes 751 --out derived/xlarge-max
  dnas-derive --supernet tiny --sample random --seed 3 --out derived/tiny-r3
  dnas-derive --supernet tiny --sample random --latency-ms 1.62 --count 8 --out derived/band
                                 # 8 random archs within 1.62 ms +-3% of the table: a search's baselines
  dnas-derive --supernet fbnetv2 --sample max --attention self --out derived/fb-max-sa   # ablation variant
  dnas-derive runs/search1 --out derived/search1            # argmax of a search run
  dnas-derive runs/search1 --top-k 5 --out derived/top5     # the 5 most probable archs
  dnas-derive --backbone resnet50 --num-classes 751 --out derived/dcs-fb-r50     # DCS-FB (fixed backbone)
  dnas-derive --backbone mobilenetv2 --attention none --out derived/mbv2         # the plain backbone
  dnas-derive --backbone transreid --pretrained-file vit_b16.pth --out derived/tr # a local timm checkpoint

--latency-ms draws distinct uniformly random archs until --count of them lie within
--tolerance (relative) of the target on the lookup table (--latency-table; auto: the
shipped or cached table of the space for this CPU, never profiled); with --count > 1
they go to OUT/arch-00, OUT/arch-01, ... (and OUT/band.csv). Every summary.json holds
the arch's table latency (latency_ms, latency_table; lut_latency_ms, lut_source from a
run) whenever a measured table resolves and, when that table's device and runtime are
this machine's, the net's measured latency under the table's protocol and runtime
beside it (measured_latency_ms, measured_latency; the reason in measured_latency_skipped
otherwise; --no-measure skips it).

The output directory is written atomically: on any error nothing is left behind.
--overwrite replaces only an earlier dnas-derive output (never the working directory,
the run it derives from, or a directory dnas did not write).
Load the result in Python with dnas.load_derived(DIR).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnas-derive", description="Export a derived architecture and its plain PyTorch/ONNX model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a dnas-search run directory to derive from (argmax of its arch parameters)")
    p.add_argument("--backbone", help="a fixed backbone with attention (DCS-FB): short name (mobilenetv2, "
                                      "mobilenetv2_200, resnet50, hrnet_w32, osnet_x1_0, transreid) or arch YAML")
    p.add_argument("--pretrained", action="store_true", help="with --backbone: timm's ImageNet weights (a download)")
    p.add_argument("--pretrained-file", help="with --backbone: a local checkpoint of the plain backbone, loaded "
                                             "strictly; new attention modules start as the identity")
    p.add_argument("--supernet", help="space name (tiny, fbnetv2, large, xlarge) or YAML path, to derive without search")
    p.add_argument("--sample", choices=["max", "min", "random"], help="architecture picked without search")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample random (default 0)")
    p.add_argument("--latency-ms", type=float, metavar="MS",
                   help="with --sample random: only archs whose lookup-table latency is within --tolerance of MS")
    p.add_argument("--tolerance", type=float, help="relative half-width of the --latency-ms band (default 0.03)")
    p.add_argument("--count", type=int, help="with --latency-ms: how many distinct archs (default 1; more than one "
                                            "go to OUT/arch-00, OUT/arch-01, ...)")
    p.add_argument("--latency-table", metavar="PATH|auto",
                   help="with --supernet: the latency table of --latency-ms and of summary.json's latency_ms "
                        "(default auto: the space's table for this CPU, shipped or cached; never profiled)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the space's or the run's)")
    p.add_argument("--attention", choices=["none", "self", "dcs"],
                   help="attention modules at the space's rows: none, plain self-attention, or DCS-Attention "
                        "(default: the space's; the paper's Tables V/VI ablations)")
    p.add_argument("--attention-form", choices=["linear", "softmax"],
                   help="affinity of the attention modules: linear (non-local, O(N C^2), default) or softmax")
    p.add_argument("--no-dcs", action="store_true", help="same as --attention none")
    p.add_argument("--top-k", type=int, default=1, help="with a run: export the K most probable distinct archs")
    p.add_argument("--checkpoint", default="last", choices=["last", "best"], help="which run checkpoint (default last)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export and check")
    p.add_argument("--no-measure", action="store_true",
                   help="do not time the derived net with its latency table's protocol (done when the table's "
                        "device and runtime are this machine's)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


BAND_TOLERANCE = 0.03


def check_band_args(args: argparse.Namespace) -> None:
    """Refuse band options that do not fit together (before anything is resolved or written)."""
    if args.latency_ms is None:
        for flag, value in (("--tolerance", args.tolerance), ("--count", args.count)):
            if value is not None:
                raise DnasError(f"{flag} applies to --latency-ms (a latency band of --sample random)")
        return
    if args.sample != "random":
        raise DnasError(f"--latency-ms applies to --supernet ... --sample random, not to "
                        f"{'--sample ' + args.sample if args.sample else 'this derive'}")
    if not (math.isfinite(args.latency_ms) and args.latency_ms > 0):
        raise DnasError(f"--latency-ms {args.latency_ms}: expected a positive number of milliseconds")
    tol = BAND_TOLERANCE if args.tolerance is None else args.tolerance
    if not (math.isfinite(tol) and 0 < tol < 1):
        raise DnasError(f"--tolerance {args.tolerance}: expected a relative half-width in (0, 1), e.g. 0.03 (+-3%)")
    if args.count is not None and args.count < 1:
        raise DnasError(f"--count {args.count}: expected a positive integer")


def _latency_cost(args: argparse.Namespace, space, required: bool):
    """The measured lookup table of ``space`` on this CPU (never profiled), or ``None``.

    ``required`` (``--latency-ms``): no measured table is an error; otherwise a missing
    one is skipped, unless ``--latency-table`` named a table that cannot be used.
    """
    from dnas.latency.auto import resolve_latency_cost
    from dnas.search.config import SearchConfig

    spec = args.latency_table or "auto"
    if spec.strip().lower() not in ("auto", "none"):
        from dnas.latency.table import find_table, table_exists

        if not table_exists(find_table(spec)):
            raise DnasError(f"--latency-table {spec}: latency table not found (a CSV of 'dnas-latency profile', a "
                            "shipped table's name, auto or none)")
    # the batch a search of this space prefers by default (the recipe's p * k)
    batch = SearchConfig(supernet=args.supernet).batch_size
    try:
        cost = resolve_latency_cost(spec, space, "cpu", supernet=args.supernet, batch=batch, bnneck=space.bnneck,
                                    budget_s=0, progress=False)
    except DnasError:
        if required or args.latency_table:
            raise
        return None
    if cost.kind in ("none", "proxy"):
        if required:
            from dnas.latency.auto import auto_timing, cache_table_path, profile_command

            timing = auto_timing("cpu", batch, "fp32", False)
            got = "no latency cost" if cost.kind == "none" else "only the MACs proxy (pseudo-ms)"
            raise DnasError(f"--latency-ms needs a measured latency table of space {space.name!r}, and --latency-table "
                            f"{spec} gives {got}: pass --latency-table PATH, or profile one with "
                            f"'{profile_command(args.supernet, timing, cache_table_path(space, timing))}'")
        return None
    return cost


def derive_without_search(args: argparse.Namespace) -> list[tuple[Path, dict]]:
    """Export ``--sample max|min|random`` (or ``--count`` random archs of a latency band).

    Returns:
        ``[(directory, summary)]`` of every exported architecture.
    """
    from dnas.export import export_derived
    from dnas.outputs import DERIVED, atomic_directory
    from dnas.latency.band import sample_in_band
    from dnas.latency.whole_net import measured_latency_summary
    from dnas.models import Supernet, derive_plain
    from dnas.runlog import write_csv_rows
    from dnas.space import load_space

    if args.no_dcs and args.attention not in (None, "none"):
        raise DnasError(f"--no-dcs and --attention {args.attention} disagree: give one of them")
    attention = "none" if args.no_dcs else args.attention
    space = load_space(args.supernet).with_attention(attention, args.attention_form)
    if args.num_classes is not None and args.num_classes < 1:
        raise DnasError(f"--num-classes {args.num_classes}: expected a positive integer")
    band = args.latency_ms is not None
    cost = _latency_cost(args, space, required=band)
    name = f"{space.name}-{args.sample}" + (f"-s{args.seed}" if args.sample == "random" else "")
    base = {"derived_from": f"--sample {args.sample}", "seed": args.seed}
    if not band:
        indices = space.sample_indices(args.sample, seed=args.seed)
        picks = [(indices, None if cost is None else float(cost.model.arch_ms(indices)))]
    else:
        count = args.count or 1
        tol = BAND_TOLERANCE if args.tolerance is None else args.tolerance
        picks = sample_in_band(space, cost.model.arch_ms, args.latency_ms, tol, count, args.seed)
        base["derived_from"] += f" --latency-ms {args.latency_ms:g}"
    net = Supernet(space, num_classes=args.num_classes).eval()

    def extra(i: int, latency, plain) -> dict:
        out = dict(base)
        if latency is not None:
            out.update(latency_ms=latency, latency_table=cost.source)
            if not args.no_measure and cost.kind in ("table", "profiled"):
                out.update(measured_latency_summary(plain, cost.table, plain.arch.input_size))
        if band:
            out["band"] = {"latency_ms": args.latency_ms, "tolerance": tol, "seed": args.seed, "index": i}
        return out

    out = Path(args.out)
    if len(picks) == 1:
        arch, plain = derive_plain(net, picks[0][0], name=name + (f"-band{args.latency_ms:g}ms" if band else ""))
        return [(out, export_derived(out, arch, plain, onnx=not args.no_onnx, overwrite=args.overwrite,
                                     extra_summary=extra(0, picks[0][1], plain)))]
    exported, rows = [], []
    with atomic_directory(out, overwrite=args.overwrite, kind=DERIVED, inputs=(args.supernet,)) as tmp:
        for i, (indices, latency) in enumerate(picks):
            sub = f"arch-{i:02d}"
            arch, plain = derive_plain(net, indices, name=f"{name}-band{args.latency_ms:g}ms-{i:02d}")
            summary = export_derived(tmp / sub, arch, plain, onnx=not args.no_onnx, extra_summary=extra(i, latency, plain))
            exported.append((out / sub, summary))
            rows.append({"index": i, "name": summary["name"], "latency_ms": f"{latency:.6g}",
                         "params": summary["params"], "macs": summary["macs"], "dir": sub})
        write_csv_rows(tmp / "band.csv", rows)
    return exported


def derive_backbone(args: argparse.Namespace) -> dict:
    """Export a fixed-backbone network (DCS-FB) with fresh or pretrained weights."""
    from dnas.architectures import build_model, read_arch
    from dnas.export import export_derived

    if args.no_dcs and args.attention not in (None, "none"):
        raise DnasError(f"--no-dcs and --attention {args.attention} disagree: give one of them")
    if args.sample or args.top_k != 1:
        raise DnasError("--sample/--top-k apply to searched spaces, not to --backbone")
    if args.num_classes is not None and args.num_classes < 1:
        raise DnasError(f"--num-classes {args.num_classes}: expected a positive integer")
    if args.pretrained and args.pretrained_file:
        raise DnasError("give --pretrained (timm's weights) or --pretrained-file PATH, not both")
    attention = "none" if args.no_dcs else args.attention
    arch = read_arch(args.backbone, attention=attention, attention_form=args.attention_form,
                     num_classes=args.num_classes)
    if "backbone" not in arch:
        raise DnasError(f"--backbone {args.backbone}: not a fixed-backbone arch (no 'backbone' key)")
    model = build_model(arch, pretrained=args.pretrained, pretrained_file=args.pretrained_file)
    report = model.pretrained_report
    if report is not None:
        print(f"pretrained: {report['loaded']} backbone tensors from {report['source']}; new: "
              f"{', '.join(report['new']) or 'none'}" + (f"; copied from the last block: {len(report['copied'])} "
                                                          "tensors (JPM)" if report["copied"] else ""))
    extra = {"derived_from": f"--backbone {args.backbone}", "pretrained": report}
    return export_derived(args.out, arch, model, onnx=not args.no_onnx, overwrite=args.overwrite,
                          extra_summary=extra, inputs=[p for p in (args.pretrained_file,) if p])


def latency_text(summary: dict) -> str:
    """``, 1.234 ms (latency table), 1.250 ms measured (eager, AMD EPYC)`` of a summary."""
    table_ms = summary.get("latency_ms", summary.get("lut_latency_ms"))
    if table_ms is None:
        return ""
    text = f", {table_ms:.3f} ms (latency table)"
    if "measured_latency_ms" in summary:
        how = summary["measured_latency"]
        text += f", {summary['measured_latency_ms']:.3f} ms measured ({how['method']}, {how['device_name']})"
    return text


@cli_entry("dnas-derive")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.top_k < 1:
        raise DnasError(f"--top-k {args.top_k}: expected a positive integer")
    check_band_args(args)
    from dnas.outputs import DERIVED, check_replace

    check_replace(args.out, DERIVED, args.overwrite, inputs=[args.run, args.supernet, args.pretrained_file])
    if (args.pretrained or args.pretrained_file) and not args.backbone:
        raise DnasError("--pretrained/--pretrained-file apply to --backbone")
    if args.latency_table and not args.supernet:
        raise DnasError("--latency-table applies to --supernet (a run derives with the cost it searched with)")
    exported = None
    if args.backbone:
        if args.run or args.supernet:
            raise DnasError("give one of a run directory, --supernet or --backbone")
        summaries = [derive_backbone(args)]
    elif args.run:
        if args.supernet or args.sample:
            raise DnasError("give either a run directory or --supernet/--sample, not both")
        if args.num_classes is not None:
            raise DnasError("--num-classes applies to --supernet/--sample; a run's classifier keeps the "
                            "identities it was searched on (retrain changes it: dnas-retrain reid)")
        if args.attention or args.attention_form or args.no_dcs:
            raise DnasError("--attention/--attention-form/--no-dcs apply to --supernet/--sample; a run's "
                            "attention is the one it searched with (see its config.yaml)")
        from dnas.search.derive_run import derive_from_run

        summaries = derive_from_run(Path(args.run), Path(args.out), top_k=args.top_k, checkpoint=args.checkpoint,
                                    onnx=not args.no_onnx, overwrite=args.overwrite, measure=not args.no_measure)
    else:
        if not (args.supernet and args.sample):
            raise DnasError("without a run directory, give --supernet NAME and --sample max|min|random, "
                            "or --backbone NAME")
        exported = derive_without_search(args)
        summaries = [s for _, s in exported]
    if len(summaries) > 1 and exported is None:  # the top K of a run, best first
        print(f"{'rank':>4}  {'probability':>11}  {'LUT ms':>8}  {'params':>9}  {'MACs':>12}  dir")
        for s in summaries:
            print(f"{s['rank']:>4}  {s['probability']:>11.4g}  {s.get('lut_latency_ms', float('nan')):>8.4g}  "
                  f"{s['params']:>9}  {s['macs']:>12}  rank{s['rank']}")
    for i, s in enumerate(summaries):
        onnx = "" if s.get("onnx_max_abs_diff") is None else f", ONNX max abs diff {s['onnx_max_abs_diff']:.2e}"
        lat = latency_text(s)
        where = f"{exported[i][0]}: " if exported is not None and len(exported) > 1 else ""  # OUT/arch-NN
        print(f"{where}{s['name']}: {s['params'] / 1e6:.3f} M params, {s['macs'] / 1e6:.1f} M MACs{lat}{onnx}")
    print(f"derived model written to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
