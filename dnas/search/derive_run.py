"""``dnas-derive RUN_DIR``: export the argmax architecture of a search run, or its K most
probable distinct architectures, with weights sliced from the supernet checkpoint.

The probability of an architecture is the product of its option probabilities over
every choice axis (width, expansion, kernel, ...: the factors are independent
softmaxes), so the exact top K is found by merging the factors one at a time and
keeping the K best partial products.
"""
from __future__ import annotations

import heapq
import logging
import math
from pathlib import Path

import torch

from dnas.errors import DnasError
from dnas.latency.whole_net import measured_latency_summary
from dnas.models import Supernet, derive_plain
from dnas.outputs import DERIVED, SEARCH_RUN, atomic_directory, require_kind
from dnas.runlog import write_csv_rows

log = logging.getLogger(__name__)


def top_k_indices(net: Supernet, k: int) -> list[tuple[float, dict]]:
    """The ``k`` most probable index choices as ``(log_prob, indices)``, best first."""
    probs = net.probs_choice()
    factors = [(axis, torch.log(p.detach().double()).tolist()) for axis, ps in probs.items() for p in ps]
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for _, logps in factors:
        cand = [(lp + lq, choice + (j,)) for lp, choice in beams for j, lq in enumerate(logps)]
        beams = heapq.nlargest(k, cand, key=lambda c: c[0])
    out = []
    for lp, flat in beams:
        indices: dict[str, list[int]] = {axis: [] for axis in probs}
        for (axis, _), j in zip(factors, flat):
            indices[axis].append(j)
        out.append((lp, indices))
    return out


def load_search_run(run_dir: Path, checkpoint: str) -> tuple[Supernet, object]:
    from dnas.config import load_config
    from dnas.engine import load_checkpoint
    from dnas.search.config import SearchConfig

    if not run_dir.is_dir():
        raise DnasError(f"{run_dir}: run directory not found")
    require_kind(run_dir, (SEARCH_RUN,), "dnas-derive RUN")
    if not (run_dir / "config.yaml").is_file():
        raise DnasError(f"{run_dir}: not a dnas-search run directory (no config.yaml)")
    cfg = load_config(SearchConfig, run_dir / "config.yaml")
    state = load_checkpoint(run_dir, SEARCH_RUN, which=checkpoint)
    net = Supernet(cfg.load_space(), num_classes=int(state["num_classes"]), bnneck=cfg.bnneck)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DnasError(f"{run_dir}: checkpoint does not fit space {cfg.supernet!r} "
                        f"({str(exc).splitlines()[0]})") from None
    return net.eval(), cfg


def derive_from_run(run_dir: Path, out: Path, top_k: int = 1, checkpoint: str = "last", onnx: bool = True,
                    overwrite: bool = False, measure: bool = True) -> list[dict]:
    """Export the argmax arch (``top_k == 1``: into ``out``) or the top K (``out/rank{i}``).

    With ``measure``, each net is also timed with its latency table's protocol when the
    table's device and runtime are this machine's
    (:func:`dnas.latency.whole_net.measured_latency_summary`).

    Returns:
        The summary dict of every exported architecture.
    """
    from dnas.export import export_derived
    from dnas.search.run import build_latency_cost

    net, cfg = load_search_run(Path(run_dir), checkpoint)
    try:  # the cost the search ran with (never profiled here)
        cost = build_latency_cost(cfg, allow_profile=False)
        latency, lut_source = cost.model, cost.source
        measured_table = cost.table if measure and cost.kind in ("table", "profiled") else None
    except DnasError:
        latency, lut_source = None, None  # the table moved or changed; export without latency figures
        measured_table = None
    probs = net.probs_choice()
    distinct = math.prod(len(p) for p in probs.tensors())
    if top_k > distinct:
        log.warning("--top-k %d: space %r has only %d distinct architectures; exporting all %d", top_k,
                    net.space.name, distinct, distinct)
    ranked = top_k_indices(net, min(top_k, distinct))
    summaries, rows = [], []
    with atomic_directory(out, overwrite=overwrite, kind=DERIVED, inputs=(run_dir,)) as tmp:
        for rank, (logp, idx) in enumerate(ranked, 1):
            name = f"{net.space.name}-searched" + (f"-top{rank}" if top_k > 1 else "")
            arch, plain = derive_plain(net, idx, name=name)
            extra = {"derived_from": str(Path(run_dir).resolve()), "checkpoint": checkpoint,
                     "probability": math.exp(logp), "rank": rank}
            if latency is not None:
                extra["lut_latency_ms"] = float(latency.expected_ms(net.onehot_choice(idx)))
                extra["lut_source"] = lut_source  # proxy:macs: pseudo-ms from MACs, not measured
            if measured_table is not None:
                extra.update(measured_latency_summary(plain, measured_table, plain.arch.input_size))
            target = tmp / f"rank{rank}" if top_k > 1 else tmp / "model"
            summary = export_derived(target, arch, plain, onnx=onnx, extra_summary=extra)
            summaries.append(summary)
            rows.append({"rank": rank, "name": name, "probability": f"{math.exp(logp):.6g}",
                         "lut_latency_ms": f"{extra.get('lut_latency_ms', float('nan')):.6g}",
                         "params": summary["params"], "macs": summary["macs"], "dir": target.name})
        if top_k == 1:  # a single arch: its files directly in ``out``
            for f in (tmp / "model").iterdir():
                f.rename(tmp / f.name)
            (tmp / "model").rmdir()
        else:
            write_csv_rows(tmp / "top_k.csv", rows)
    return summaries
