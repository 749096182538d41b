"""What a search found (paper section 3.4): the argmax architecture beside the space's
widest and smallest, with parameters, MACs and expected latency, and how confident the
decisions are. Written to ``summary.json`` (``found``) and printed at the end of a run.
"""
from __future__ import annotations

import math
import warnings

import torch

from dnas.model_stats import count_macs, params_without_classifier
from dnas.models import PlainNet, Supernet
from dnas.space import SearchSpace


DECIDED_ENTROPY = 0.5  # a unit is decided when its normalised entropy is at most this


def _arch_figures(net: Supernet, indices: dict, latency) -> dict:
    """Params (without the classifier), MACs and the expected latency of one arch of ``net``'s space."""
    arch = SearchSpace.from_dict(net.space.arch_from_indices(indices))
    plain = PlainNet(arch)  # its classifier has the space's classes: left out of the count below
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs = count_macs(plain, arch.input_size)
    out = {"params": params_without_classifier(plain), "macs": int(macs)}
    if latency is not None:
        with torch.no_grad():
            out["latency_ms"] = float(latency.expected_ms(net.onehot_choice(indices)))
    out["indices"] = {axis: [int(i) for i in v] for axis, v in indices.items()}
    return out


def normalised_entropy(p: torch.Tensor) -> float:
    """``H(p) / log(n)`` of a distribution over ``n >= 2`` options: 0 when one option is
    certain, 1 when they are equally likely (so choices of 2 and of 5 options compare)."""
    p = p.detach().double().flatten()
    h = -(p * p.clamp_min(1e-300).log()).sum()
    return min(1.0, max(0.0, float(h) / math.log(p.numel())))


def top_margin(p: torch.Tensor) -> float:
    """Probability of the top option minus that of the second."""
    top2 = torch.topk(p.detach().double().flatten(), 2).values
    return float(top2[0] - top2[1])


def search_result(net: Supernet, latency=None) -> dict:
    """The argmax arch against the widest and the smallest, and the decisions' confidence.

    Confidence is measured relative to the number of options of each unit (a choice of
    two options has a top probability >= 0.5 whatever its logits): the normalised
    entropy of its distribution (:func:`normalised_entropy`) and the margin of its top
    option over the second.

    Returns:
        ``{"argmax": {params, macs, latency_ms?, indices}, "widest": {...}, "smallest": {...},
        "confidence": {axis: {"entropy_mean", "entropy_max": mean and highest normalised
        entropy of the units, "margin_mean", "margin_min": mean and lowest top-second
        margin, "decided": units whose normalised entropy is <= 0.5, "units": n,
        "options": options per unit}}}``; params without the classifier; latencies are
        the lookup table's (or the proxy's) expected milliseconds.
    """
    space = net.space
    out = {"argmax": _arch_figures(net, net.argmax_indices(), latency),
           "widest": _arch_figures(net, space.sample_indices("max"), latency),
           "smallest": _arch_figures(net, space.sample_indices("min"), latency)}
    conf = {}
    with torch.no_grad():
        for axis, ps in net.probs_choice().items():
            ps = [p for p in ps if p.numel() > 1]  # units with a real choice
            if not ps:
                continue
            ent = [normalised_entropy(p) for p in ps]
            margin = [top_margin(p) for p in ps]
            conf[axis] = {"entropy_mean": sum(ent) / len(ent), "entropy_max": max(ent),
                          "margin_mean": sum(margin) / len(margin), "margin_min": min(margin),
                          "decided": sum(e <= DECIDED_ENTROPY for e in ent), "units": len(ps),
                          "options": [int(p.numel()) for p in ps]}
    out["confidence"] = conf
    return out


def format_result(found: dict) -> list[str]:
    """Lines for the console: the three archs side by side, then the confidence per axis."""
    def fmt(name: str, f: dict) -> str:
        lat = f" | {f['latency_ms']:.3f} ms" if "latency_ms" in f and not math.isnan(f["latency_ms"]) else ""
        return f"  {name:<9} {f['params'] / 1e3:9.1f} k params | {f['macs'] / 1e6:8.2f} M MACs{lat}"

    lines = ["what the search found (argmax of the architecture distribution; params without the classifier):"]
    lines += [fmt(k, found[k]) for k in ("argmax", "widest", "smallest")]
    for axis, c in found["confidence"].items():
        lines.append(f"  {axis}: {c['decided']}/{c['units']} decided (normalised entropy <= {DECIDED_ENTROPY:g}); "
                     f"entropy mean {c['entropy_mean']:.2f}, highest {c['entropy_max']:.2f}; "
                     f"top-second margin mean {c['margin_mean']:.2f}, lowest {c['margin_min']:.2f}")
    return lines
