"""Network head (paper Tables III/IV rows 11-12): 1x1 conv to 1984, global average
pooling, optional BNNeck, linear classifier.

``forward`` returns the feature dict every model returns with ``return_features=True``:
``global_feat`` (pooled embedding before the BNNeck: triplet loss and the IB bound's F),
``embedding`` (the retrieval feature: after the BNNeck when there is one), ``logits``.
"""
from __future__ import annotations

import torch
from torch import nn

from dnas.ops.blocks import ConvBNReLU


class ClassifierHead(nn.Module):
    """Args:
        in_chs: channels of the last stage (largest width in the supernet).
        out_chs: embedding width (1984 in the paper spaces).
        num_classes: classifier outputs.
        bnneck: BatchNorm1d on the embedding before the classifier (Re-ID "BNNeck";
            the classifier then has no bias and the BN shift is frozen at 0).
    """

    def __init__(self, in_chs: int, out_chs: int, num_classes: int, bnneck: bool = False):
        super().__init__()
        self.conv = ConvBNReLU(in_chs, out_chs, 1, kernel_size=1)
        self.neck = nn.BatchNorm1d(out_chs) if bnneck else None
        if self.neck is not None:
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(out_chs, num_classes, bias=not bnneck)
        nn.init.normal_(self.classifier.weight, std=0.01)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        g = self.conv(x).mean((2, 3))  # (B, out_chs)
        e = self.neck(g) if self.neck is not None else g
        return {"global_feat": g, "embedding": e, "logits": self.classifier(e)}
