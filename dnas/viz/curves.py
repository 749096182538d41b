"""Training curves of a run as a labelled grid (paper Appendix A: IBB and test-loss
curves during training).

One panel per quantity, related columns of ``metrics.csv`` drawn together (the weight
loss and its CE/triplet parts, the IBB as loss term and as the epoch's measurement,
validation and test mAP, ...), each with a title, a y label with its unit and the
epoch on the x axis. Retrieval figures and accuracies are stored as fractions and
drawn in percent, as the console prints them. A value that was not measured is not
drawn: an empty cell, NaN, and for the quantities that are switched off in warm-up
epochs (the architecture-split losses, the IBB terms) an exact ``0`` (the search and
retraining write ``0`` for a loss term that had no step). Present points are joined,
so a validation curve evaluated every few epochs stays a line.

:func:`curve_panels` returns the numbers behind the figure (also written by
``dnas-visualize curves`` as JSON); :func:`draw_curves` draws them;
``dnas.runlog.plot_curves`` (search and retrain, ``plots/curves.png``) uses both.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of the grid.

    Attributes:
        title: the panel title.
        ylabel: the y axis label with its unit.
        series: ``(column, legend label)`` pairs drawn in this panel.
        percent: the columns are fractions drawn as percent.
        log_y: logarithmic y axis (learning rates of different scales).
    """

    title: str
    ylabel: str
    series: tuple[tuple[str, str], ...]
    percent: bool = False
    log_y: bool = False


PANELS: tuple[Panel, ...] = (
    Panel("Training loss (weight steps)", "loss", (("loss", "total"), ("weights_loss", "total"),
                                                   ("ce", "cross-entropy"), ("weights_ce", "cross-entropy"),
                                                   ("triplet", "triplet"), ("weights_triplet", "triplet"))),
    Panel("Architecture-split loss", "loss (with latency cost)", (("arch_loss", "total"), ("arch_ce", "cross-entropy"),
                                                                  ("arch_triplet", "triplet"))),
    Panel("Validation loss", "loss", (("val_loss", "cross-entropy"),)),
    Panel("IB bound (IBB)", "nats", (("ibb", "loss term (mean of steps)"), ("weights_ibb", "loss term, weight steps"),
                                     ("arch_ibb", "loss term, arch steps"), ("ibb_epoch", "epoch measurement"))),
    Panel("IB loss I(X;F) - I(F;Y)", "nats", (("ib_loss", "IB loss"),)),
    Panel("Mutual information", "nats", (("i_xf", "I(X;F)"), ("i_fy", "I(F;Y)"))),
    Panel("mAP", "mAP (%)", (("val_mAP", "validation"), ("test_mAP", "test")), percent=True),
    Panel("Rank-1", "rank-1 (%)", (("val_rank1", "validation"), ("test_rank1", "test")), percent=True),
    Panel("mINP", "mINP (%)", (("val_mINP", "validation"), ("test_mINP", "test")), percent=True),
    Panel("Accuracy", "accuracy (%)", (("train_acc", "training batches"), ("weights_acc", "weight split"),
                                       ("arch_acc", "architecture split"), ("top1", "val top-1"),
                                       ("top5", "val top-5")), percent=True),
    Panel("Expected latency", "latency (ms, lookup table)", (("expected_latency_ms", "expected"),
                                                              ("sampled_latency_ms", "sampled"),
                                                              ("argmax_latency_ms", "argmax arch"))),
    Panel("Gumbel temperature", "tau", (("tau", "tau"),)),
    Panel("Learning rate", "learning rate", (("lr", "weights"), ("w_lr", "weights"), ("a_lr", "architecture")),
          log_y=True),
)
KNOWN_COLUMNS = {col for p in PANELS for col, _ in p.series}
# terms that are off in warm-up epochs, where the run writes 0: an exact 0 is "not measured"
ZERO_IS_MISSING = frozenset({"arch_loss", "arch_ce", "arch_triplet", "arch_acc", "ibb", "weights_ibb", "arch_ibb"})


def _value(raw, zero_is_missing: bool) -> float | None:
    """A plotted value, or ``None`` for an empty cell, NaN, inf or a 'not measured' 0."""
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v) or (zero_is_missing and v == 0.0):
        return None
    return v


def curve_panels(rows: Sequence[Mapping], keys: Sequence[str] | None = None) -> list[dict]:
    """The panels of the grid with the values they draw.

    Args:
        rows: per-epoch rows (``metrics.csv`` as dicts; values as strings or numbers).
        keys: the columns to draw (default: every column a panel knows). A column no
            panel knows gets a panel of its own, titled by its name.

    Returns:
        ``[{"title", "ylabel", "log_y", "legend", "series": [{"column", "label", "epochs",
        "values"}]}]``: only panels with at least one drawn value; percent columns are
        already multiplied by 100; missing values are left out.
    """
    wanted = list(keys) if keys is not None else sorted(KNOWN_COLUMNS)
    panels = list(PANELS) + [Panel(k, k, ((k, k),)) for k in wanted if k not in KNOWN_COLUMNS and k != "epoch"]
    out = []
    for panel in panels:
        series = []
        for col, label in panel.series:
            if col not in wanted:
                continue
            pts = [(int(float(r["epoch"])), _value(r.get(col), col in ZERO_IS_MISSING)) for r in rows]
            pts = [(e, v * (100.0 if panel.percent else 1.0)) for e, v in pts if v is not None]
            if pts:
                series.append({"column": col, "label": label, "epochs": [e for e, _ in pts],
                               "values": [v for _, v in pts]})
        if series:
            out.append({"title": panel.title, "ylabel": panel.ylabel, "log_y": panel.log_y, "series": series,
                        "legend": len(panel.series) > 1})  # a label that tells which of the panel's columns
    return out


def grid_shape(n: int, max_cols: int = 3) -> tuple[int, int]:
    """``(rows, cols)`` of a grid holding ``n`` panels, at most ``max_cols`` wide."""
    cols = max(1, min(max_cols, n))
    return math.ceil(n / cols), cols


def draw_curves(panels: Sequence[Mapping], title: str):
    """A matplotlib figure of :func:`curve_panels`' panels (``None`` without panels)."""
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    nrows, ncols = grid_shape(len(panels))
    epochs = [e for p in panels for s in p["series"] for e in s["epochs"]]
    first, last = min(epochs), max(epochs)  # every panel spans the run, a last-epoch test point included
    pad = max(0.5, 0.03 * (last - first))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        for s in panel["series"]:
            ax.plot(s["epochs"], s["values"], marker="o", ms=3.5, label=s["label"])
        ax.set_title(panel["title"], fontsize=11)
        ax.set_ylabel(panel["ylabel"])
        ax.set_xlabel("epoch")
        if panel["log_y"] and all(v > 0 for s in panel["series"] for v in s["values"]):
            ax.set_yscale("log")
        ax.set_xlim(first - pad, last + pad)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if panel.get("legend", len(panel["series"]) > 1):
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.3 * nrows)))  # room for the title
    return fig
