"""What a trained supernet believes of single architectures (paper section 3.4; docs/method.md
section 10): the validation mAP of a one-hot subnet with the weights it inherits from the
supernet, after its BatchNorm statistics are re-estimated under that choice.

The supernet's running BN statistics belong to the Gumbel mixtures it was trained on; a
one-hot subnet sees other activations, so its inherited statistics are re-estimated on a
few training batches first (as weight-sharing NAS evaluates subnets, e.g. single-path
one-shot). The figure ranks architectures within a latency band; how well that ranking
agrees with stand-alone retraining is what ``bench/search_quality.py`` measures.

With ``finetune_steps`` each subnet is first trained alone for that many SGD steps from
its inherited weights (CE with label smoothing + batch-hard triplet, the weight split),
which weakens the bias of shared weights toward the paths the search trained most.
NOTE: a short per-subnet fine-tune is not in the paper (its search reads the
architecture distribution only); it is an option of the estimate (docs/method.md
section 10), off by default.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from dnas.evaluation import evaluate_reid
from dnas.losses import batch_hard_triplet, cross_entropy_smooth

log = logging.getLogger(__name__)


def recalibrate_bn(net: nn.Module, loader, choice, device: torch.device, batches: int) -> None:
    """Re-estimate every BatchNorm's running statistics of ``net`` under ``choice``
    from ``batches`` batches of ``loader`` (cumulative average; weights untouched)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            net(batch[0].to(device), choice)
    net.eval()


def finetune_subnet(net, loader, choice, device: torch.device, steps: int, lr: float = 0.02,
                    label_smoothing: float = 0.1, triplet_margin: float = 0.3) -> None:
    """Train the weights of ``net`` under the fixed ``choice`` for ``steps`` SGD steps
    (momentum 0.9; CE with label smoothing + batch-hard triplet), cycling ``loader``."""
    opt = torch.optim.SGD(list(net.weight_parameters()), lr=lr, momentum=0.9)
    net.train()
    done = 0
    while done < steps:
        for batch in loader:
            images, labels = batch[0].to(device), batch[1].to(device)
            out = net(images, choice, return_features=True)
            loss = (cross_entropy_smooth(out["logits"].float(), labels, label_smoothing)
                    + batch_hard_triplet(out["global_feat"].float(), labels, triplet_margin))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    net.eval()


def subnet_val_map(net, data, indices_list: list[dict], device: torch.device | str = "cpu",
                   bn_batches: int = 10, finetune_steps: int = 0, finetune_lr: float = 0.02) -> list[float]:
    """Validation mAP of each one-hot subnet of ``net`` (a trained :class:`dnas.models.Supernet`)
    with inherited weights and re-estimated BN statistics; ``data``: the search's loaders
    (:func:`dnas.search.run.build_search_data`; the validation split and the weight split);
    ``finetune_steps`` > 0: each subnet is first trained alone (:func:`finetune_subnet`)."""
    if data.validation is None:
        raise ValueError("subnet estimates need a validation split (val_ids_fraction > 0)")
    device = torch.device(device)
    state = copy.deepcopy(net.state_dict())
    out = []
    try:
        for indices in indices_list:
            net.load_state_dict(state)
            with torch.no_grad():
                choice = net.onehot_choice(indices)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the same batches (and DCS mask noise) for every subnet
                recalibrate_bn(net, data.train, choice, device, bn_batches)
                if finetune_steps > 0:
                    finetune_subnet(net, data.train, choice, device, finetune_steps, finetune_lr)
                    recalibrate_bn(net, data.train, choice, device, bn_batches)
            res = evaluate_reid(net, data.val_query, data.val_gallery, device, progress=False, choice=choice)
            out.append(float(res["mAP"]))
    finally:
        net.load_state_dict(state)
        net.eval()
    return out


def run_estimates(run_dir: str | Path, indices_list: list[dict], checkpoint: str = "last",
                  bn_batches: int = 10, finetune_steps: int = 0, finetune_lr: float = 0.02) -> list[float]:
    """:func:`subnet_val_map` of a search run directory's supernet on its own data (CPU)."""
    from dnas.runtime import Runtime
    from dnas.search.derive_run import load_search_run
    from dnas.search.run import build_search_data

    net, cfg = load_search_run(Path(run_dir), checkpoint)
    data = build_search_data(cfg, Runtime(torch.device("cpu"), 0, 1, 0))
    return subnet_val_map(net, data, indices_list, "cpu", bn_batches, finetune_steps, finetune_lr)
