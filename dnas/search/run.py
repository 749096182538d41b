"""Running a search end to end: data, latency model, the epoch loop with checkpoints,
held-out evaluation, metrics / TensorBoard / plots, and the final architecture.

Run directory: ``config.yaml`` (resolved), ``metrics.csv``, ``tensorboard/``,
``arch_history.csv``, ``plots/arch_heatmap.png`` and ``plots/curves.png``,
``checkpoint-last.pt`` / ``checkpoint-best.pt``, ``final_arch.yaml`` (argmax), ready
for ``dnas-derive RUN_DIR``, ``data_fingerprint.json`` (the data set's counts against
the published ones, :mod:`dnas.data.fingerprint`) and ``summary.json`` (which split each
figure comes from, and the data fingerprint).

Model selection: ``checkpoint-best.pt`` is the epoch with the best ``val_mAP``, on the
validation query/gallery carved from the training identities (``val_ids_fraction``;
:mod:`dnas.data.protocol`); the test query/gallery is evaluated after the last epoch
(``test_*``), or at every evaluation with ``eval_test_every_epoch`` (curves only).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path


from dnas.data.fingerprint import FILE_NAME as FINGERPRINT_FILE
from dnas.errors import DnasError
from dnas.ib import evaluate_model_ib
from dnas.io import atomic_write_yaml
from dnas.runlog import read_csv_rows
from dnas.runtime import Runtime
from dnas.search.config import SearchConfig
from dnas.search.loop import Searcher

log = logging.getLogger(__name__)
CURVES = ["weights_loss", "arch_loss", "ibb_epoch", "ib_loss", "expected_latency_ms", "val_mAP", "test_mAP", "tau"]


def build_search_data(cfg: SearchConfig, rt: Runtime):
    """Loaders with the weight/architecture split (by image; see ``split_weight_arch``)."""
    from dnas.data.loaders import DataConfig, build_loaders

    space = cfg.load_space()
    dcfg = DataConfig.reid_from_recipe(cfg, height=cfg.height or space.input_size[1],
                                       width=cfg.width or space.input_size[2],
                                       test_batch_size=max(cfg.batch_size, 32), rank=rt.rank,
                                       world_size=rt.world_size, arch_fraction=cfg.arch_fraction)
    data = build_loaders(dcfg)
    if data.task != "reid":
        raise DnasError(f"--data {cfg.data}: the search needs a Re-ID data set (identities for the triplet loss)")
    if rt.is_main:
        log.info("data:\n%s", data.splits.summary())
        log.info("%s", data.validation.summary_line() if data.validation is not None else
                 "no validation split (val_ids_fraction=0): checkpoint-best.pt by the lowest arch-split loss")
        log.info("%s", data.arch_split_summary)
    return data


DDP_PROFILE_BUDGET_S = 480.0  # a profile on rank 0 must end within the other ranks' collective timeout (10 min)


def build_latency_cost(cfg: SearchConfig, device="cpu", progress: bool = True, allow_profile: bool = True,
                       budget_cap_s: float | None = None):
    """The search's latency cost, a :class:`dnas.latency.auto.LatencyCost`: the one a run
    recorded (``cfg.latency_source``: a resumed run, a derive), else resolved from
    ``latency_table`` (``auto``, a path or ``none``; :mod:`dnas.latency.auto`)."""
    from dnas.latency.auto import load_latency_source, resolve_latency_cost

    space = cfg.load_space()
    if cfg.latency_source:
        return load_latency_source(cfg.latency_source, space, bnneck=cfg.bnneck)
    return resolve_latency_cost(cfg.latency_table, space, device, supernet=cfg.supernet, batch=cfg.batch_size,
                                amp=cfg.amp, channels_last=cfg.channels_last, bnneck=cfg.bnneck,
                                budget_s=cfg.latency_profile_budget_s if allow_profile else 0,
                                budget_cap_s=budget_cap_s, progress=progress)


def build_latency_model(cfg: SearchConfig, num_classes: int = 0):
    """The differentiable latency model of the run's cost, or ``None`` (never profiles)."""
    return build_latency_cost(cfg, allow_profile=False).model


def _resolve_cost(cfg: SearchConfig, rt: Runtime, progress: bool):
    """:func:`build_latency_cost` on rank 0 (which profiles, if it comes to that); the other
    ranks load the source rank 0 found, so that every rank has the same cost."""
    if not rt.distributed:
        cost = build_latency_cost(cfg, rt.device, progress)
    else:
        import torch.distributed as dist

        from dnas.latency.auto import load_latency_source

        box: list = [None]
        if rt.is_main:
            try:
                cost = build_latency_cost(cfg, rt.device, progress, budget_cap_s=DDP_PROFILE_BUDGET_S)
                box = [cost.source]
            except Exception as exc:
                box = [f"error:{exc}"]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        if box[0].startswith("error:"):
            raise DnasError(f"rank 0 could not set up the latency cost: {box[0][6:]}")
        if not rt.is_main:
            cost = load_latency_source(box[0], cfg.load_space(), bnneck=cfg.bnneck)
    if rt.is_main:
        if cost.kind in ("none", "proxy"):
            log.warning("latency cost: %s: %s", cost.source, cost.note)
        else:
            log.info("latency cost: %s (%s)", cost.source, cost.note)
    return cost


def _write_final_arch(s: Searcher, run_dir: Path) -> None:
    from dnas.models.derive import derive_arch

    arch = derive_arch(s.net, name=f"{s.space.name}-searched")
    atomic_write_yaml(run_dir / "final_arch.yaml", arch)


def run_search(cfg: SearchConfig, run_dir: Path, resume: bool = False, progress: bool = True,
               overwrite: bool = False) -> Path:
    """Run (or resume) a search into ``run_dir``; returns the run directory.

    The data and the latency table are checked before ``run_dir`` is created (or, with
    ``overwrite``, before the old search run in it is deleted): a bad input leaves nothing.
    """
    from dnas.engine.run import run_in_dir

    def build(cfg: SearchConfig, rt: Runtime):
        data = build_search_data(cfg, rt)
        if not resume:  # written by the run; only a resumed run keeps the one it recorded
            cfg = dataclasses.replace(cfg, latency_source=None)
        cost = _resolve_cost(cfg, rt, progress)
        cfg = dataclasses.replace(cfg, latency_source=cost.source)
        return Searcher(cfg, run_dir, rt, data, cost.model, progress=progress), cfg, {
            FINGERPRINT_FILE: {"data": cfg.data, "data_fingerprint": data.splits.fingerprint}}

    def finish(s: Searcher, cfg: SearchConfig, rt: Runtime) -> Path:
        if rt.distributed:
            _check_ranks_agree(s, run_dir, rt)
        if rt.is_main:
            _write_final_arch(s, run_dir)
            _write_summary(s, cfg, run_dir)
        return run_dir

    run_dir = Path(run_dir)
    return run_in_dir(cfg, run_dir, output_kind="search-run", resume=resume, overwrite=overwrite, build=build,
                      finish=finish, curves=CURVES)


def _check_ranks_agree(s: Searcher, run_dir: Path, rt: Runtime) -> None:
    """Every rank must end with the same architecture parameters (DDP); rank 0 records it."""
    import hashlib

    import torch.distributed as dist

    digest = hashlib.sha256()
    for p in s.net.arch_parameters():
        digest.update(p.detach().cpu().double().numpy().tobytes())
    mine = {"rank": rt.rank, "arch_sha256": digest.hexdigest(), "argmax": s.net.argmax_indices()}
    every: list = [None] * rt.world_size
    dist.all_gather_object(every, mine)
    if rt.is_main:
        from dnas.io import atomic_write_json

        atomic_write_json(run_dir / "ddp_check.json", {"world_size": rt.world_size, "ranks": every})
    if len({e["arch_sha256"] for e in every}) != 1:
        raise DnasError(f"architecture parameters differ between ranks: {[e['arch_sha256'][:12] for e in every]}")


def _write_summary(s: Searcher, cfg: SearchConfig, run_dir: Path) -> None:
    """``summary.json``: the final test figures, the selected epoch, and which split is which."""
    from dnas.io import atomic_write_json

    rows = read_csv_rows(run_dir / "metrics.csv")
    last = rows[-1] if rows else {}
    key = "val_mAP" if s.data.validation is not None else "arch_loss"
    scored = [r for r in rows if r.get(key) not in (None, "")]
    if key == "arch_loss":
        scored = [r for r in scored if int(r["epoch"]) > cfg.warmup_epochs]  # epochs from 1
    best = (max(scored, key=lambda r: float(r[key])) if key == "val_mAP"
            else min(scored, key=lambda r: float(r[key]))) if scored else {}
    pick = {k: _num(k, v) for k, v in best.items() if (k.startswith("val_") or k == key) and v not in (None, "")}
    ib = evaluate_model_ib(s.net, s.data.train_eval, s.rt.device, cfg.ib_temperature, choice=s.net.probs_choice())
    log.info("IB of the supernet (expected architecture) on the %s: IB loss %.4f, IBB (bound) %.4f",
             ib["split"], ib["ib"], ib["ibb"])
    from dnas.search.result import search_result

    atomic_write_json(run_dir / "summary.json", {
        "found": search_result(s.net, s.latency),
        "found_note": "the argmax architecture beside the space's widest and smallest: parameters without the "
                      "classifier, MACs (fvcore), expected latency of the run's cost; confidence per axis, relative "
                      "to each choice's number of options n: normalised entropy H(p)/log(n) (0: one option "
                      "certain, 1: uniform), mean and highest, and the margin of the top option's probability "
                      "over the second's, mean and lowest; decided: choices whose normalised entropy is <= 0.5",
        "ib_loss": ib["ib"], "ibb": ib["ibb"], "ib_final": ib,
        "data": cfg.data,
        "data_note": s.data.splits.note,
        "data_fingerprint": s.data.splits.fingerprint,
        "test": {k[5:]: _num(k, v) for k, v in last.items() if k.startswith("test_") and v not in (None, "")},
        "test_note": "test query/gallery, after the last epoch; the supernet under its expected architecture "
                     "(softmax of the logits); never used for selection",
        "checkpoint_best": {"epoch": int(best["epoch"]) if best else None, "selected_by": key, **pick},
        "checkpoint_best_note": ("validation split: identities held out of training, query/gallery style"
                                 if key == "val_mAP" else "no validation split: the lowest arch-split loss"),
        "validation": s.data.validation.to_dict() if s.data.validation is not None else None,
        "arch_split": s.data.arch_split_stats,
        "epochs": cfg.epochs,
        "latency_cost": cfg.latency_source,
        "latency_cost_note": LATENCY_NOTES.get(str(cfg.latency_source).split(":", 1)[0], ""),
    })
    log.info("summary.json: test split after the last epoch %s; checkpoint-best.pt: epoch %s by %s",
             {k[5:]: _num(k, last[k]) for k in ("test_mAP", "test_rank1") if last.get(k)}, best.get("epoch"), key)


LATENCY_NOTES = {
    "table": "expected latency from a measured latency table (the path)",
    "profiled": "expected latency from a table profiled on this machine on first use (the cached path)",
    "proxy": "no latency table for this device and space: the cost was the MACs of the ops (pseudo-ms, "
             "dnas.latency.proxy), not measured time",
    "none": "no latency cost (latency_table: none)",
}


def _num(key: str, v) -> float | int:
    """A metrics.csv cell as a number (counts as ints)."""
    return int(float(v)) if "num_" in key else float(v)
