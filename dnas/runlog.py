"""Run-directory outputs shared by search and retrain: ``metrics.csv`` (one row per
epoch, rewritten atomically so a resumed run continues it), TensorBoard events, and
PNG plots (``plots/curves.png``: the grid of :mod:`dnas.viz.curves`, paper Appendix A).
Only rank 0 writes.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Mapping, Sequence

from dnas.io import atomic_write_text

log = logging.getLogger(__name__)


def read_csv_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_csv_rows(path: Path, rows: Sequence[Mapping]) -> None:
    """Write ``rows`` (dicts; the union of their keys in first-seen order) atomically."""
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def recorded_row(row: Mapping) -> dict:
    """A ``metrics.csv`` row as numbers, what the file gives back (an empty cell left out):
    ``epoch`` and counts (``num_*``) as ints, other numbers as floats at the precision
    written (:func:`_fmt`), anything else as text."""
    out: dict = {}
    for key, value in row.items():
        text = _fmt(value) if isinstance(value, float) else value
        if text is None or text == "":
            continue
        text = str(text)
        try:
            out[key] = int(float(text)) if key == "epoch" or "num_" in key else float(text)
        except ValueError:
            out[key] = text
    return out


class RunLogger:
    """Per-epoch metrics to CSV + TensorBoard.

    Args:
        run_dir: the run directory.
        enabled: False on ranks other than 0 (everything becomes a no-op).
        csv_name: name of the per-epoch CSV.
    """

    def __init__(self, run_dir: Path, enabled: bool = True, csv_name: str = "metrics.csv"):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.csv_path = self.run_dir / csv_name
        self.rows = read_csv_rows(self.csv_path) if enabled else []
        self._tb = None

    def truncate(self, epochs_done: int) -> None:
        """Keep the rows of the first ``epochs_done`` epochs (numbered from 1); a resume redoes the rest."""
        self.rows = [r for r in self.rows if int(r["epoch"]) <= epochs_done]

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        return self._tb

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"epoch": epoch, **{k: _fmt(v) for k, v in metrics.items()}}
        self.rows = [r for r in self.rows if int(r["epoch"]) != epoch] + [row]
        write_csv_rows(self.csv_path, self.rows)
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(k, v, epoch)
        self.tb.flush()

    def history(self) -> list[dict]:
        """Every epoch logged (a resumed run's earlier ones from the file) as numbers
        (:func:`recorded_row`)."""
        return [recorded_row(r) for r in self.rows]

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_curves(rows: Sequence[Mapping], keys: Sequence[str], path: Path, title: str) -> None:
    """The per-epoch rows as a labelled grid of panels (:mod:`dnas.viz.curves`), written
    atomically as PNG; nothing is written when no key has a value yet.

    Args:
        rows: per-epoch metric rows (``metrics.csv``).
        keys: the columns to draw; related ones share a panel, fractions are drawn in
            percent, values not measured (empty, NaN, a term off in warm-up) are left out.
        path: the PNG to write.
        title: the figure title.
    """
    from dnas.viz.curves import curve_panels, draw_curves

    fig = draw_curves(curve_panels(rows, keys), title)
    if fig is not None:
        save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    from dnas.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
