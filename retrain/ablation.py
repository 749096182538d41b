"""The paper's ablations (Tables V and VI together) at small scale: attention and the IB bound.

Trains the same derived architecture on the embedded synthetic Re-ID set six ways, with
the same seeds (the same data order per seed):

  baseline                 ``attention=none use_ibb=false``
  baseline + IBB           ``attention=none use_ibb=true``
  self-attention           ``attention=self use_ibb=false``  (the "(Self-Attention)" rows)
  self-attention + IBB     ``attention=self use_ibb=true``
  DCS w/o IBB              ``attention=dcs  use_ibb=false``
  DCS + IBB                ``attention=dcs  use_ibb=true``   (the paper's model)

``eta`` (the IBB weight) is chosen first, as the paper's cross-validation did, by the
validation split (identities held out of training, never the test set): DCS + IBB is
trained with each eta of ``--etas`` on the sweep seeds, and the eta of the best mean
validation mAP is used by every IBB variant. The table gives, per variant, MACs, test mAP,
R1 and mINP (final weights), the validation mAP, and the IB loss and IBB of the trained
network measured by :func:`dnas.ib.evaluate_ib` on the training set in eval mode (the
bound with its constants, so IBB >= IB); then paired differences (same seed) with their
spread, and which of the paper's orderings hold on the means.

NOTE: a CPU-sized stand-in for the paper's ImageNet-pretrained, Market-1501-scale
experiments; orderings at this scale say little about the paper's claims either way.

Usage (about 25 minutes on 2 idle CPU cores)::

    python retrain/ablation.py                                  # tiny max, 5 seeds -> retrain/results/
    python retrain/ablation.py --seeds 0 1 --etas 0.1 --set epochs=2 --out /tmp/abl   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = [  # (key, label, attention, use_ibb)
    ("base", "Baseline (no attention)", "none", False),
    ("base_ibb", "Baseline + IBB", "none", True),
    ("sa", "Self-Attention", "self", False),
    ("sa_ibb", "Self-Attention + IBB", "self", True),
    ("dcs", "DCS-Attention w/o IBB", "dcs", False),
    ("dcs_ibb", "DCS-Attention + IBB", "dcs", True),
]
METRICS = ["macs", "params", "mAP", "rank1", "mINP", "val_mAP", "ib_loss", "ibb"]
PAIRS = [("sa", "base"), ("dcs", "sa"), ("dcs", "base"), ("base_ibb", "base"), ("sa_ibb", "sa"),
         ("dcs_ibb", "dcs"), ("dcs_ibb", "base")]


def derive_arch(out: Path, supernet: str, sample: str) -> Path:
    """``dnas-derive --supernet S --sample M`` into ``out`` (reused when present)."""
    from dnas.cli import derive as derive_cli

    if not (out / "arch.yaml").is_file():
        code = derive_cli.main(["--supernet", supernet, "--sample", sample, "--no-onnx", "--out", str(out)])
        if code:
            raise SystemExit(f"deriving {supernet} {sample} failed")
    return out


def run_variant(arch: Path, recipe: str, overrides: list[str], attention: str, use_ibb: bool, eta: float,
                seed: int, run_dir: Path) -> dict:
    """One finetuning run (reused when finished with the same config): the figures of the table."""
    import shutil

    import yaml

    from dnas.config import config_to_dict, load_config
    from dnas.retrain.config import ReIDConfig
    from dnas.retrain.reid import run_reid
    from dnas.runlog import read_csv_rows

    sets = overrides + [f"attention={attention}", f"use_ibb={str(use_ibb).lower()}", f"ib_eta={eta}",
                        f"seed={seed}", "export_onnx=false", "deterministic=true"]
    cfg = load_config(ReIDConfig, recipe, sets)
    cfg.arch = str(arch)
    summary_path, config_path = run_dir / "final" / "summary.json", run_dir / "config.yaml"
    done = (summary_path.is_file() and config_path.is_file()
            and yaml.safe_load(config_path.read_text()) == config_to_dict(cfg))
    if not done:
        shutil.rmtree(run_dir, ignore_errors=True)  # unfinished or made with another config
        run_reid(cfg, run_dir, progress=False)
    s = json.loads(summary_path.read_text())
    rows = read_csv_rows(run_dir / "metrics.csv")
    vals = [float(r["val_mAP"]) for r in rows if r.get("val_mAP") not in (None, "")]
    cls = s.get("params_classifier", 0) or 0
    return {"macs": s["macs"], "params": s["params"] - cls, "mAP": s["mAP"], "rank1": s["rank1"],
            "mINP": s["mINP"], "val_mAP": vals[-1] if vals else None, "ib_loss": s["ib_loss"], "ibb": s["ibb"],
            "i_xf": s["ib_final"]["i_xf"], "i_fy": s["ib_final"]["i_fy"], "name": s["name"],
            "input_size": s["input_size"], "stage_widths": s["stage_widths"], "epochs": s.get("epochs"),
            "train_time_s": sum(float(r["epoch_time_s"]) for r in rows)}


def _stats(values: list) -> dict:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "std": None, "values": values}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "values": vals}


def _fmt(s: dict, scale: float = 1.0, digits: int = 1) -> str:
    if s["mean"] is None:
        return "n/a"
    text = f"{s['mean'] * scale:.{digits}f}"
    return text + (f" ± {s['std'] * scale:.{digits}f}" if len(s["values"]) > 1 else "")


def paired_differences(per_run: dict, seeds: list[int]) -> dict:
    """Per-seed differences (same seed: same data order and initial weights where shapes agree)."""
    out = {}
    for hi, lo in PAIRS:
        for m in ("mAP", "rank1", "ib_loss"):
            out[f"{m}: {hi} - {lo}"] = _stats([per_run[f"{hi}-s{s}"][m] - per_run[f"{lo}-s{s}"][m] for s in seeds])
    return out


def orderings(rows: dict, diffs: dict) -> dict:
    """The paper's orderings on the means, and whether each paired difference exceeds its spread."""
    def mean(k: str, m: str) -> float:
        return rows[k][m]["mean"]

    out = {}
    for m in ("mAP", "rank1"):
        out[f"{m}: baseline < self-attention < DCS (w/o IBB)"] = mean("base", m) < mean("sa", m) < mean("dcs", m)
        for k in ("base", "sa", "dcs"):
            out[f"{m}: IBB improves {k}"] = mean(f"{k}_ibb", m) > mean(k, m)
        out[f"{m}: DCS + IBB best of all six"] = mean("dcs_ibb", m) >= max(mean(k, m) for k, *_ in VARIANTS)
    out["IB loss: DCS < self-attention < baseline (w/o IBB)"] = \
        mean("dcs", "ib_loss") < mean("sa", "ib_loss") < mean("base", "ib_loss")
    for k in ("base", "sa", "dcs"):
        out[f"IB loss: IBB lowers it for {k}"] = mean(f"{k}_ibb", "ib_loss") < mean(k, "ib_loss")
    out["IBB >= IB loss in every run"] = all(v >= i for k, *_ in VARIANTS
                                            for v, i in zip(rows[k]["ibb"]["values"], rows[k]["ib_loss"]["values"]))
    return out


def render_markdown(rows: dict, checks: dict, diffs: dict, sweep: dict, meta: dict) -> str:
    lines = [
        "# Ablation on the synthetic Re-ID set (small-scale analogue of the paper's Tables V and VI)", "",
        f"Architecture `{meta['arch_name']}` (`{meta['arch']}`, stage widths {meta['stage_widths']}), input "
        f"{meta['input']}, {meta['epochs']} epochs from scratch, seeds {meta['seeds']}, recipe `{meta['recipe']}`"
        f"{''.join(' `--set ' + s + '`' for s in meta['overrides'])}. Mean ± std over seeds. "
        "mAP, R1, mINP: **test** query/gallery, final weights, in %; val mAP: the **validation** split "
        "(training identities held out); IB loss and IBB: the trained network on the **training** set in eval "
        "mode (`dnas.ib.evaluate_ib`; IBB is the bound with its constants). MACs: fvcore multiply-accumulates "
        f"per image; params without the classifier. Training time {meta['train_time_s']:.0f} s in all "
        f"({meta['device']}). Reproduce with `{meta['command']}`.", "",
        f"eta (IBB weight) chosen on the validation split with DCS + IBB over seeds {meta['sweep_seeds']}: "
        + ", ".join(f"eta {e:g}: val mAP {_fmt(s, 100)}" for e, s in sweep.items())
        + f" -> **eta {meta['eta']:g}**.", "",
        "| Model | attention | IBB | params (k) | MACs (M) | test mAP | test R1 | test mINP | val mAP | IB loss | IBB |",
        "|---|:-:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, label, att, ibb in VARIANTS:
        r = rows[key]
        lines.append(f"| {label} | {att} | {'✓' if ibb else ''} | {r['params']['mean'] / 1e3:.1f} | "
                     f"{r['macs']['mean'] / 1e6:.2f} | {_fmt(r['mAP'], 100)} | {_fmt(r['rank1'], 100)} | "
                     f"{_fmt(r['mINP'], 100)} | {_fmt(r['val_mAP'], 100)} | {_fmt(r['ib_loss'], 1, 4)} | "
                     f"{_fmt(r['ibb'], 1, 3)} |")
    lines += ["", "Paired differences (same seed; mAP and R1 in points, IB loss in nats; mean ± std over seeds):", ""]
    lines += [f"- {name}: {_fmt(s, 1 if name.startswith('ib') else 100, 4 if name.startswith('ib') else 1)}"
              f"{'' if s['mean'] is None or abs(s['mean']) > (s['std'] or 0) else ' (within its spread)'}"
              for name, s in diffs.items()]
    lines += ["", "The paper's orderings, on the means:", ""]
    lines += [f"- {name}: {'holds' if ok else 'does not hold'}" for name, ok in checks.items()]
    lines += ["", "A difference smaller than its std over seeds is within the noise of this small set.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "retrain" / "results"), help="where the table goes")
    p.add_argument("--runs", default=str(ROOT / "runs" / "ablation"),
                   help="run directories (default runs/ablation; finished runs are reused)")
    p.add_argument("--arch", help="a derived arch (default: dnas-derive --supernet SUPERNET --sample SAMPLE)")
    p.add_argument("--supernet", default="tiny")
    p.add_argument("--sample", default="max", choices=["max", "min", "random"])
    p.add_argument("--recipe", default=str(ROOT / "retrain" / "reid_synthetic.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--etas", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="IBB weights to choose from")
    p.add_argument("--sweep-seeds", type=int, nargs="+", help="seeds of the eta sweep (default: the first 3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="ablation_synthetic", help="output file stem")
    args = p.parse_args(argv)

    import logging

    import torch

    from dnas.io import atomic_write_json, atomic_write_text

    logging.basicConfig(level=logging.WARNING)
    out, runs = Path(args.out), Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    arch = Path(args.arch) if args.arch else derive_arch(runs / f"arch-{args.supernet}-{args.sample}",
                                                         args.supernet, args.sample)
    t0 = time.time()
    sweep_seeds = args.sweep_seeds or args.seeds[:3]
    per_run: dict = {}

    def run(key: str, att: str, ibb: bool, eta: float, seed: int) -> dict:
        tag = f"{key}-eta{eta:g}-s{seed}" if ibb else f"{key}-s{seed}"
        print(f"== {tag}", flush=True)
        per_run.setdefault("_all", {})[tag] = r = run_variant(arch, args.recipe, args.overrides, att, ibb, eta,
                                                              seed, runs / tag)
        return r

    sweep = {eta: _stats([run("dcs_ibb", "dcs", True, eta, s)["val_mAP"] for s in sweep_seeds]) for eta in args.etas}
    eta = max(args.etas, key=lambda e: sweep[e]["mean"] if sweep[e]["mean"] is not None else -1.0)
    for key, _, att, ibb in VARIANTS:
        for seed in args.seeds:
            per_run[f"{key}-s{seed}"] = run(key, att, ibb, eta, seed)
    wall = time.time() - t0
    rows = {key: {m: _stats([per_run[f"{key}-s{s}"].get(m) for s in args.seeds]) for m in METRICS}
            for key, *_ in VARIANTS}
    diffs = paired_differences(per_run, args.seeds)
    checks = orderings(rows, diffs)
    first = per_run[f"base-s{args.seeds[0]}"]
    meta = {"arch": args.arch or f"dnas-derive --supernet {args.supernet} --sample {args.sample}",
            "arch_name": first["name"], "stage_widths": first["stage_widths"],
            "input": "x".join(map(str, first["input_size"][1:])), "epochs": first.get("epochs"),
            "seeds": args.seeds, "sweep_seeds": sweep_seeds, "etas": args.etas, "eta": eta,
            "recipe": Path(args.recipe).name, "overrides": args.overrides, "wall_time_s": wall,
            "torch": torch.__version__, "device": f"CPU, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}",
            "train_time_s": sum(v["train_time_s"] for v in per_run["_all"].values()),
            "command": " ".join(["python retrain/ablation.py", *(argv if argv is not None else sys.argv[1:])])}
    table = render_markdown(rows, checks, diffs, sweep, meta)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{args.name}.md", table)
    atomic_write_json(out / f"{args.name}.json", {
        "meta": meta, "eta_sweep": {str(e): s for e, s in sweep.items()},
        "variants": {key: {"label": label, "attention": att, "use_ibb": ibb, **rows[key]}
                     for key, label, att, ibb in VARIANTS},
        "orderings": checks, "paired_differences": diffs, "runs": per_run["_all"]})
    print(f"written {out / (args.name + '.md')} and .json ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
