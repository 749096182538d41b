"""The paper's Table I side by side (DCS-FB, paper section 4): parameters (without the
classifier) and MACs (fvcore, attention matmuls included) of every shipped fixed
backbone without attention, with plain self-attention and with DCS-Attention, at the
arch files' input size (256x128), next to the paper's figures.

    python bench/table1_backbones.py --out table1.json [--markdown table1.md]
    python bench/table1_backbones.py --only mobilenetv2 osnet_x1_0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# the paper's Table I (and Table V for MobileNetV2's 0.382 G): (params M, GMACs), None where not given
PAPER = {
    ("mobilenetv2", "none"): (2.22, 0.380), ("mobilenetv2", "self"): (None, 0.395),
    ("mobilenetv2", "dcs"): (2.31, 0.406), ("mobilenetv2_200", "dcs"): (5.32, 0.927),
    ("osnet_x1_0", "none"): (2.2, 0.98), ("osnet_x1_0", "dcs"): (2.33, 1.03),
    ("resnet50", "dcs"): (23.9, 6.24), ("hrnet_w32", "dcs"): (32.1, 9.9),
    ("transreid", "none"): (100.0, 19.3), ("transreid", "dcs"): (101.6, 19.7),
}
ROWS = ("mobilenetv2", "mobilenetv2_200", "osnet_x1_0", "resnet50", "hrnet_w32", "transreid")


def measure(name: str, attention: str, num_classes: int = 751) -> dict:
    """Parameters (without the classifier) and fvcore MACs of one backbone x attention."""
    import dnas
    from dnas.model_stats import count_macs, params_without_classifier

    model = dnas.build_model(name, num_classes=num_classes, attention=attention).eval()
    t0 = time.time()
    macs = count_macs(model, model.arch.input_size)
    return {"backbone": name, "attention": attention, "input_size": list(model.arch.input_size),
            "params_without_classifier": params_without_classifier(model),
            "attention_params": sum(p.numel() for n, p in model.named_parameters() if n.startswith("dcs.")),
            "macs": macs, "count_s": round(time.time() - t0, 1)}


def gap(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours - paper) / paper:+.0f}%"


def markdown(rows: list[dict]) -> str:
    lines = ["| backbone | attention | params (M) | paper | gap | MACs (G) | paper | gap |",
             "|---|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        pp, pm = PAPER.get((r["backbone"], r["attention"]), (None, None))
        p, m = r["params_without_classifier"] / 1e6, r["macs"] / 1e9
        lines.append(f"| {r['backbone']} | {r['attention']} | {p:.2f} | {'' if pp is None else pp} | {gap(p, pp)} "
                     f"| {m:.3f} | {'' if pm is None else pm} | {gap(m, pm)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(ROWS), help="backbone short names (default: all six)")
    ap.add_argument("--attention", nargs="*", default=["none", "self", "dcs"])
    ap.add_argument("--out", type=Path, required=True, help="JSON results")
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown")
    args = ap.parse_args(argv)
    rows = []
    for name in args.only:
        for att in args.attention:
            rows.append(measure(name, att))
            print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"rows": rows, "paper": {f"{k[0]}/{k[1]}": v for k, v in PAPER.items()}},
                                   indent=1))
    table = markdown(rows)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
