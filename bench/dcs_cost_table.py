"""Parameters and MACs of the attention modules (paper Tables II/V: what DCS-Attention adds).

For the widest and the narrowest architecture of each space at 256x128, counts the net
without attention, with plain self-attention and with DCS-Attention (linear form, and
the softmax form for comparison): parameters without the classifier, MACs by fvcore
(multiply-accumulates per image, attention matmuls included, 751-class classifier).

Usage::

    python -m bench.dcs_cost_table                 # Markdown table on stdout
    python -m bench.dcs_cost_table --json out.json
"""
from __future__ import annotations

import argparse
import json
import warnings

from dnas.model_stats import count_macs
from dnas.models import PlainNet
from dnas.space import SearchSpace, load_space

VARIANTS = (("none", "linear"), ("self", "linear"), ("dcs", "linear"), ("dcs", "softmax"))
PAPER = {"fbnetv2": "+9.1% (0.572 -> 0.624 G)", "large": "+5.4% (1.235 -> 1.302 G)",
         "xlarge": "+5.6% (1.798 -> 1.898 G)"}


def count(space_name: str, mode: str, attention: str, form: str, num_classes: int = 751) -> tuple[int, int]:
    """``(params without the classifier, MACs)`` of one derived net."""
    space = load_space(space_name).with_attention(form=form)
    arch = SearchSpace.from_dict(space.arch_from_indices(space.sample_indices(mode), num_classes=num_classes,
                                                         attention=attention))
    net = PlainNet(arch).eval()
    params = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.head.classifier.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return params, count_macs(net, arch.input_size)


def table() -> tuple[str, list[dict]]:
    rows, lines = [], [
        "| space | arch | params none | + self | + DCS | MACs none | + self | + DCS (linear) | + DCS (softmax) | paper DCS |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"]
    for name in ("fbnetv2", "large", "xlarge"):
        for mode in ("max", "min"):
            got = {f"{a}_{f}": count(name, mode, a, f) for a, f in VARIANTS}
            p0, m0 = got["none_linear"]
            rows.append({"space": name, "arch": mode, **{k: {"params": p, "macs": m} for k, (p, m) in got.items()}})

            def dp(k):
                return f"+{(got[k][0] - p0) / 1e3:.1f}k ({(got[k][0] - p0) / p0 * 100:+.1f}%)"

            def dm(k):
                return f"{(got[k][1] - m0) / m0 * 100:+.1f}%"

            lines.append(f"| {name} | {mode} | {p0 / 1e6:.3f} M | {dp('self_linear')} | {dp('dcs_linear')} | "
                         f"{m0 / 1e6:.1f} M | {dm('self_linear')} | {dm('dcs_linear')} | {dm('dcs_softmax')} | "
                         f"{PAPER[name] if mode == 'max' else ''} |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="also write the counts as JSON")
    args = p.parse_args(argv)
    text, rows = table()
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
