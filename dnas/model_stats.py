"""Statistics of a network: multiply-accumulates and parameter counts (paper section 4,
the MACs and "Params" columns of Tables I-IV: parameters without the classifier).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


def fvcore_flop_count_analysis():
    """fvcore's ``FlopCountAnalysis``, imported without torch's ``torch.jit.script is
    deprecated`` warning (fvcore scripts a loss function at import time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis  # here: the warning filter must be in place while it imports
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


def params_without_classifier(model: nn.Module) -> int:
    """Parameters of everything but the classifier (the paper's counts)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head.classifier."))
