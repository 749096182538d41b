"""A search's ``summary.json`` (paper section 3.4; docs/method.md section 5), made from the
run's outcome (:class:`dnas.engine.RunResult`) and the trained supernet: what the search
found (:mod:`dnas.search.result`), the IB of the supernet, the test figures after the
last epoch, the epoch of ``checkpoint-best.pt`` and the split each figure comes from.
"""
from __future__ import annotations

import logging

from dnas.engine.result import RunResult
from dnas.evaluation import unprefixed
from dnas.ib import evaluate_model_ib
from dnas.search.config import SearchConfig
from dnas.search.loop import Searcher
from dnas.search.result import search_result

log = logging.getLogger(__name__)

FOUND_NOTE = ("the argmax architecture beside the space's widest and smallest: parameters without the "
              "classifier, MACs (fvcore), expected latency of the run's cost; confidence per axis, relative "
              "to each choice's number of options n: normalised entropy H(p)/log(n) (0: one option "
              "certain, 1: uniform), mean and highest, and the margin of the top option's probability "
              "over the second's, mean and lowest; decided: choices whose normalised entropy is <= 0.5")
TEST_NOTE = ("test query/gallery, after the last epoch; the supernet under its expected architecture "
             "(softmax of the logits); never used for selection")
LATENCY_NOTES = {
    "table": "expected latency from a measured latency table (the path)",
    "profiled": "expected latency from a table profiled on this machine on first use (the cached path)",
    "proxy": "no latency table for this device and space: the cost was the MACs of the ops (pseudo-ms, "
             "dnas.latency.proxy), not measured time",
    "none": "no latency cost (latency_table: none)",
}


def search_summary(s: Searcher, cfg: SearchConfig, result: RunResult) -> dict:
    """The content of ``summary.json``.

    Args:
        s: the searcher after its last epoch.
        cfg: the run's config.
        result: what :func:`dnas.engine.fit` returned; the test figures are the last
            epoch's and the best checkpoint's the selected epoch's, as ``metrics.csv``
            records them.
    """
    best, last, key = result.best, result.last, result.selected_by
    ib = evaluate_model_ib(s.net, s.data.train_eval, s.rt.device, cfg.ib_temperature, choice=s.net.probs_choice())
    log.info("IB of the supernet (expected architecture) on the %s: IB loss %.4f, IBB (bound) %.4f",
             ib["split"], ib["ib"], ib["ibb"])
    test = unprefixed(last, "test")
    log.info("summary.json: test split after the last epoch %s; checkpoint-best.pt: epoch %s by %s",
             {k: test[k] for k in ("mAP", "rank1") if test.get(k)}, best.get("epoch"), key)
    return {
        "found": search_result(s.net, s.latency),
        "found_note": FOUND_NOTE,
        "ib_loss": ib["ib"], "ibb": ib["ibb"], "ib_final": ib,
        "data": cfg.data,
        "data_note": s.data.splits.note,
        "data_fingerprint": s.data.splits.fingerprint,
        "test": test,
        "test_note": TEST_NOTE,
        "checkpoint_best": {"epoch": best["epoch"] if best else None, "selected_by": key,
                            **{k: v for k, v in best.items() if k.startswith("val_") or k == key}},
        "checkpoint_best_note": ("validation split: identities held out of training, query/gallery style"
                                 if key == "val_mAP" else "no validation split: the lowest arch-split loss"),
        "validation": s.data.validation.to_dict() if s.data.validation is not None else None,
        "arch_split": s.data.arch_split_stats,
        "epochs": cfg.epochs,
        "latency_cost": cfg.latency_source,
        "latency_cost_note": LATENCY_NOTES.get(str(cfg.latency_source).split(":", 1)[0], ""),
    }
