"""Architecture probabilities over the search (paper section 3.4; the searched choices of
Tables III/IV): ``arch_history.csv`` (one row per epoch, the probability of every option
of every choice axis) and ``plots/arch_heatmap.png`` (one panel per axis: the latest
probabilities, one line per Table row/block, one cell per option).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dnas.models.supernet import Supernet
from dnas.runlog import save_figure
from dnas.space import SearchSpace

AXIS_TITLES = {"width": "channels (width group)", "expansion": "expansion rate", "kernel": "kernel size"}
# a cell's option value is written on it up to this many lines and options per panel
MAX_ANNOTATED_LINES, MAX_ANNOTATED_OPTIONS = 40, 14


def _group_label(space: SearchSpace, g: int) -> str:
    rows = [s + 1 for s, gg in enumerate(space.stage_group) if gg == g]
    return f"row {rows[0]}" if len(rows) == 1 else f"rows {rows[0]}-{rows[-1]}"


def _value(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def probability_columns(space: SearchSpace) -> dict[str, list[tuple[str, list[tuple[str, str]]]]]:
    """``{axis: [(unit label, [(option label, CSV column), ...]) per unit]}``.

    Columns: ``width_g{group}_{channels}``, ``exp_s{row}b{block}_{rate}_mid{mid}`` and
    ``{axis}_s{row}b{block}_{value}`` for op-kwarg axes (rows 1-based as in Tables III/IV,
    blocks 0-based).
    """
    out: dict[str, list] = {}
    for name, axis in space.axes.items():
        units = []
        for u, opts in enumerate(axis.options):
            if axis.unit == "group":
                units.append((_group_label(space, u), [(str(o), f"width_g{u}_{o}") for o in opts]))
                continue
            b = space.blocks[u]
            label = f"row {b.stage + 1} block {b.block + 1}"
            if name == "expansion":
                cells = [(f"{e:g}", f"exp_s{b.stage + 1}b{b.block}_{e:g}_mid{m}") for e, m in zip(opts, b.mid_options)]
            else:
                cells = [(_value(v), f"{name}_s{b.stage + 1}b{b.block}_{_value(v)}") for v in opts]
            units.append((label, cells))
        out[name] = units
    return out


def arch_probability_row(net: Supernet) -> dict[str, float]:
    """``{column: probability}`` for every option of every axis (see :func:`probability_columns`)."""
    probs = net.probs_choice()
    row: dict[str, float] = {}
    for name, units in probability_columns(net.space).items():
        for (_, cells), p in zip(units, probs[name]):
            for (_, column), v in zip(cells, p.tolist()):
                row[column] = round(v, 6)
    return row


def plot_arch_heatmaps(rows: Sequence[dict], net: Supernet, path: Path) -> None:
    """One heatmap per choice axis of the latest row's probabilities, written atomically as PNG.

    A panel has one line per unit with several options (a width group, named by its Table
    rows, or a block, ``row r block j``) and one cell per option, labelled with the option
    value (channels, expansion rate, kernel size); the colour scale spans the panel's
    values (its colour bar), and a box marks each line's most probable option.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle

    if not rows:
        return
    last = rows[-1]
    panels = []
    for name, units in probability_columns(net.space).items():
        units = [(label, cells) for label, cells in units if len(cells) > 1]  # single options are no choice
        if units:
            panels.append((name, units))
    if not panels:
        return
    heights = [max(2.0, 0.24 * len(units) + 1.2) for _, units in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), max(heights)), squeeze=False,
                             layout="constrained")
    for ax, (name, units) in zip(axes[0], panels):
        width = max(len(cells) for _, cells in units)
        mat = np.full((len(units), width), np.nan)
        for i, (_, cells) in enumerate(units):
            mat[i, :len(cells)] = [float(last[column]) for _, column in cells]
        lo, hi = np.nanmin(mat), np.nanmax(mat)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")  # grey: no such option
        im = ax.imshow(np.ma.masked_invalid(mat), aspect="auto", cmap=cmap, vmin=lo, vmax=max(hi, lo + 1e-6))
        annotate = len(units) <= MAX_ANNOTATED_LINES and width <= MAX_ANNOTATED_OPTIONS
        for i, (_, cells) in enumerate(units):
            best = int(np.nanargmax(mat[i]))
            ax.add_patch(Rectangle((best - 0.42, i - 0.4), 0.84, 0.8, fill=False, edgecolor="red", linewidth=1.6))
            if annotate:
                for j, (text, _) in enumerate(cells):
                    bright = (mat[i, j] - lo) / max(hi - lo, 1e-12) > 0.6
                    ax.text(j, i, text, ha="center", va="center", fontsize=6, color="black" if bright else "white")
        ax.set_yticks(range(len(units)))
        ax.set_yticklabels([label for label, _ in units], fontsize=7)
        ax.set_xticks(range(width))
        ax.set_xticklabels([str(j + 1) for j in range(width)], fontsize=7)
        ax.set_xlabel("option (cell: its value; box: most probable)", fontsize=8)
        ax.set_title(f"{AXIS_TITLES.get(name, name)}, epoch {last['epoch']}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8, label="probability")
    save_figure(fig, path)
