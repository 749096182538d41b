"""What a search found (paper section 3.4): the argmax architecture beside the space's
widest and smallest, with parameters, MACs and expected latency, and how confident the
decisions are. Written to ``summary.json`` (``found``) and printed at the end of a run.
"""
from __future__ import annotations

import math
import warnings

import torch

from dnas.models import PlainNet, Supernet
from dnas.space import SearchSpace


def _arch_figures(net: Supernet, indices: dict, latency) -> dict:
    """Params (without the classifier), MACs and the expected latency of one arch of ``net``'s space."""
    from dnas.export import count_macs

    arch = SearchSpace.from_dict(net.space.arch_from_indices(indices))
    plain = PlainNet(arch, num_classes=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs = count_macs(plain, arch.input_size)
    out = {"params": sum(p.numel() for p in plain.parameters()), "macs": int(macs)}
    if latency is not None:
        with torch.no_grad():
            out["latency_ms"] = float(latency.expected_ms(net.onehot_choice(indices)))
    return out


def search_result(net: Supernet, latency=None) -> dict:
    """The argmax arch against the widest and the smallest, and the decisions' confidence.

    Returns:
        ``{"argmax": {params, macs, latency_ms?}, "widest": {...}, "smallest": {...},
        "confidence": {axis: {"mean": mean max probability, "min": ..., "decided": units
        whose top option has probability >= 0.5, "units": n, "options": options per unit}}}``;
        latencies are the lookup table's (or the proxy's) expected milliseconds.
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
            top = [float(p.max()) for p in ps]
            conf[axis] = {"mean": sum(top) / len(top), "min": min(top), "decided": sum(t >= 0.5 for t in top),
                          "units": len(top), "options": [int(p.numel()) for p in ps]}
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
        lines.append(f"  {axis}: {c['decided']}/{c['units']} choices with a top option of p >= 0.5; "
                     f"top probability mean {c['mean']:.2f}, lowest {c['min']:.2f}")
    return lines
