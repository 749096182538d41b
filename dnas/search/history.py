"""Architecture probabilities over the search: ``arch_history.csv`` (one row per epoch,
the probability of every choice) and the heatmap plot (one panel per width group and
one per row's mean expansion distribution, options x epochs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from dnas.models.supernet import Supernet
from dnas.runlog import save_figure


def arch_probability_row(net: Supernet) -> dict[str, float]:
    """``{column: probability}`` for every width option and every block's expansion option."""
    row: dict[str, float] = {}
    probs = net.probs_choice()
    space = net.space
    for g, p in enumerate(probs.width):
        for opt, v in zip(space.group_options[g], p.tolist()):
            row[f"width_g{g}_{opt}"] = round(v, 6)
    for b, p in zip(space.blocks, probs.expansion):
        for e, m, v in zip(b.expansion, b.mid_options, p.tolist()):
            row[f"exp_s{b.stage + 1}b{b.block}_{e:g}_mid{m}"] = round(v, 6)
    return row


def plot_arch_heatmaps(rows: Sequence[dict], net: Supernet, path: Path) -> None:
    """Heatmaps of option probabilities over epochs, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    space = net.space
    epochs = [int(r["epoch"]) for r in rows]
    panels = []
    for g, opts in enumerate(space.group_options):
        rows_in = [s + 1 for s, gg in enumerate(space.stage_group) if gg == g]
        mat = [[float(r[f"width_g{g}_{o}"]) for r in rows] for o in opts]
        panels.append((f"width, rows {rows_in[0]}-{rows_in[-1]}", [str(o) for o in opts], mat))
    for s in range(len(space.stages)):
        blocks = [b for b in space.blocks if b.stage == s]
        exp = blocks[0].expansion
        if len(exp) < 2:
            continue
        mat = []
        for i, e in enumerate(exp):
            line = []
            for r in rows:
                vals = [float(r[f"exp_s{s + 1}b{b.block}_{b.expansion[i]:g}_mid{b.mid_options[i]}"]) for b in blocks]
                line.append(sum(vals) / len(vals))
            mat.append(line)
        panels.append((f"expansion, row {s + 1} (mean of {len(blocks)})", [f"{e:g}" for e in exp], mat))
    cols = 4
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 2.8 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, labels, mat) in zip(axes.flat, panels):
        im = ax.imshow(torch.tensor(mat).numpy(), aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xticks(range(len(epochs)))
        ax.set_xticklabels(epochs, fontsize=7)
        ax.set_xlabel("epoch", fontsize=8)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="probability")
    save_figure(fig, path)
