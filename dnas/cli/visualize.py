"""``dnas-visualize``: Grad-CAM maps, t-SNE, ranked lists and training curves of a
derived or retrained network (paper section 4.7 Figure 1, Appendices A and B)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from dnas.cli.common import cli_entry, finite_float, setup_logging
from dnas.errors import DnasError

EPILOG = r"""examples:
  dnas-visualize gradcam runs/reid --data synthetic --out figs/cam          # 8 seeded query images
  dnas-visualize gradcam runs/base/final --compare runs/dcs/final runs/dcs-ibb/final \
      --labels baseline "DCS w/o IBB" "DCS with IBB" --ids 12 40 77 --target match --out figs/fig1
  dnas-visualize tsne runs/base --compare runs/dcs --num-ids 10 --out figs/tsne
  dnas-visualize tsne runs/dcs --split train --num-ids 20 --out figs/tsne-train
  dnas-visualize tsne runs/base --compare runs/dcs --lda 9 --out figs/tsne-lda    # the paper's Appendix B
  dnas-visualize rank runs/dcs --data market1501:/data/market --num 5 --topk 10 --out figs/rank
  dnas-visualize curves runs/dcs --out figs/curves                          # from metrics.csv

MODEL is a dnas-retrain reid run (checkpoint-last.pt, or --checkpoint best), a checkpoint
in one, its final/ directory, or a dnas-derive directory. --data takes the specs of the
other commands (synthetic, market1501:ROOT, dukemtmc:ROOT, msmt17:ROOT, cuhk03:ROOT);
without it, the data set named in the run's config.yaml. Every subcommand writes PNGs
and the numbers behind them into --out:
  gradcam: gradcam.png, gradcam.csv (target, score, peak per image and model),
           gradcam_maps.npz (the maps), gradcam.json
  tsne:    tsne.png, tsne.csv (one row per image: identity, camera, 2-D coordinates per
           model), tsne.json (kNN accuracy and Fisher ratio on the embeddings)
  rank:    rank_worst.png, rank_best.png, rank.csv (AP, first-match rank, top-k per query),
           rank.json (the mean AP beside the evaluation's mAP)
  curves:  curves.png, curves.json (the values drawn per panel)
Each JSON file and the last lines printed carry the data set's fingerprint: its
identity and image counts per split against the published ones (curves: the one the
run recorded).
--out is written atomically; --overwrite replaces only an earlier dnas-visualize output.
"""

TARGET_HELP = ("what the map explains: logit (the identity logit the network scores highest; default) or match "
               "(the embedding's cosine similarity to the image's best true match in the gallery)")


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROWSxCOLS, e.g. 21x10") from None
    if rows < 1 or cols < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rows and columns must be positive")
    return rows, cols


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _model_arguments(p: argparse.ArgumentParser, compare: bool) -> None:
    p.add_argument("model", metavar="MODEL", help="a reid run, a checkpoint in one, its final/, or a dnas-derive "
                                                  "directory")
    if compare:
        p.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                       help="more models shown side by side on the same images")
        p.add_argument("--labels", nargs="+", metavar="NAME", help="one name per model, MODEL first (default: "
                                                                   "the directory names)")
    p.add_argument("--data", help="data set spec (default: the one in the run's config.yaml)")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last",
                   help="which checkpoint of a run directory (default last)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the models run")
    p.add_argument("--batch-size", type=_positive, default=64, help="images per forward pass (default 64)")
    _output_arguments(p)


def _output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier dnas-visualize output in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="dnas-visualize", description="Figures of a trained Re-ID network: Grad-CAM, "
                                "t-SNE, ranked lists, training curves.", epilog=EPILOG, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True, metavar="{gradcam,tsne,rank,curves}")
    g = sub.add_parser("gradcam", help="Grad-CAM maps of query images (--compare: several models)", epilog=EPILOG,
                       formatter_class=fmt)
    _model_arguments(g, compare=True)
    g.add_argument("--ids", nargs="+", type=int, metavar="PID", help="every query image of these identities")
    g.add_argument("--num", type=_positive, default=8, help="without --ids: this many seeded query images (default 8)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image choice (default 0)")
    g.add_argument("--target", choices=["logit", "match"], default="logit", help=TARGET_HELP)
    g.add_argument("--grid", type=_grid, metavar="ROWSxCOLS",
                   help="token models: the patch grid (default: the model's patch_grid / grid_size)")
    t = sub.add_parser("tsne", help="t-SNE of the embeddings coloured by identity, kNN accuracy, Fisher ratio",
                       epilog=EPILOG, formatter_class=fmt)
    _model_arguments(t, compare=True)
    t.add_argument("--split", choices=["test", "query", "gallery", "train"], default="test",
                   help="whose images: test (query and gallery; default), query, gallery or train")
    t.add_argument("--num-ids", type=_positive, default=10, help="identities shown (seeded; default 10)")
    t.add_argument("--seed", type=int, default=0, help="seed of the identity choice and of t-SNE (default 0)")
    t.add_argument("--knn", type=_positive, default=5, help="k of the kNN accuracy (default 5)")
    t.add_argument("--perplexity", type=finite_float, help="t-SNE perplexity (default min(30, (images - 1) / 3))")
    t.add_argument("--lda", type=int, default=0, metavar="K",
                   help="the paper's Appendix B: project to K LDA components (at most identities - 1), "
                        "standardise, then t-SNE; the title's figures are then those of the projection "
                        "(default 0: the embeddings themselves)")
    r = sub.add_parser("rank", help="ranked gallery lists of the worst and best queries by AP", epilog=EPILOG,
                       formatter_class=fmt)
    _model_arguments(r, compare=False)
    r.add_argument("--num", type=_positive, default=5, help="queries per figure (default 5)")
    r.add_argument("--topk", type=_positive, default=10, help="gallery images per query (default 10)")
    r.add_argument("--max-queries", type=int, default=0,
                   help="rank at most this many evenly spaced queries (default 0: all)")
    c = sub.add_parser("curves", help="a run's training curves (metrics.csv) as a labelled grid", epilog=EPILOG,
                       formatter_class=fmt)
    c.add_argument("run", metavar="RUN", help="a dnas-search or dnas-retrain run directory")
    _output_arguments(c)
    return p


def _run(args: argparse.Namespace, tmp: Path) -> dict:
    from dnas.viz import commands
    from dnas.viz.loading import load_models, pick_device, resolve_data

    if args.command == "curves":
        return commands.curves_command(Path(args.run), tmp)
    device = pick_device(args.device)
    paths = [args.model, *getattr(args, "compare", [])]
    models = load_models(paths, getattr(args, "labels", None), args.checkpoint)
    data = resolve_data(args.data, models, args.batch_size)
    progress = not args.no_progress
    if args.command == "gradcam":
        return commands.gradcam_command(models, data, tmp, num=args.num, ids=args.ids, seed=args.seed,
                                        target=args.target, grid=args.grid, device=device, progress=progress)
    if args.command == "tsne":
        if args.perplexity is not None and args.perplexity <= 0:
            raise DnasError(f"--perplexity {args.perplexity}: expected a positive number")
        if args.lda < 0:
            raise DnasError(f"--lda {args.lda}: expected 0 (no LDA) or a positive number of components")
        return commands.tsne_command(models, data, tmp, split=args.split, num_ids=args.num_ids, seed=args.seed,
                                     knn=args.knn, perplexity=args.perplexity, lda=args.lda, device=device,
                                     progress=progress)
    if args.max_queries < 0:
        raise DnasError(f"--max-queries {args.max_queries}: expected 0 (all) or a positive integer")
    return commands.rank_command(models[0], data, tmp, num=args.num, topk=args.topk, max_queries=args.max_queries,
                                 device=device, progress=progress)


def _summary_line(args: argparse.Namespace, summary: dict) -> str:
    if args.command == "tsne":
        return "; ".join(f"{m['label']}: {m['knn_k']}-NN accuracy {100 * m['embedding_knn_accuracy']:.1f}%, Fisher "
                         f"ratio {m['embedding_fisher_ratio']:.3f}"
                         + (f" (LDA projection: {100 * m['knn_accuracy']:.1f}%, {m['fisher_ratio']:.3f})"
                            if summary["lda_components"] else "") for m in summary["models"])
    if args.command == "rank":
        return (f"{summary['num_with_match']} queries ranked: mean AP {100 * summary['mean_ap']:.2f}% "
                f"(evaluation mAP {100 * summary['evaluation_mAP']:.2f}%)")
    if args.command == "gradcam":
        return f"{len(summary['images'])} images x {len(summary['models'])} models, target {summary['target']}"
    return f"{len(summary['panels'])} panels over {summary['epochs']} epochs"


@cli_entry("dnas-visualize")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    from dnas.outputs import FIGURES, atomic_directory

    inputs = [args.run] if args.command == "curves" else [args.model, *getattr(args, "compare", [])]
    data_root = (getattr(args, "data", None) or "").partition(":")[2]
    with atomic_directory(args.out, overwrite=args.overwrite, kind=FIGURES, inputs=(*inputs, data_root)) as tmp:
        summary = _run(args, tmp)
    print(f"{args.command}: {_summary_line(args, summary)}")
    verdict = summary.get("data_fingerprint")
    if verdict:  # the data the figures come from (curves: as the run recorded it)
        print(verdict["line"])
    print(f"figures written to {Path(args.out).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
