"""``dnas-derive``: export a derived network (arch.yaml, model.pt, model.onnx,
summary.json, arch.dot) from a search run, from a space without search, or a fixed
backbone with attention (DCS-FB, paper section 3.3: ``--backbone NAME``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dnas.cli.common import cli_entry, setup_logging
from dnas.errors import DnasError

EPILOG = """examples:
  dnas-derive --supernet xlarge --sample max --num-classes 751 --out derived/xlarge-max
  dnas-derive --supernet tiny --sample random --seed 3 --out derived/tiny-r3
  dnas-derive --supernet fbnetv2 --sample max --attention self --out derived/fb-max-sa   # ablation variant
  dnas-derive runs/search1 --out derived/search1            # argmax of a search run
  dnas-derive runs/search1 --top-k 5 --out derived/top5     # the 5 most probable archs
  dnas-derive --backbone resnet50 --num-classes 751 --out derived/dcs-fb-r50     # DCS-FB (fixed backbone)
  dnas-derive --backbone mobilenetv2 --attention none --out derived/mbv2         # the plain backbone
  dnas-derive --backbone transreid --pretrained-file vit_b16.pth --out derived/tr # a local timm checkpoint

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
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def derive_without_search(args: argparse.Namespace) -> dict:
    from dnas.export import export_derived
    from dnas.models import Supernet, derive_plain
    from dnas.space import load_space

    if args.no_dcs and args.attention not in (None, "none"):
        raise DnasError(f"--no-dcs and --attention {args.attention} disagree: give one of them")
    attention = "none" if args.no_dcs else args.attention
    space = load_space(args.supernet).with_attention(attention, args.attention_form)
    if args.num_classes is not None and args.num_classes < 1:
        raise DnasError(f"--num-classes {args.num_classes}: expected a positive integer")
    indices = space.sample_indices(args.sample, seed=args.seed)
    net = Supernet(space, num_classes=args.num_classes).eval()
    name = f"{space.name}-{args.sample}" + (f"-s{args.seed}" if args.sample == "random" else "")
    arch, plain = derive_plain(net, indices, name=name)
    return export_derived(args.out, arch, plain, onnx=not args.no_onnx, overwrite=args.overwrite,
                          extra_summary={"derived_from": f"--sample {args.sample}", "seed": args.seed})


def derive_backbone(args: argparse.Namespace) -> dict:
    """Export a fixed-backbone network (DCS-FB) with fresh or pretrained weights."""
    from dnas.export import build_model, export_derived, read_arch

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


@cli_entry("dnas-derive")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.top_k < 1:
        raise DnasError(f"--top-k {args.top_k}: expected a positive integer")
    from dnas.outputs import check_replace

    check_replace(args.out, "derived", args.overwrite, inputs=[args.run, args.supernet, args.pretrained_file])
    if (args.pretrained or args.pretrained_file) and not args.backbone:
        raise DnasError("--pretrained/--pretrained-file apply to --backbone")
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
                                    onnx=not args.no_onnx, overwrite=args.overwrite)
    else:
        if not (args.supernet and args.sample):
            raise DnasError("without a run directory, give --supernet NAME and --sample max|min|random, "
                            "or --backbone NAME")
        summaries = [derive_without_search(args)]
    if len(summaries) > 1:  # the top K of a run, best first
        print(f"{'rank':>4}  {'probability':>11}  {'LUT ms':>8}  {'params':>9}  {'MACs':>12}  dir")
        for s in summaries:
            print(f"{s['rank']:>4}  {s['probability']:>11.4g}  {s.get('lut_latency_ms', float('nan')):>8.4g}  "
                  f"{s['params']:>9}  {s['macs']:>12}  rank{s['rank']}")
    for s in summaries:
        onnx = "" if s.get("onnx_max_abs_diff") is None else f", ONNX max abs diff {s['onnx_max_abs_diff']:.2e}"
        print(f"{s['name']}: {s['params'] / 1e6:.3f} M params, {s['macs'] / 1e6:.1f} M MACs{onnx}")
    print(f"derived model written to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
