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
from dnas.engine.metrics import metric_column
from dnas.engine.result import RunResult
from dnas.engine.run import TrainingRun
from dnas.errors import DnasError
from dnas.io import atomic_write_json, atomic_write_yaml
from dnas.models.derive import derive_arch
from dnas.outputs import SEARCH_RUN
from dnas.runtime import Runtime
from dnas.search.config import SearchConfig
from dnas.search.loop import PHASES, Searcher
from dnas.search.summary import search_summary

log = logging.getLogger(__name__)
CURVES = (*(metric_column(phase, "loss", PHASES) for phase in PHASES), "ibb_epoch", "ib_loss", "expected_latency_ms",
          "val_mAP", "test_mAP", "tau")


def build_search_data(cfg: SearchConfig, rt: Runtime, space=None):
    """Loaders with the weight/architecture split (by image; see ``split_weight_arch``);
    ``space``: the recipe's (default: loaded from ``cfg``)."""
    from dnas.data.loaders import ReIDDataConfig, build_loaders, parse_data_spec

    space = space if space is not None else cfg.load_space()
    dcfg = ReIDDataConfig.from_recipe(cfg, height=cfg.height or space.input_size[1],
                                      width=cfg.width or space.input_size[2],
                                      test_batch_size=max(cfg.batch_size, 32), rank=rt.rank,
                                      world_size=rt.world_size, arch_fraction=cfg.arch_fraction)
    if dcfg.task != parse_data_spec(dcfg.data).task:  # before anything is read
        raise DnasError(f"--data {cfg.data}: the search needs a Re-ID data set (identities for the triplet loss)")
    data = build_loaders(dcfg)
    if rt.is_main:
        log.info("data:\n%s", data.splits.summary())
        log.info("%s", data.validation.summary_line() if data.validation is not None else
                 "no validation split (val_ids_fraction=0): checkpoint-best.pt by the lowest arch-split loss")
        log.info("%s", data.arch_split_summary)
    return data


DDP_PROFILE_BUDGET_S = 480.0  # a profile on rank 0 must end within the other ranks' collective timeout (10 min)


def build_latency_cost(cfg: SearchConfig, device="cpu", progress: bool = True, allow_profile: bool = True,
                       budget_cap_s: float | None = None, space=None, use_recorded: bool = True):
    """The search's latency cost, a :class:`dnas.latency.auto.LatencyCost`: the one a run
    recorded (``cfg.latency_source``, with ``use_recorded``: a resumed run, a derive), else
    resolved from ``latency_table`` (``auto``, a path or ``none``; :mod:`dnas.latency.auto`).
    ``space``: the recipe's (default: loaded from ``cfg``)."""
    from dnas.latency.auto import load_latency_source, resolve_latency_cost

    space = space if space is not None else cfg.load_space()
    if use_recorded and cfg.latency_source:
        return load_latency_source(cfg.latency_source, space, bnneck=cfg.bnneck)
    return resolve_latency_cost(cfg.latency_table, space, device, supernet=cfg.supernet, batch=cfg.batch_size,
                                amp=cfg.amp, channels_last=cfg.channels_last, bnneck=cfg.bnneck,
                                budget_s=cfg.latency_profile_budget_s if allow_profile else 0,
                                budget_cap_s=budget_cap_s, progress=progress)


def build_latency_model(cfg: SearchConfig, num_classes: int = 0):
    """The differentiable latency model of the run's cost, or ``None`` (never profiles)."""
    return build_latency_cost(cfg, allow_profile=False).model


def _resolve_cost(cfg: SearchConfig, rt: Runtime, progress: bool, space=None, use_recorded: bool = True):
    """:func:`build_latency_cost` on rank 0 (which profiles, if it comes to that); the other
    ranks load the source rank 0 found, so that every rank has the same cost."""
    space = space if space is not None else cfg.load_space()
    if not rt.distributed:
        cost = build_latency_cost(cfg, rt.device, progress, space=space, use_recorded=use_recorded)
    else:
        import torch.distributed as dist

        from dnas.latency.auto import load_latency_source

        box: list = [None]
        if rt.is_main:
            try:
                cost = build_latency_cost(cfg, rt.device, progress, budget_cap_s=DDP_PROFILE_BUDGET_S, space=space,
                                          use_recorded=use_recorded)
                box = [cost.source]
            except Exception as exc:
                box = [f"error:{exc}"]
                dist.broadcast_object_list(box, src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        if box[0].startswith("error:"):
            raise DnasError(f"rank 0 could not set up the latency cost: {box[0][6:]}")
        if not rt.is_main:
            cost = load_latency_source(box[0], space, bnneck=cfg.bnneck)
    if rt.is_main:
        if cost.kind in ("none", "proxy"):
            log.warning("latency cost: %s: %s", cost.source, cost.note)
        else:
            log.info("latency cost: %s (%s)", cost.source, cost.note)
    return cost


class SearchRun(TrainingRun):
    """A search in its directory, driven by :func:`run_search` (the arguments:
    :class:`dnas.engine.run.TrainingRun`; ``space``: the recipe's space when the caller
    has loaded it, else loaded here, once for the run)."""

    kind = SEARCH_RUN
    curves = CURVES

    def __init__(self, cfg: SearchConfig, run_dir: Path, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, space=None):
        super().__init__(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress)
        self.space = space if space is not None else self.cfg.load_space()
        self.data = None

    def build_engine(self) -> Searcher:
        """The data, the latency cost (recorded in the config: a resumed run keeps its own)
        and the searcher."""
        self.data = build_search_data(self.cfg, self.rt, self.space)
        cost = _resolve_cost(self.cfg, self.rt, self.progress, self.space, use_recorded=self.resume)
        self.cfg = dataclasses.replace(self.cfg, latency_source=cost.source)
        return Searcher(self.cfg, self.run_dir, self.rt, self.data, cost.model, progress=self.progress,
                        space=self.space)

    def start_files(self) -> dict:
        return {FINGERPRINT_FILE: {"data": self.cfg.data, "data_fingerprint": self.data.splits.fingerprint}}

    def finish(self, result: RunResult) -> dict:
        """``final_arch.yaml`` and ``summary.json`` (rank 0); returns the summary (``{}`` on
        other ranks). Under DDP every rank must end with the same architecture."""
        s, rt = self.engine, self.rt
        if rt.distributed:
            _check_ranks_agree(s, self.run_dir, rt)
        if not rt.is_main:
            return {}
        atomic_write_yaml(self.run_dir / "final_arch.yaml", derive_arch(s.net, name=f"{s.space.name}-searched"))
        summary = search_summary(s, self.cfg, result)
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary


def run_search(cfg: SearchConfig, run_dir: Path, resume: bool = False, progress: bool = True,
               overwrite: bool = False, space=None) -> dict:
    """Run (or resume) a search into ``run_dir`` (:class:`SearchRun`).

    The data and the latency table are checked before ``run_dir`` is created (or, with
    ``overwrite``, before the old search run in it is deleted): a bad input leaves nothing.

    Returns:
        The content of ``summary.json`` (rank 0; ``{}`` on the other ranks).
    """
    with SearchRun(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress, space=space) as run:
        run.prepare()
        return run.finish(run.fit())


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
        atomic_write_json(run_dir / "ddp_check.json", {"world_size": rt.world_size, "ranks": every})
    if len({e["arch_sha256"] for e in every}) != 1:
        raise DnasError(f"architecture parameters differ between ranks: {[e['arch_sha256'][:12] for e in every]}")
