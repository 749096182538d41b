"""Exporting a derived network (the ``dnas-derive`` output directory) and loading it back.

A derived directory holds ``arch.yaml`` (every choice a scalar, same schema as a space),
``model.pt`` (state dict of the plain network), ``model.onnx`` (opset 17, dynamic batch,
outputs ``logits`` and ``embedding``, checked with ``onnx.checker`` and compared with
PyTorch through onnxruntime), ``summary.json`` (parameters, MACs counted by fvcore and
labelled as multiply-accumulates, per-stage widths) and ``arch.dot`` (the network as a
graph, built with networkx). A fixed-backbone arch (DCS-FB, :mod:`dnas.backbones`) takes
the same path: :func:`read_arch` is the one loader of both forms (and of the backbone
short names), :func:`build_model` builds either. The directory is built in a temporary sibling and renamed
into place, so a failure leaves nothing behind.
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

from dnas.errors import CheckpointError, DnasError, SpaceError
from dnas.io import atomic_write_json, atomic_write_text, atomic_write_yaml, safe_torch_load
from dnas.outputs import atomic_directory
from dnas.models.plain import PlainNet
from dnas.space import SearchSpace

log = logging.getLogger(__name__)
# Relative to the largest output magnitude (at least 1): float32 logits of tens differ by
# a few 1e-4 between the two runtimes' summation orders on some trained nets.
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17


def read_arch(arch: Any, **changes) -> dict:
    """The one arch loader: the validated arch dict of a derived or fixed-backbone arch.

    Args:
        arch: an ``arch.yaml`` path, a ``dnas-derive`` directory, a backbone short name
            (``resnet50``, ... : the shipped ``backbones/NAME.yaml``) or a dict.
        changes: keys to replace before validation (``None`` values are ignored).

    Raises:
        SpaceError: not found, unreadable, invalid, or a space that still lists options.
    """
    import copy

    from dnas.backbones import BackboneArch, backbone_arch_path, is_backbone_arch
    from dnas.space import resolve_space_path

    if isinstance(arch, SearchSpace):
        data, source = copy.deepcopy(arch.data), arch.source
    elif isinstance(arch, BackboneArch):
        data, source = arch.to_dict(), arch.source
    elif isinstance(arch, Mapping):
        data, source = copy.deepcopy(dict(arch)), "<arch dict>"
    else:
        path = None if Path(str(arch)).exists() else backbone_arch_path(str(arch))  # a local path first
        if path is None:
            try:
                path = resolve_space_path(arch)
            except SpaceError:
                from dnas.backbones import SHORT_NAMES

                raise SpaceError(f"{arch}: architecture file not found (nor a backbone short name: "
                                 f"{', '.join(SHORT_NAMES)})") from None
        from dnas.strict_yaml import read_yaml

        data = read_yaml(path, SpaceError, "an arch file")
        if not isinstance(data, dict):
            raise SpaceError(f"{path}: expected a mapping at the top level")
        source = str(path)
    data.update({k: v for k, v in changes.items() if v is not None})
    if is_backbone_arch(data):
        return BackboneArch(data, source).to_dict()
    if not SearchSpace.from_dict(data, source).is_derived:
        raise SpaceError(f"{source}: not a derived architecture (some field still lists several options); "
                         "run dnas-derive first")
    return data


def arch_spec(arch: Any):
    """A :class:`SearchSpace` (derived FBNetV2 arch) or a :class:`~dnas.backbones.BackboneArch`."""
    from dnas.backbones import BackboneArch, is_backbone_arch

    if isinstance(arch, (SearchSpace, BackboneArch)):
        if not arch.is_derived:
            raise SpaceError(f"{arch.source}: not a derived architecture (some field still lists several options)")
        return arch
    source = "<arch dict>" if isinstance(arch, Mapping) else str(arch)
    data = read_arch(arch)
    return BackboneArch(data, source) if is_backbone_arch(data) else SearchSpace.from_dict(data, source)


def _arch_space(arch: Any) -> SearchSpace:
    """The derived FBNetV2 arch (refuses a fixed-backbone one)."""
    spec = arch_spec(arch)
    if not isinstance(spec, SearchSpace):
        raise SpaceError(f"{spec.source}: a fixed-backbone arch, not a derived FBNetV2 arch")
    return spec


def build_model(arch: Any, num_classes: int | None = None, attention: str | bool | None = None,
                pretrained: bool = False, pretrained_file: str | None = None) -> nn.Module:
    """A fresh network of a derived or fixed-backbone arch.

    Args:
        arch: arch YAML path, a ``dnas-derive`` directory, a backbone short name
            (``resnet50``), a dict, a SearchSpace or a BackboneArch.
        num_classes: classifier outputs (default: the arch's).
        attention: ``none``, ``self`` or ``dcs`` (default: the arch's; a bool is the
            legacy ``use_dcs``).
        pretrained, pretrained_file: fixed backbones only: timm's ImageNet weights, or a
            local checkpoint of the plain backbone (loaded strictly; the report is
            ``model.pretrained_report``).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise DnasError(f"num_classes {num_classes!r}: expected a positive integer")
    spec = arch_spec(arch)
    if isinstance(spec, SearchSpace):
        if pretrained or pretrained_file:
            raise DnasError(f"{spec.source}: pretrained weights apply to fixed backbones; "
                            "a derived FBNetV2 net takes --pretrained in dnas-retrain")
        return PlainNet(spec, num_classes=num_classes, attention=attention)
    from dnas.backbones import build_backbone_model

    return build_backbone_model(spec, num_classes=num_classes, attention=attention, pretrained=pretrained,
                                pretrained_file=pretrained_file)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 target: str = "the architecture") -> None:
    """``load_state_dict`` (strict) with a one-line error naming ``source``, the key and
    ``target`` (what is being loaded) on any mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{source}: weights do not fit {target} ({what})")
    for key, t in own.items():
        if tuple(state[key].shape) != tuple(t.shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(state[key].shape)}, "
                                  f"{target} needs {tuple(t.shape)}")
    model.load_state_dict(state)


def load_derived(directory: str | Path) -> nn.Module:
    """The plain network of a ``dnas-derive`` directory with its weights, in eval mode."""
    directory = Path(directory)
    model = build_model(directory)
    state = safe_torch_load(directory / "model.pt")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{directory / 'model.pt'}: expected a state dict")
    load_weights(model, state, str(directory / "model.pt"))
    return model.eval()


class _ExportWrapper(nn.Module):
    """Tuple outputs (logits, embedding) for ONNX."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, return_features=True)
        return out["logits"], out["embedding"]


def export_onnx(model: nn.Module, input_size: list[int], path: Path, seed: int = 0) -> float:
    """Export to ONNX, check it, run it once in onnxruntime against PyTorch.

    Returns:
        The max abs difference over both outputs on a random input of batch 2.

    Raises:
        DnasError: export failed or the difference exceeds :data:`ONNX_TOLERANCE` times the
            largest output magnitude (at least 1).
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    wrapper = _ExportWrapper(model).eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(1, *input_size, generator=gen)
    kwargs = dict(input_names=["images"], output_names=["logits", "embedding"], opset_version=ONNX_OPSET)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporters' chatter names
        warnings.simplefilter("ignore")                                            # the temporary directory
        try:  # the TorchScript-based exporter is fast and handles this graph
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in ("images", "logits", "embedding")}, **kwargs)
        except Exception:  # noqa: BLE001 - fall back to the dynamo exporter
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, dynamic_shapes={"images": {0: batch}},
                              verbose=False, **kwargs)
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


def fvcore_flop_count_analysis():
    """fvcore's ``FlopCountAnalysis``, imported without torch's ``torch.jit.script is
    deprecated`` warning (fvcore scripts a loss function at import time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis
    return FlopCountAnalysis


def count_macs(model: nn.Module, input_size: list[int]) -> int:
    """Multiply-accumulates of one image, counted by fvcore (plus SDPA, which it lacks)."""
    FlopCountAnalysis = fvcore_flop_count_analysis()

    def sdpa_macs(inputs: list, outputs: list) -> int:
        q, k, v = (i.type().sizes() for i in inputs[:3])  # (B, h, N, C), (B, h, M, C), (B, h, M, Cv)
        b, h, n, c = q
        m, cv = k[-2], v[-1]
        return b * h * n * m * (c + cv)

    x = torch.zeros(1, *input_size)
    analysis = FlopCountAnalysis(model.eval(), (x,))
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(analysis.total())


def arch_graph(arch: SearchSpace, attention: str):
    """The derived network as a networkx DiGraph (nodes carry a ``label``)."""
    import networkx as nx

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


def params_without_classifier(model: nn.Module) -> int:
    """Parameters of everything but the classifier (the paper's counts)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.classifier."))


def summarize(model: nn.Module, arch: dict, onnx_diff: float | None, extra: Mapping[str, Any] | None = None) -> dict:
    """The ``summary.json`` content."""
    if not isinstance(model, PlainNet):
        from dnas.backbones.summary import backbone_summary

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
    from dnas.backbones import BackboneArch, is_backbone_arch

    if is_backbone_arch(arch):
        arch = BackboneArch(arch, str(out)).to_dict()  # its normalised form (defaults written out)
    with atomic_directory(out, overwrite=overwrite, kind="derived", inputs=tuple(inputs)) as tmp:
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
            from dnas.backbones.summary import backbone_graph

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
