"""Re-ID finetuning of a derived network (paper section 4.2, eq. 4; docs/method.md 4 and 6).

Loss: ``CE(label smoothing) + batch-hard triplet(0.3) + eta * IBB`` with the IB tracker
(:mod:`dnas.ib`: F = the pre-BNNeck embedding, X = the pooled input of the first
DCS-Attention module), optional center loss; PK batches; Adam with warm-up and step or
cosine decay; the DCS ``pi`` layers train with the weights. Evaluation (Euclidean
distance, Market-1501 protocol, no re-ranking): mAP, CMC rank-1/5/10, mINP, plus the
epoch's IB loss ``I(X;F) - I(F;Y)`` and IBB.

Run directory: ``config.yaml``, ``arch.yaml`` (the trained arch: classes, BNNeck,
input size), ``pretrained.json`` (what was loaded), ``data_fingerprint.json`` (the data
set's counts against the published ones, :mod:`dnas.data.fingerprint`),
``metrics.csv``, ``tensorboard/``, ``plots/curves.png``, ``checkpoint-{last,best}.pt``
and ``final/`` (the ``dnas-derive`` layout: ``model.pt``, ``model.onnx``,
``summary.json`` with mAP, R1, mINP, MACs and the data fingerprint).

Model selection (:mod:`dnas.data.protocol`): the periodic evaluations use a validation
query/gallery carved from the training identities (``val_*`` metrics; those identities
do not train) and ``checkpoint-best.pt`` is the epoch with the best ``val_mAP``; the
test query/gallery is evaluated after the last epoch (``test_*``; the final weights and,
once, the best checkpoint's) and is what ``summary.json`` reports as ``mAP``, ``rank1``,
...; ``eval_test_every_epoch`` adds test curves (never used for selection).
``--eval-only`` evaluates the test split.

NOTE: with mixup, the CE uses the mixed soft targets; the triplet loss and the IB
tracker use the label of the dominant image of each mix (the paper lists mixup among
the augmentations without saying how it meets the metric losses).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from dnas.architectures import build_model, load_derived, load_run_model, read_arch
from dnas.data.fingerprint import FILE_NAME as FINGERPRINT_FILE
from dnas.data.loaders import ReIDDataConfig, build_loaders, parse_data_spec
from dnas.engine import LAST, RunResult
from dnas.engine.run import TrainingRun
from dnas.errors import DnasError
from dnas.evaluation import evaluate_reid, held_out_parts, ib_part, prefixed
from dnas.ib import evaluate_model_ib
from dnas.losses import ReIDLoss
from dnas.outputs import REID_RUN
from dnas.retrain.common import Trainer, export_final
from dnas.retrain.config import ReIDConfig, apply_attention, suffixed
from dnas.runtime import Runtime, all_reduce_mean, seed_everything, setup_runtime, teardown_runtime
from dnas.weights import load_pretrained, load_run_weights, load_weights, read_pretrained_weights

log = logging.getLogger(__name__)
KIND = REID_RUN
CURVES = ["loss", "ce", "triplet", "ibb", "ib_loss", "val_mAP", "val_rank1", "test_mAP", "test_rank1", "lr"]
METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP", "num_queries", "num_valid", "num_skipped")
RERANK_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
RERANK_NOTE = {"method": "k-reciprocal re-ranking (Zhong et al. 2017), k1=20, k2=6, lambda=0.3",
               "note": "test query/gallery, final weights; the top-level figures use no re-ranking"}


def build_reid_data(cfg: ReIDConfig, rt: Runtime, height: int, width: int, training: bool = True):
    """PK training loader, validation and test query/gallery loaders of a Re-ID ``--data`` spec."""
    dcfg = ReIDDataConfig.from_recipe(cfg, height=height, width=width, test_batch_size=cfg.test_batch_size,
                                      rank=rt.rank, world_size=rt.world_size)
    if dcfg.task != parse_data_spec(dcfg.data).task:  # before anything is read
        raise DnasError(f"--data {cfg.data}: dnas-retrain reid needs a Re-ID data set "
                        "(market1501:, dukemtmc:, msmt17:, cuhk03:, synthetic); use 'dnas-retrain imagenet'")
    data = build_loaders(dcfg)
    if rt.is_main and training:
        log.info("data:\n%s", data.splits.summary())
        log.info("%s", data.validation.summary_line() if data.validation is not None else
                 "no validation split (val_ids_fraction=0): checkpoint-best.pt by the lowest training loss")
    return data


class ReIDTrainer(Trainer):
    """Re-ID finetuning (eq. 4). See :class:`dnas.retrain.common.Trainer` for the args."""

    kind = KIND
    best_key, best_mode = "val_mAP", "max"

    def __init__(self, cfg: ReIDConfig, rt: Runtime, data, net, progress: bool = True, arch: dict | None = None):
        super().__init__(cfg, rt, data, net, cfg.batch_size * rt.world_size, progress, arch)
        if data.validation is None:  # never select on the test split
            self.best_key, self.best_mode = "loss", "min"
        self.loss = ReIDLoss.from_config(cfg, data.num_classes, feat_dim=net.embedding_dim).to(rt.device)
        self.center_opt = None
        if self.loss.center is not None:
            self.center_opt = torch.optim.SGD(self.loss.center.parameters(), lr=cfg.center_lr)

    def compute_loss(self, images, targets, labels, cameras=None):
        camera = {"camera": cameras} if getattr(self.net, "uses_camera", False) and cameras is not None else {}
        out = self.model(images, return_features=True, **camera)
        loss, parts = self.loss(out, targets, labels)
        return loss, parts, (out["logits"].argmax(1) == labels).sum()

    def after_step(self, phase: str) -> None:
        if self.center_opt is not None:
            for p in self.loss.center.parameters():  # centers learn at center_lr whatever the weight
                if p.grad is not None:
                    p.grad.mul_(1.0 / self.cfg.center_weight)
                    if self.rt.distributed:
                        p.grad.copy_(all_reduce_mean(p.grad, self.rt))
            self.center_opt.step()
            self.center_opt.zero_grad(set_to_none=True)
        super().after_step(phase)

    def extra_state(self) -> dict:
        return {"loss": self.loss.state_dict(),
                "center_opt": self.center_opt.state_dict() if self.center_opt is not None else None}

    def load_extra_state(self, state: dict) -> None:
        if self.center_opt is not None and not state.get("center_opt"):
            raise DnasError("the checkpoint has no center-loss state but the recipe sets center_weight > 0")
        self.loss.load_state_dict(state["loss"])
        self.loss.to(self.rt.device)
        if self.center_opt is not None:
            self.center_opt.load_state_dict(state["center_opt"])

    def end_epoch(self) -> dict:
        m = super().end_epoch()
        s = self.loss.ib.end_epoch()
        m.update(ib_loss=s["ib"], ibb_epoch=s["ibb"], i_xf=s["i_xf"], i_fy=s["i_fy"])
        return m

    def summary_line(self, epoch: int, m: dict) -> str:
        parts = [f"epoch {epoch}/{self.cfg.epochs}", f"loss {m['loss']:.3f}", f"ce {m['ce']:.3f}",
                 f"tri {m['triplet']:.3f}", *ib_part(m), *held_out_parts(m, minp=True)]
        return " | ".join(parts + [f"lr {m['lr']:.2e}", f"{m['epoch_time_s']:.1f}s"])

    def evaluate_split(self, split: str, model=None, rerank: bool = False) -> dict:
        """``val_*`` or ``test_*`` metrics of ``model`` (default: the deploy weights);
        ``rerank`` adds the re-ranked ``<split>_rerank_*``."""
        query, gallery = ((self.data.val_query, self.data.val_gallery) if split == "val"
                          else (self.data.query, self.data.gallery))
        return prefixed(evaluate_reid(model if model is not None else self.deploy_model, query, gallery,
                                      self.rt.device, max_queries=self.cfg.eval_max_queries,
                                      flip=self.cfg.eval_flip, rerank=rerank, progress=self.progress), split)

    def evaluate_held_out(self) -> dict:
        out = self.evaluate_split("val") if self.data.validation is not None else {}
        if self.cfg.eval_test_every_epoch:
            out.update(self.evaluate_split("test"))
        return out

    def evaluate_final(self, done: dict) -> dict:
        if "test_mAP" not in done:
            return self.evaluate_split("test", rerank=self.cfg.rerank)
        if self.cfg.rerank:  # the plain test figures exist (eval_test_every_epoch): only re-ranking
            return {k: v for k, v in self.evaluate_split("test", rerank=True).items() if "_rerank_" in k}
        return {}


def prepare_reid(cfg: ReIDConfig, run_dir: Path, rt: Runtime, resume: bool, progress: bool):
    """Everything up to the first step (a resumed run's checkpoint is restored by
    :meth:`dnas.engine.run.TrainingRun.prepare`); validates all inputs before writing anything.

    Returns:
        ``(trainer, arch dict, pretrained report or None)``.
    """
    seed_everything(cfg.seed, cfg.deterministic)
    arch = read_arch(str(run_dir / "arch.yaml") if resume else cfg.arch)
    height, width = cfg.height or arch["input_size"][1], cfg.width or arch["input_size"][2]
    data = build_reid_data(cfg, rt, height, width)
    if resume:
        if arch["num_classes"] != data.num_classes:
            raise DnasError(f"{run_dir}: trained on {arch['num_classes']} identities, --data has {data.num_classes}")
    else:
        apply_attention(arch, cfg)
        arch.update(name=suffixed(arch["name"], "-reid"), num_classes=data.num_classes, bnneck=cfg.bnneck,
                    input_size=[3, height, width])
        _fit_camera_embedding(arch, data.splits)
    seed_everything(cfg.seed, cfg.deterministic)  # the initial weights depend on the seed only
    net = build_model(arch)
    report = None
    if cfg.pretrained and not resume:
        report = load_pretrained(net, *read_pretrained_weights(cfg.pretrained))
        if rt.is_main:
            log.info("pretrained: %d tensors loaded from %s; dropped from the source: %s; freshly initialised: %s "
                     "(pretrained.json)", len(report["loaded"]), report["source"], report["dropped"] or "none",
                     report["fresh"] or "none")
    return ReIDTrainer(cfg, rt, data, net, progress, arch), arch, report


def _fit_camera_embedding(arch: dict, splits) -> None:
    """A TransReID arch with a camera embedding (SIE) gets one row per camera of the data
    (Market-1501 6, DukeMTMC-reID 8, MSMT17 15), as its classifier gets one per identity."""
    tr = arch.get("transreid")
    if isinstance(tr, dict) and tr.get("sie_cameras"):
        items = [*splits.train, *splits.query, *splits.gallery]
        tr["sie_cameras"] = 1 + max(cam for _, _, cam in items)


class ReIDRun(TrainingRun):
    """A Re-ID finetuning in its directory, driven by :func:`run_reid` (the arguments:
    :class:`dnas.engine.run.TrainingRun`)."""

    kind = KIND
    curves = CURVES

    def build_engine(self) -> ReIDTrainer:
        t, self.arch, self.report = prepare_reid(self.cfg, self.run_dir, self.rt, self.resume, self.progress)
        return t

    def start_files(self) -> dict:
        return {"arch.yaml": self.arch, "pretrained.json": self.report,
                FINGERPRINT_FILE: {"data": self.cfg.data, "data_fingerprint": self.engine.data.splits.fingerprint}}

    def finish(self, result: RunResult) -> dict:
        """The end of a run (rank 0): the test figures and the best checkpoint's, the IB of the
        final network, and the export into ``RUN/final``; returns its ``summary.json``
        (``{}`` on the other ranks)."""
        if not self.rt.is_main:
            return {}
        t, cfg = self.engine, self.cfg
        extra = _protocol_summary(t, result, self.run_dir)
        best = extra["checkpoint_best"]
        log.info("test split (final weights): mAP %.4f rank-1 %.4f over %s queries (%s skipped); "
                 "checkpoint-best.pt: epoch %s by %s (%s), test mAP %s", extra["mAP"] or 0, extra["rank1"] or 0,
                 extra["test"]["num_valid"], extra["test"]["num_skipped"], best["epoch"], best["selected_by"],
                 best["split"], (best.get("test") or {}).get("mAP"))
        ib = evaluate_model_ib(t.deploy_model, t.data.train_eval, t.rt.device, cfg.ib_temperature)
        log.info("IB of the final network on the %s: IB loss %.4f, IBB (bound) %.4f", ib["split"], ib["ib"],
                 ib["ibb"])
        last = result.last
        extra.update(ib_loss=ib["ib"], ibb=ib["ibb"], ib_final=ib,
                     ib_running={"ib_loss": last.get("ib_loss"), "ibb": last.get("ibb_epoch"),
                                 "note": "last epoch, running figures of the training batches"})
        extra.update(data=cfg.data, epochs=cfg.epochs, ema=cfg.ema, use_ibb=cfg.use_ibb, pretrained=cfg.pretrained)
        return export_final(t, self.run_dir, t.arch, extra)


def run_reid(cfg: ReIDConfig, run_dir: Path, resume: bool = False, progress: bool = True,
             overwrite: bool = False) -> dict:
    """Run (or resume) a Re-ID finetuning into ``run_dir`` and export ``RUN/final``
    (:class:`ReIDRun`; ``progress``: tqdm bars on a TTY); returns the final ``summary.json``
    content (rank 0; ``{}`` elsewhere)."""
    with ReIDRun(cfg, run_dir, resume=resume, overwrite=overwrite, progress=progress) as run:
        run.prepare()
        return run.finish(run.fit())


def _protocol_summary(t: ReIDTrainer, result: RunResult, run_dir: Path) -> dict:
    """The ``summary.json`` figures and which split each comes from: test (final weights)
    at the top level, the best checkpoint's validation and test figures, the split."""
    ev = result.last_eval
    test = {k: ev.get(f"test_{k}") for k in METRICS}
    out: dict = {**{k: test[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP")},
                 "metrics_split": "test query/gallery, final weights (after the last epoch)",
                 "test": {**test, "weights": "final"}}
    best = {"epoch": result.best_epoch, "selected_by": result.selected_by,
            "split": "validation (training ids held out)" if t.data.validation is not None
            else "training loss (no validation split)"}
    best.update({k: v for k, v in result.best.items() if k.startswith("val_")})
    if result.best_epoch == ev.get("epoch"):
        best["test"] = dict(test)
    elif (run_dir / "checkpoint-best.pt").is_file():
        model = build_model(t.arch)
        load_weights(model, *load_run_weights(run_dir, "best", kind=KIND))
        m = t.evaluate_split("test", model.to(t.rt.device))
        best["test"] = {k: m[f"test_{k}"] for k in METRICS}
    if ev.get("test_rerank_mAP") is not None:
        out["rerank"] = {**{k: ev[f"test_rerank_{k}"] for k in RERANK_METRICS}, **RERANK_NOTE}
    out["checkpoint_best"] = best
    out["validation"] = t.data.validation.to_dict() if t.data.validation is not None else None
    out["data_note"] = t.data.splits.note
    out["data_fingerprint"] = t.data.splits.fingerprint
    return out


def evaluate_only(path: str | Path, cfg: ReIDConfig, which: str = "last") -> dict:
    """Evaluate a checkpoint without training.

    Args:
        path: a ``reid`` run directory (its ``checkpoint-{which}.pt``, EMA weights when
            present), a checkpoint file inside one, or a ``dnas-derive``-layout
            directory (``arch.yaml`` + ``model.pt``, e.g. ``RUN/final``).
        cfg: the recipe for data and evaluation keys (run directories: their
            ``config.yaml`` with the CLI's overrides).
        which: ``last`` or ``best`` for a run directory.

    Returns:
        ``{"mAP", "rank1", "rank5", "rank10", "mINP", "num_queries", "num_valid",
        "num_skipped", "split": "test", "weights", "data", "data_fingerprint"}``: the
        test query/gallery (``data_fingerprint``: :mod:`dnas.data.fingerprint`);
        with ``cfg.rerank`` also ``"rerank": {"mAP", "rank1", ...}``, the re-ranked figures.
    """
    path = Path(path)
    run = path if path.is_dir() else path.parent
    if (run / "config.yaml").is_file() and (path.is_file() or (run / LAST).is_file()):
        model, source = load_run_model(path, which, kind=KIND)
    elif path.is_dir() and (path / "model.pt").is_file():
        model, source = load_derived(path), str(path / "model.pt")
    else:
        raise DnasError(f"{path}: not a reid run directory, a checkpoint in one, or a directory with model.pt")
    cfg = dataclasses.replace(cfg, arch=cfg.arch or str(path), val_ids_fraction=0.0)  # the test split only
    cfg.validate()
    rt = setup_runtime(cfg.device)
    try:
        c, h, w = model.arch.input_size
        data = build_reid_data(cfg, rt, h, w, training=False)
        log.info("--eval-only: %s on the test query/gallery of %s", source, cfg.data)
        metrics = evaluate_reid(model.to(rt.device), data.query, data.gallery, rt.device,
                                max_queries=cfg.eval_max_queries, flip=cfg.eval_flip, rerank=cfg.rerank)
    finally:
        teardown_runtime(rt)
    out = {k: v for k, v in metrics.items() if not k.startswith("rerank_")}
    if cfg.rerank:
        out["rerank"] = {**{k: metrics[f"rerank_{k}"] for k in RERANK_METRICS}, "method": RERANK_NOTE["method"]}
    return {**out, "split": "test", "weights": source, "data": cfg.data,
            "data_fingerprint": data.splits.fingerprint}
