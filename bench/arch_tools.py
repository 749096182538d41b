"""Architectures and latency models for the benchmarks.

- :func:`widest_arch`: the derived arch of ``sample_indices("max")`` (the "widest
  static net": a :class:`dnas.models.PlainNet`, no masks);
- :func:`latency_model_for`: the cost of the architecture step from a real table of
  the space (``latency_tables/*.csv`` whose structure hash matches, preferring the
  device kind and batch 64), or, only when the space has none, from a stand-in table
  with the same keys and made-up values (the cost's compute does not depend on them);
- :func:`timm_efficientnet`: the same architecture built by timm's EfficientNet
  builder (timm is a dependency of dnas).
"""
from __future__ import annotations

import json
from pathlib import Path

from dnas.space import SearchSpace, data_root


def widest_arch(space: SearchSpace, num_classes: int | None = None, attention: str | bool | None = None,
                bnneck: bool | None = None) -> SearchSpace:
    """The derived arch of the widest choices (largest width and expansion everywhere)."""
    data = space.arch_from_indices(space.sample_indices("max"), num_classes=num_classes, attention=attention,
                                   bnneck=bnneck, name=f"{space.name}-max")
    return SearchSpace.from_dict(data, f"{space.name}:max")


def find_table(space: SearchSpace, device_kind: str, prefer_batch: int = 64) -> Path | None:
    """The best matching profiled table of ``space`` in ``latency_tables/`` (or ``None``)."""
    best, best_score = None, None
    for meta_path in sorted((data_root() / "latency_tables").glob("*.meta.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("space_hash") != space.structure_hash() or meta.get("complete") is False:
            continue  # another space, or an incomplete table (NAME.partial.csv)
        csv_path = meta_path.with_name(meta_path.name[: -len(".meta.json")] + ".csv")
        if not csv_path.is_file():
            continue
        score = (str(meta.get("device", "")).startswith(device_kind), meta.get("batch") == prefer_batch,
                 "calibration" in meta)
        if best_score is None or score > best_score:
            best, best_score = csv_path, score
    return best


def stand_in_table(space: SearchSpace):
    """A :class:`LatencyTable` with every key of ``space`` and values ~ MACs (not measured)."""
    from dnas.latency.keys import space_entries
    from dnas.latency.table import LatencyTable

    values = {}
    for e in space_entries(space):
        fields = dict(e.fields)
        chans = [int(fields[k]) for k in ("in_chs", "mid_chs", "out_chs") if k in fields]
        hw = e.input_shape[1] * e.input_shape[2] if len(e.input_shape) == 3 else 1
        values[e.key] = 0.005 + 1e-9 * hw * sum(a * b for a, b in zip(chans, chans[1:] or chans))
    meta = {"space": space.name, "space_hash": space.structure_hash(), "device": "stand-in",
            "note": "bench stand-in: values ~ MACs, not measured"}
    return LatencyTable(values, meta, source=f"<stand-in for {space.name}>")


def latency_model_for(space: SearchSpace, net, device_kind: str):
    """``(LatencyModel, source)`` for the architecture step of ``net`` (as ``dnas-search``
    builds it: the classifier left out)."""
    from dnas.latency.cost import LatencyModel
    from dnas.latency.table import LatencyTable

    path = find_table(space, device_kind)
    table = LatencyTable.load(path, space) if path else stand_in_table(space)
    model = LatencyModel(table, space, attention=net.attention, num_classes=0, bnneck=net.bnneck)
    return model, (str(path.relative_to(data_root())) if path else table.source)


def timm_efficientnet(arch: SearchSpace, num_classes: int):
    """The derived arch built by timm's EfficientNet builder.

    Same layers as :class:`dnas.models.PlainNet` without DCS-Attention and BNNeck: stem
    conv3x3-BN-ReLU, per block 1x1 expansion (kept also at expansion 1, as ours), kxk
    depthwise, 1x1 projection, BN after each, ReLU, residual when stride 1 and in ==
    out; head conv1x1-BN-ReLU to ``head.out_chs``, average pool, linear classifier.
    The expansion ratio is passed as ``mid / in`` so timm's ``make_divisible`` returns
    our mid width; channel rounding is disabled.
    """
    from timm.models._efficientnet_builder import decode_arch_def
    from timm.models.efficientnet import EfficientNet
    from torch import nn

    stages = []
    for s in range(len(arch.stages)):
        blocks = [b for b in arch.blocks if b.stage == s]
        stage = []
        for b in blocks:
            k = arch.stages[s].get("kernel_size", 3)
            ratio = b.mid_options[0] / b.in_options[0]
            stage.append(f"ir_r1_k{k}_s{b.stride}_e{ratio!r}_c{b.out_options[0]}")
        stages.append(stage)
    return EfficientNet(decode_arch_def(stages), num_classes=num_classes, num_features=arch.head["out_chs"],
                        stem_size=arch.stem["out_chs"], fix_stem=True, act_layer=nn.ReLU,
                        round_chs_fn=lambda c: c)
