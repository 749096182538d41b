"""Exporting a derived network: the ``dnas-derive`` output directory (paper section 4:
the deployable model; no further paper counterpart).

A derived directory holds ``arch.yaml`` (every choice a scalar, same schema as a space),
``model.pt`` (state dict of the plain network), ``model.onnx`` (opset 17, dynamic batch,
outputs ``logits`` and ``embedding``, checked with ``onnx.checker`` and compared with
PyTorch through onnxruntime), ``summary.json`` (parameters, MACs counted by fvcore and
labelled as multiply-accumulates, per-stage widths) and ``arch.dot`` (the network as a
graph, built with networkx). A fixed-backbone arch (DCS-FB, :mod:`dnas.backbones`) takes
the same path. The directory is built in a temporary sibling and renamed into place, so
a failure leaves nothing behind. Reading an arch, building its network and loading a
directory back are :mod:`dnas.architectures` (``dnas.build_model``, ``dnas.load_derived``).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dnas.backbones import BackboneArch, is_backbone_arch
from dnas.backbones.summary import backbone_graph, backbone_summary
from dnas.errors import DnasError
from dnas.io import atomic_write_json, atomic_write_text, atomic_write_yaml
from dnas.model_stats import count_macs, params_without_classifier
from dnas.models.plain import PlainNet
from dnas.outputs import DERIVED, atomic_directory
from dnas.space import SearchSpace

log = logging.getLogger(__name__)
# Relative to the largest output magnitude (at least 1): float32 logits of tens differ by
# a few 1e-4 between the two runtimes' summation orders on some trained nets.
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17


class _ExportWrapper(nn.Module):
    """Tuple outputs (logits, embedding) for ONNX."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, return_features=True)
        return out["logits"], out["embedding"]


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_names: Sequence[str],
               output_names: Sequence[str] | None = None, dynamic_batch: bool = False) -> Path:
    """Export ``module`` (called on ``example``) to an ONNX file at opset :data:`ONNX_OPSET`.

    The TorchScript-based exporter first (fast, and it handles these graphs), the dynamo
    exporter when it fails. Nothing is checked or run here.

    Args:
        module: the module, in the mode it is to be exported in.
        example: one input tensor.
        path: the ``.onnx`` file to write.
        input_names: the graph's input name (one).
        output_names: the graph's output names (``None``: the exporter's).
        dynamic_batch: the first axis of inputs and named outputs is symbolic (``batch``);
            otherwise every shape is the example's.

    Returns:
        ``path``.
    """
    kwargs = dict(input_names=list(input_names), opset_version=ONNX_OPSET)
    if output_names is not None:
        kwargs["output_names"] = list(output_names)
    axes = {n: {0: "batch"} for n in [*input_names, *(output_names or ())]} if dynamic_batch else None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporters' chatter names
        warnings.simplefilter("ignore")                                            # the temporary directory
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, dynamic_axes=axes, **kwargs)
        except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
            shapes = {input_names[0]: {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
            torch.onnx.export(module, (example,), str(path), dynamo=True, dynamic_shapes=shapes, verbose=False,
                              **kwargs)
    return Path(path)


def export_onnx(model: nn.Module, input_size: list[int], path: Path, seed: int = 0) -> float:
    """Export to ONNX, check it, run it once in onnxruntime against PyTorch.

    Returns:
        The max abs difference over both outputs on a random input of batch 2.

    Raises:
        DnasError: export failed or the difference exceeds :data:`ONNX_TOLERANCE` times the
            largest output magnitude (at least 1).
    """
    # on use: onnx and onnxruntime add seconds to every command's start-up
    import numpy as np
    import onnx
    import onnxruntime as ort

    wrapper = _ExportWrapper(model).eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, *input_size, generator=gen)
    write_onnx(wrapper, example, path, ["images"], ["logits", "embedding"], dynamic_batch=True)
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, *input_size, generator=gen)
    got = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = wrapper(x)
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref))
    allowed = ONNX_TOLERANCE * max([1.0] + [float(r.abs().max()) for r in ref])
    if not diff <= allowed:
        raise DnasError(f"{path}: ONNX output differs from PyTorch by {diff:.3g} (> {allowed:.3g}, "
                        f"{ONNX_TOLERANCE} of the largest output)")
    return diff


def arch_graph(arch: SearchSpace, attention: str):
    """The derived network as a networkx DiGraph (nodes carry a ``label``)."""
    import networkx as nx  # on use, as onnx above

    g = nx.DiGraph(name=arch.name)
    c, h, w = arch.input_size
    g.add_node("input", label=f"input {c}x{h}x{w}")
    g.add_node("stem", label=f"conv3x3 {arch.stem['out_chs']} s{arch.stem['stride']}")
    g.add_edge("input", "stem")
    prev = "stem"
    for b in arch.blocks:
        node = f"block{b.index}"
        g.add_node(node, label=f"ir {b.in_options[0]}->{b.mid_options[0]}->{b.out_options[0]} s{b.stride}")
        g.add_edge(prev, node)
        if b.stride == 1 and b.in_options[0] == b.out_options[0]:
            g.add_edge(prev, node, residual=True)
        prev = node
        last = max(x.index for x in arch.blocks if x.stage == b.stage)
        if b.index == last and arch.stages[b.stage]["dcs_after"] and attention != "none":
            kind = "DCS-Attention" if attention == "dcs" else "Self-Attention"
            g.add_node(f"dcs{b.stage}", label=f"{kind} ({arch.attention_form}) {b.out_options[0]}")
            g.add_edge(prev, f"dcs{b.stage}")
            prev = f"dcs{b.stage}"
    g.add_node("head", label=f"conv1x1 {arch.head['out_chs']} + avgpool")
    g.add_node("fc", label=f"fc {arch.num_classes}")
    g.add_edge(prev, "head")
    g.add_edge("head", "fc")
    return g


def graph_to_dot(g) -> str:
    """DOT text of a networkx DiGraph with ``label`` node attributes."""
    lines = [f'digraph "{g.graph.get("name", "net")}" {{', "  rankdir=TB;", "  node [shape=box];"]
    lines += [f'  "{n}" [label="{d.get("label", n)}"];' for n, d in g.nodes(data=True)]
    lines += [f'  "{u}" -> "{v}"{" [style=dashed]" if d.get("residual") else ""};' for u, v, d in g.edges(data=True)]
    return "\n".join(lines + ["}"]) + "\n"


def summarize(model: nn.Module, arch: dict, onnx_diff: float | None, extra: Mapping[str, Any] | None = None) -> dict:
    """The ``summary.json`` content."""
    if not isinstance(model, PlainNet):
        summary = backbone_summary(model, arch, onnx_diff)
        summary.update(dict(extra or {}))
        return summary
    space = model.arch
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "name": arch["name"],
        "space": arch.get("space"),
        "input_size": list(space.input_size),
        "num_classes": model.num_classes,
        "params": params,
        "params_millions": round(params / 1e6, 4),
        "params_without_classifier": params_without_classifier(model),
        "macs": count_macs(model, space.input_size),
        "macs_note": "multiply-accumulates per image, counted by fvcore (attention matmuls included)",
        "attention": model.attention,
        "attention_form": space.attention_form,
        "use_dcs": model.use_dcs,
        "stage_widths": [space.stage_out_options(s)[0] for s in range(len(space.stages))],
        "stage_mid_chs": [[b["mid_chs"] for b in st["blocks"]] for st in arch["stages"]],
        "onnx_max_abs_diff": onnx_diff,
    }
    summary["gmacs"] = round(summary["macs"] / 1e9, 4)
    summary.update(dict(extra or {}))
    return summary


def export_derived(out: str | Path, arch: dict, model: nn.Module, *, onnx: bool = True, overwrite: bool = False,
                   extra_summary: Mapping[str, Any] | None = None, extra_files: Mapping[str, Any] | None = None,
                   inputs: Sequence = ()) -> dict:
    """Write a derived directory (atomically: all files or none).

    Args:
        out: target directory.
        arch: the derived arch dict (every choice a scalar).
        model: its plain network with the weights to ship.
        onnx: also export and check ``model.onnx``.
        overwrite: replace an existing ``out``.
        extra_summary: more keys for ``summary.json`` (e.g. mAP of a retrain).
        extra_files: ``{name: callable(path)}`` writers of more files into the directory.
        inputs: paths the export was made from (``out`` never replaces one).

    Returns:
        The summary dict.
    """
    model = model.eval()
    if is_backbone_arch(arch):
        arch = BackboneArch(arch, str(out)).to_dict()  # its normalised form (defaults written out)
    with atomic_directory(out, overwrite=overwrite, kind=DERIVED, inputs=tuple(inputs)) as tmp:
        atomic_write_yaml(tmp / "arch.yaml", arch)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        buf_path = tmp / "model.pt"
        torch.save(state, buf_path)
        diff = export_onnx(model, model.arch.input_size, tmp / "model.onnx") if onnx else None
        summary = summarize(model, arch, diff, extra_summary)
        atomic_write_json(tmp / "summary.json", summary)
        if isinstance(model, PlainNet):
            graph = arch_graph(model.arch, model.attention)
        else:
            graph = backbone_graph(model)
        atomic_write_text(tmp / "arch.dot", graph_to_dot(graph))
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
    log.info("exported %s: %s params, %s MACs%s", summary["name"], summary["params"], summary["macs"],
             "" if diff is None else f", ONNX max abs diff {diff:.2e}")  # by name: ``out`` may be a temporary dir
    return summary


def read_summary(directory: str | Path) -> dict:
    path = Path(directory) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DnasError(f"{path}: cannot read summary ({exc})") from None
