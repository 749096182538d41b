"""DCS-FB networks (paper section 3.3, Table I): a fixed convolutional backbone with
DCS-Attention (or plain self-attention) after chosen convolution stages, and the Re-ID
head: global average pooling, BNNeck, classifier.

The forward outputs mirror :class:`dnas.models.plain.PlainNet` exactly, so retraining,
evaluation, the IB bound and the export treat both alike: ``logits`` by default, and
with ``return_features=True`` the dict ``logits``, ``embedding`` (the retrieval
feature, after the BNNeck), ``global_feat`` (before it: triplet loss and the IB
bound's F) and ``ib_input`` (:func:`dnas.ib.input_representation`).

Module names: ``backbone.*`` is the timm (or OSNet) network with timm's own parameter
names, so its ImageNet checkpoints load strictly; ``dcs.<stage>`` are the attention
modules (``dcs.stage3_b1``: branch 1 of HRNet's stage 3), identity at initialisation
(their BN weight is 0); ``head.neck`` / ``head.classifier`` are the task head, never
transferred by ``--pretrained``.
"""
from __future__ import annotations

import torch
from torch import nn

from dnas.backbones.arch import BackboneArch
from dnas.backbones.cnn import create_cnn, set_last_stride, stage_runners
from dnas.backbones.weights import start_from_pretrained
from dnas.ib import input_representation
from dnas.ops.dcs import DCSAttention
from dnas.space.schema import resolve_attention

PROBE_SIZE = (128, 64)  # the dry run that reads each stage's width


def module_key(stage: str, branch: int | None = None) -> str:
    """The ``dcs`` ModuleDict key of a stage (dots are not allowed in module names)."""
    return stage.replace(".", "_") + ("" if branch is None else f"_b{branch}")


class ReIDHead(nn.Module):
    """BNNeck (BatchNorm1d, shift frozen at 0) and a bias-free classifier; or a plain
    linear classifier without the neck."""

    def __init__(self, dim: int, num_classes: int, bnneck: bool = True):
        super().__init__()
        self.dim = dim
        self.neck = nn.BatchNorm1d(dim) if bnneck else None
        if self.neck is not None:
            self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=not bnneck)
        nn.init.normal_(self.classifier.weight, std=0.01)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def forward(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.neck(g) if self.neck is not None else g
        return {"global_feat": g, "embedding": e, "logits": self.classifier(e)}


class BranchReIDHead(ReIDHead):
    """TransReID's heads for ``branches`` joined features of ``dim`` channels each (the
    global one first, then the JPM parts): the BNNeck over the joined features (a batch
    norm is per channel, so this is one neck per branch) and one classifier per branch.

    Outputs as :class:`ReIDHead`'s, ``logits`` being the global branch's, plus
    ``branch_logits`` and ``branch_feats`` (pre-BNNeck), which :class:`dnas.losses.ReIDLoss`
    averages TransReID's way.
    """

    def __init__(self, dim: int, branches: int, num_classes: int, bnneck: bool = True):
        super().__init__(dim * branches, num_classes, bnneck)
        self.branches = branches
        self.classifier = nn.ModuleList(nn.Linear(dim, num_classes, bias=not bnneck) for _ in range(branches))
        for c in self.classifier:
            nn.init.normal_(c.weight, std=0.01)
            if c.bias is not None:
                nn.init.zeros_(c.bias)

    def forward(self, g: torch.Tensor) -> dict:
        e = self.neck(g) if self.neck is not None else g
        logits = [c(part) for c, part in zip(self.classifier, e.chunk(self.branches, dim=1))]
        return {"global_feat": g, "embedding": e, "logits": logits[0], "branch_logits": logits,
                "branch_feats": list(g.chunk(self.branches, dim=1))}


class BackboneNet(nn.Module):
    """A fixed CNN backbone with attention modules after the arch's stages.

    Args:
        arch: a :class:`BackboneArch` of a convolutional family.
        num_classes: classifier outputs (default: the arch's).
        attention: ``none``, ``self`` or ``dcs`` (default: the arch's; a bool is the
            legacy ``use_dcs``).
        pretrained: start the backbone from timm's ImageNet weights (a download).
        pretrained_file: a local checkpoint of the plain backbone, loaded strictly
            (:func:`dnas.backbones.weights.load_backbone_weights`).

    Attributes:
        embedding_dim: the width of ``global_feat`` and ``embedding``.
        pretrained_report: what the network started from (``None``: nothing pretrained;
            see :func:`dnas.backbones.weights.start_from_pretrained`).
    """

    def __init__(self, arch: BackboneArch, num_classes: int | None = None, attention: str | bool | None = None,
                 pretrained: bool = False, pretrained_file: str | None = None):
        super().__init__()
        self.arch = arch
        self.family = arch.family
        self.attention = resolve_attention(arch.attention, attention)
        self.num_classes = int(num_classes or arch.num_classes)
        self.backbone = create_cnn(arch.backbone, arch.block_repeats, arch.timm_kwargs, pretrained)
        if arch.last_stride is not None:
            set_last_stride(self.family, self.backbone, arch.last_stride)
        widths, dim = self._probe_widths()
        self.stage_widths = widths
        self.dcs = nn.ModuleDict()
        if self.use_dcs:
            for stage in arch.attention_after:
                w = widths[stage]
                for b, c in (enumerate(w) if isinstance(w, list) else [(None, w)]):
                    self.dcs[module_key(stage, b)] = DCSAttention(c, tau_m=arch.tau_m, form=arch.attention_form,
                                                                  select=self.attention == "dcs",
                                                                  selection_rank=arch.rank_for(c))
        self.embedding_dim = dim
        self.head = ReIDHead(dim, self.num_classes, arch.bnneck)
        self.pretrained_report = start_from_pretrained(self, pretrained, pretrained_file)

    @property
    def use_dcs(self) -> bool:
        """Whether attention modules (``self`` or ``dcs``) are built."""
        return self.attention != "none"

    @torch.no_grad()
    def _probe_widths(self) -> tuple[dict, int]:
        """Channels after each stage (a list per branch for HRNet) and the embedding width."""
        was = self.backbone.training
        self.backbone.eval()
        x = torch.zeros(1, 3, *PROBE_SIZE)
        widths = {}
        for name, run in stage_runners(self.family, self.backbone):
            x = run(x)
            widths[name] = [t.shape[1] for t in x] if isinstance(x, list) else x.shape[1]
        dim = self._pool(x).shape[1]
        self.backbone.train(was)
        return widths, dim

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.family == "osnet":
            return self.backbone.pool_embed(x)  # pooling + OSNet's fc 512
        return x.mean((2, 3))

    def _attend(self, stage: str, x):
        if isinstance(x, list):
            return [self.dcs[module_key(stage, b)](t) for b, t in enumerate(x)]
        return self.dcs[module_key(stage)](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the last feature map, attention applied after the arch's stages."""
        for name, run in stage_runners(self.family, self.backbone):
            x = run(x)
            if self.use_dcs and name in self.arch.attention_after:
                x = self._attend(name, x)
        return x

    def forward(self, x: torch.Tensor, return_features: bool = False, **_unused):
        """Args:
            x: (B, 3, H, W) images.
            return_features: the feature dict instead of the logits (module docstring).
        """
        images = x
        out = self.head(self._pool(self.forward_features(x)))  # (B, dim) pooled
        if not return_features:
            return out["logits"]
        out["ib_input"] = input_representation(images)
        return out
