"""``dnas-retrain``: ImageNet pretraining and Re-ID finetuning of a derived network
(paper section 4.2; docs/method.md sections 4 and 6)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from dnas.cli.common import add_run_arguments, check_run_dir, cli_entry, setup_logging
from dnas.cli.common import resolve_config as resolve_config_of
from dnas.errors import DnasError
from dnas.outputs import DERIVED, IMAGENET_RUN, REID_RUN

EPILOG = r"""examples:
  dnas-derive --supernet tiny --sample max --out derived/tiny             # an arch to train
  dnas-retrain imagenet --arch derived/tiny --data synthetic --out runs/pre
  dnas-retrain reid --arch derived/tiny --pretrained runs/pre --data synthetic --out runs/reid
  dnas-retrain imagenet --arch derived/xl --data imagenet:/data/imagenet --out runs/xl-in \
      --recipe retrain/imagenet_rmsprop.yaml
  dnas-retrain reid --arch derived/xl --pretrained runs/xl-in --data market1501:/data/market --out runs/xl-m
  dnas-retrain reid --arch derived/xl --data msmt17:/data/msmt17 --out runs/xl-ms \
      --set epochs=150 --set center_weight=5e-4
  dnas-retrain reid --resume runs/xl-m                        # continue a killed run exactly
  dnas-retrain reid --eval-only runs/xl-m --checkpoint best   # mAP / CMC / mINP of a checkpoint
  dnas-retrain reid --eval-only runs/xl-m/final --data dukemtmc:/data/duke   # cross-domain
  torchrun --nproc_per_node=8 -m dnas.retrain reid --arch derived/xl --data msmt17:/data/msmt17 --out runs/xl8

Without --recipe the recipe of the data set is used: retrain/reid_<dataset>.yaml,
retrain/reid_synthetic.yaml, retrain/imagenet_sgd.yaml or retrain/imagenet_synthetic.yaml.
Override any key with --set key=value (see dnas/retrain/config.py), e.g. epochs, lr,
optimizer, schedule, milestones, warmup_epochs, mixup_alpha, ema, ib_eta, use_ibb,
attention, attention_form, center_weight, p, k, height, width, eval_every, checkpoint_every, device, amp.

--data: synthetic (embedded; synthetic-imagenet for pretraining), imagenet:ROOT,
market1501:ROOT, dukemtmc:ROOT, msmt17:ROOT, cuhk03:ROOT (cuhk03-labeled:ROOT).
The run directory gets config.yaml, arch.yaml, metrics.csv, tensorboard/, plots/,
checkpoint-{last,best}.pt and final/ (arch.yaml, model.pt, model.onnx, summary.json).
"""
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="derived architecture: a dnas-derive directory or an arch.yaml")
    add_run_arguments(p, "runs/<mode>-<arch>-TIME", "recipe YAML, or a shipped one by name (default: the data set's "
                       "recipe in retrain/)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnas-retrain", description="Retrain a derived network: ImageNet pretraining, Re-ID finetuning.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True, metavar="{imagenet,reid}")
    pi = sub.add_parser("imagenet", help="classification pretraining (top-1/top-5)", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(pi)
    pr = sub.add_parser("reid", help="Re-ID finetuning (mAP/CMC/mINP, IB loss)", epilog=EPILOG,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(pr)
    pr.add_argument("--pretrained", metavar="RUN_OR_WEIGHTS",
                    help="start from an imagenet run, a dnas-derive directory or a .pt state dict "
                         "(the classifier is dropped)")
    pr.add_argument("--eval-only", metavar="PATH",
                    help="only evaluate: a reid run directory, a checkpoint in one, or a directory with model.pt")
    pr.add_argument("--checkpoint", choices=["last", "best"], default="last",
                    help="with --eval-only on a run directory: which checkpoint (default last)")
    pr.add_argument("--rerank", action="store_true",
                    help="also report k-reciprocal re-ranked test figures, separately from the plain ones "
                         "(--eval-only, or the end-of-run test evaluation; recipe key rerank)")
    return p


def default_recipe(mode: str, data: str | None) -> Path | None:
    """The recipe the data set registers (``None``: the dataclass defaults)."""
    from dnas.data.registry import get_dataset
    from dnas.resources import data_dir

    name = (data or ("synthetic-imagenet" if mode == "imagenet" else "synthetic")).partition(":")[0].strip().lower()
    if mode == "imagenet" and name == "synthetic":
        name = "synthetic-imagenet"
    entry = get_dataset(name)
    if entry is None or entry.recipe is None or entry.task != TASKS[mode]:  # e.g. reid with ImageNet: defaults
        return None
    path = data_dir("retrain") / f"{entry.recipe}.yaml"
    return path if path.is_file() else None


TASKS = {"imagenet": "classification", "reid": "reid"}
RUN_KINDS = {"imagenet": IMAGENET_RUN, "reid": REID_RUN}


def resolve_config(args: argparse.Namespace, cls, recipe_dir: Path | None = None, validate: bool = True):
    """Recipe (or the run's config.yaml), then ``--set``, then the direct flags."""
    direct = {k: getattr(args, k, None) for k in ("arch", "data", "seed", "pretrained")}
    return resolve_config_of(args, cls, command=f"dnas-retrain {args.mode}", run_kind=RUN_KINDS[args.mode],
                             recipe_folder="retrain", direct=direct, default_recipe=default_recipe(args.mode, args.data),
                             run_config=recipe_dir / "config.yaml" if recipe_dir is not None else None,
                             validate=validate)


def _eval_only(args: argparse.Namespace) -> int:
    from dnas.retrain.config import ReIDConfig
    from dnas.retrain.reid import evaluate_only

    if args.resume or args.pretrained:
        raise DnasError("--eval-only evaluates a finished checkpoint; it takes no --resume or --pretrained")
    path = Path(args.eval_only)
    if not path.exists():
        raise DnasError(f"{path}: not found")
    run = path if path.is_dir() else path.parent
    from dnas.outputs import require_kind

    kind = require_kind(run, (REID_RUN, DERIVED), "dnas-retrain reid --eval-only")
    if kind == DERIVED and args.checkpoint != "last":
        raise DnasError(f"--checkpoint {args.checkpoint}: {run} is a dnas-derive output with one model.pt; "
                        "--checkpoint picks a checkpoint of a reid run directory")
    cfg = resolve_config(args, ReIDConfig, run if (run / "config.yaml").is_file() else None, validate=False)
    if args.rerank:
        cfg = dataclasses.replace(cfg, rerank=True)
    m = evaluate_only(path, cfg, args.checkpoint)
    if m.get("data_fingerprint"):
        print(m["data_fingerprint"]["line"])
    print(f"mAP {100 * m['mAP']:.2f} | rank-1 {100 * m['rank1']:.2f} | rank-5 {100 * m['rank5']:.2f} | "
          f"rank-10 {100 * m['rank10']:.2f} | mINP {100 * m['mINP']:.2f} | {m['num_queries']} queries | {m['weights']}")
    if "rerank" in m:
        r = m["rerank"]
        print(f"re-ranked (k-reciprocal): mAP {100 * r['mAP']:.2f} | rank-1 {100 * r['rank1']:.2f} | "
              f"rank-5 {100 * r['rank5']:.2f} | rank-10 {100 * r['rank10']:.2f} | mINP {100 * r['mINP']:.2f}")
    print(json.dumps(m))
    return 0


@cli_entry("dnas-retrain")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.mode == "reid" and args.eval_only:
        return _eval_only(args)
    from dnas.retrain.config import ImageNetConfig, ReIDConfig

    cfg = resolve_config(args, ImageNetConfig if args.mode == "imagenet" else ReIDConfig)
    if getattr(args, "rerank", False):
        cfg = dataclasses.replace(cfg, rerank=True)
    from dnas.outputs import require_kind

    trained = (DERIVED, IMAGENET_RUN, REID_RUN)
    for option, value in (("--arch", cfg.arch), ("--pretrained", getattr(cfg, "pretrained", None))):
        if value and Path(value).is_dir():  # e.g. a search run: name it and say how to export it
            require_kind(value, trained, f"dnas-retrain {args.mode} {option}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.resume or args.out or f"runs/{args.mode}-{Path(cfg.arch).stem}-{stamp}")
    is_main = int(os.environ.get("RANK", "0")) == 0
    data_root = (cfg.data or "").partition(":")[2]
    replace = check_run_dir(run_dir, RUN_KINDS[args.mode], args, [args.recipe, cfg.arch, data_root,
                                                                 getattr(cfg, "pretrained", None)],
                            started_files=("config.yaml", "checkpoint-last.pt"))
    if args.verify_images and is_main:
        from dnas.data.verify import verify_from_config

        verify_from_config(cfg)
    t0 = time.time()
    if args.mode == "imagenet":
        from dnas.retrain.imagenet import run_imagenet

        summary = run_imagenet(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                               overwrite=replace)
        result = f"val top-1 {100 * (summary.get('top1') or 0):.1f}, top-5 {100 * (summary.get('top5') or 0):.1f}"
    else:
        from dnas.retrain.reid import run_reid

        summary = run_reid(cfg, run_dir, resume=bool(args.resume), progress=not args.no_progress,
                           overwrite=replace)
        result = (f"mAP {100 * (summary.get('mAP') or 0):.1f}, rank-1 {100 * (summary.get('rank1') or 0):.1f}, "
                  f"mINP {100 * (summary.get('mINP') or 0):.1f}")
    if is_main:
        print(f"{args.mode} retraining finished in {time.time() - t0:.1f}s: {result}, "
              f"{summary.get('macs', 0) / 1e6:.1f} M MACs")
        print(f"run directory: {run_dir.resolve()}; deployable model: {(run_dir / 'final').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
