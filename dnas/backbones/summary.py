"""``summary.json`` and ``arch.dot`` of a DCS-FB network (paper section 3.4, Table I):
parameters with and without the classifier, fvcore MACs (attention matmuls included),
the attention modules' parameters and positions, the stage widths; the network as a
graph of stages and attention modules.
"""
from __future__ import annotations

from torch import nn

from dnas.model_stats import count_macs, params_without_classifier


def backbone_graph(model: nn.Module):
    """A fixed-backbone network as a networkx DiGraph: stages, attention modules, head."""
    import networkx as nx  # on use: it adds to the start-up of every command

    arch = model.arch
    g = nx.DiGraph(name=arch.name)
    c, h, w = arch.input_size
    g.add_node("input", label=f"input {c}x{h}x{w}")
    prev = "input"
    kind = {"dcs": "DCS-Attention", "self": "Self-Attention"}.get(model.attention)
    if arch.family == "vit":
        blocks = len(model.backbone.blocks)
        nodes = [("patch_embed", f"patches {arch.transreid['patch_stride']}-stride + SIE"),
                 ("blocks", f"{blocks} blocks" + (f", {kind} (softmax)" if model.use_dcs else ""))]
        nodes += [("jpm", f"last block + JPM x{model.groups}")] if model.groups else []
    else:
        nodes = []
        for stage, width in model.stage_widths.items():
            nodes.append((stage, f"{stage} {width}"))
            if model.use_dcs and stage in arch.attention_after:
                nodes.append((f"attn.{stage}", f"{kind} ({arch.attention_form}) {width}"))
    for node, label in nodes + [("head", f"avgpool + {'BNNeck + ' if arch.bnneck else ''}fc {model.num_classes}")]:
        g.add_node(node, label=label)
        g.add_edge(prev, node)
        prev = node
    return g


def backbone_summary(model: nn.Module, arch: dict, onnx_diff: float | None) -> dict:
    """The ``summary.json`` content of a fixed-backbone network."""
    spec = model.arch
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "name": arch["name"], "backbone": spec.backbone, "family": spec.family,
        "input_size": list(spec.input_size), "num_classes": model.num_classes,
        "params": params, "params_millions": round(params / 1e6, 4),
        "params_without_classifier": params_without_classifier(model),
        "macs": count_macs(model, spec.input_size),
        "macs_note": "multiply-accumulates per image, counted by fvcore (attention matmuls included)",
        "attention": model.attention, "attention_form": "softmax" if spec.family == "vit" else spec.attention_form,
        "attention_after": list(spec.attention_after) if spec.family != "vit" else "every block",
        "attention_params": sum(p.numel() for n, p in model.named_parameters() if n.startswith("dcs.")),
        "selection_rank": spec.selection_rank,
        "last_stride": spec.last_stride, "embedding_dim": model.embedding_dim,
        "onnx_max_abs_diff": onnx_diff,
    }
    summary["params_classifier"] = params - summary["params_without_classifier"]
    summary["stage_widths"] = (dict(model.stage_widths) if spec.family != "vit"
                               else {"blocks": model.backbone.embed_dim})
    summary["gmacs"] = round(summary["macs"] / 1e9, 4)
    return summary
