"""DCS-FB (TransReID): timm's ViT with TransReID's overlapping patches, side-information
embedding (SIE, camera) and jigsaw patch module (JPM), written from He et al.,
"TransReID: Transformer-based Object Re-Identification", ICCV 2021 (section 3), with
DCS-Attention replacing the attention of every block (paper section 3.3).

- Overlapping patches: 16x16 patches with stride ``patch_stride`` (12): a 256x128 image
  gives a 21 x 10 grid. The timm ViT is built for a (21*16) x (10*16) image so that its
  position embedding (and timm's resampling of a pretrained one) has that grid, then its
  patch projection gets stride 12 (the weights' shape does not change).
- SIE: a learnt embedding per camera, times ``sie_coefficient`` (3.0), added to every
  token after the position embedding.
- JPM: the last block also runs as a jigsaw branch (a copy of the last block and the
  final norm, initialised from them): the patch tokens are shifted by ``shift_num``,
  shuffled in ``shuffle_groups`` groups and split into ``jpm_groups`` parts; each part
  with the class token goes through the branch, whose class token is a local feature.
- DCS: :class:`DCSViTAttention` keeps the block's own ``qkv``/``proj`` (timm's names, so
  checkpoints load) and adds a channel selection of the queries and keys: the binary
  Gumbel-sigmoid mask of :mod:`dnas.ops.dcs` selects the channels of each query (key)
  that enter the affinity ``softmax(q_sel k_sel^T / sqrt(d))``; the values keep every
  channel. The logits come from a linear layer per head on each query (key)
  (:class:`HeadwiseSelector`, ``selection_rank: null``) or from one factorised layer
  per block on the block's tokens (:class:`TokenSelector`, ``selection_rank: r``; the
  shipped file). The fused SDPA kernel runs when timm's ``fused_attn`` is on, the
  explicit softmax otherwise.

NOTE: the selection layers are initialised with zero weights and bias +3, so a new
module's inference mask is all ones (the block computes exactly its pretrained
attention) and a training mask keeps each channel with probability sigmoid(3) = 0.95.
The losses are TransReID's: each branch (global, then the JPM parts) has its classifier
(:class:`dnas.backbones.model.BranchReIDHead`), and :class:`dnas.losses.ReIDLoss` takes
``0.5 * global + 0.5 * mean(parts)`` of the CE and of the triplet loss; the IBB and the
center loss see the joined features. The retrieval ``embedding`` is TransReID's: the
BNNeck output with the local parts divided by ``jpm_groups``. SIE needs the camera of
each image (``forward(x, camera=...)``; the Re-ID trainer and the feature extraction pass
it, :attr:`TransReIDNet.uses_camera`); without it the camera term is left out.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from dnas.backbones.arch import BackboneArch
from dnas.backbones.model import BranchReIDHead
from dnas.backbones.weights import start_from_pretrained
from dnas.errors import SpaceError
from dnas.ib import input_representation
from dnas.ops.dcs import _StraightThroughBinary
from dnas.space.schema import resolve_attention

SELECT_INIT_BIAS = 3.0


class HeadwiseSelector(nn.Module):
    """Per-head channel-selection logits ``pi_h(t) = t W_h + b_h`` of query/key vectors."""

    def __init__(self, num_heads: int, head_dim: int, tau_m: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_heads, head_dim, head_dim))
        self.bias = nn.Parameter(torch.full((num_heads, head_dim), SELECT_INIT_BIAS))
        self.tau_m = tau_m

    def mask(self, t: torch.Tensor) -> torch.Tensor:
        """Binary mask (B, h, N, d) of vectors t (B, h, N, d): ``[pi > 0]`` in eval."""
        logits = torch.einsum("bhnd,hde->bhne", t, self.weight) + self.bias[None, :, None, :]
        if not self.training:
            return (logits > 0).to(t.dtype)
        return _StraightThroughBinary.apply(logits, torch.rand_like(logits), self.tau_m)


    def qk_masks(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, h, N, d) of the queries and keys, each from its own vectors."""
        return self.mask(q), self.mask(k)


class TokenSelector(nn.Module):
    """One selector per block at rank r: logits of the query and key channels of every
    head from the block's tokens, ``pi(x) = (x A) B + b`` (A: D x r, B: r x 2D), the
    binary Gumbel-sigmoid mask of :mod:`dnas.ops.dcs` (``[pi > 0]`` in eval).

    NOTE: ``B`` starts at zero and ``b`` at +3 (as :class:`HeadwiseSelector`'s weights),
    so a new selector keeps every channel in inference; ``A`` has timm's default init,
    so ``B`` has a gradient from the first step.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, rank: int, tau_m: float = 1.0):
        super().__init__()
        self.num_heads, self.head_dim, self.tau_m = num_heads, head_dim, tau_m
        self.a = nn.Linear(dim, rank, bias=False)
        self.b = nn.Linear(rank, 2 * num_heads * head_dim)
        nn.init.zeros_(self.b.weight)
        nn.init.constant_(self.b.bias, SELECT_INIT_BIAS)

    def qk_masks(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (B, h, N, d) of the queries and keys from the block's tokens x (B, N, D)."""
        b, n, _ = x.shape
        logits = self.b(self.a(x)).view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if not self.training:
            m = (logits > 0).to(x.dtype)
        else:
            m = _StraightThroughBinary.apply(logits, torch.rand_like(logits), self.tau_m)
        return m[0], m[1]  # (B, h, N, d) each


def make_selector(arch: BackboneArch, attn: nn.Module) -> nn.Module:
    """The block's selector: per head (``selection_rank: null``) or per block at a rank."""
    dim = attn.num_heads * attn.head_dim
    rank = arch.rank_for(dim)
    if rank is None:
        return HeadwiseSelector(attn.num_heads, attn.head_dim, arch.tau_m)
    return TokenSelector(dim, attn.num_heads, attn.head_dim, rank, arch.tau_m)


class DCSViTAttention(nn.Module):
    """timm's multi-head attention with DCS channel selection on queries and keys.

    Args:
        attn: the block's ``timm.layers.Attention`` (its layers are taken over).
        selector: the :class:`HeadwiseSelector`; held by reference, registered by the
            owning network under ``dcs.`` (new keys apart from the backbone's).
    """

    def __init__(self, attn: nn.Module, selector: HeadwiseSelector):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ValueError("DCSViTAttention: gated attention is not supported")
        self.num_heads, self.head_dim, self.attn_dim = attn.num_heads, attn.head_dim, attn.attn_dim
        self.scale, self.fused_attn = attn.scale, attn.fused_attn
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.attn_drop, self.norm, self.proj, self.proj_drop = attn.attn_drop, attn.norm, attn.proj, attn.proj_drop
        object.__setattr__(self, "selector", selector)  # not a submodule: its keys live under dcs.

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, N, d) each
        q, k = self.q_norm(q), self.k_norm(k)
        mq, mk = self.selector.qk_masks(x, q, k)
        q, k = q * mq, k * mk  # selected channels only
        if self.fused_attn:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            a = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N)
            if attn_mask is not None:
                a = a + attn_mask
            y = self.attn_drop(a.softmax(dim=-1)) @ v
        y = self.norm(y.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(y))


def patch_grid(size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Token grid of overlapping patches."""
    return (size[0] - patch) // stride + 1, (size[1] - patch) // stride + 1


def create_vit(arch: BackboneArch, pretrained: bool) -> nn.Module:
    """timm's ViT for the arch's input, with TransReID's overlapping patch projection."""
    import timm  # on use: seconds of start-up for commands that build no ViT

    kw = dict(arch.timm_kwargs)
    probe = timm.create_model(arch.backbone, pretrained=False, num_classes=0, **kw) if "patch_size" not in kw else None
    patch = kw.get("patch_size") or probe.patch_embed.patch_size[0]
    stride = arch.transreid["patch_stride"]
    h, w = arch.input_size[1:]
    if h < patch or w < patch:
        raise SpaceError(f"{arch.source}: input_size {arch.input_size} is smaller than a {patch}x{patch} patch")
    grid = patch_grid((h, w), patch, stride)
    try:
        net = timm.create_model(arch.backbone, pretrained=pretrained, num_classes=0, global_pool="",
                                img_size=(grid[0] * patch, grid[1] * patch), **kw)
    except RuntimeError as exc:
        raise SpaceError(f"backbone {arch.backbone!r}: {str(exc).splitlines()[0]}") from None
    net.patch_embed.proj.stride = (stride, stride)
    net.patch_embed.img_size = (h, w)
    return net


class TransReIDNet(nn.Module):
    """DCS-FB (TransReID): see the module docstring; outputs as :class:`BackboneNet`'s.

    Args:
        arch: a :class:`BackboneArch` of a ``vit_*`` backbone.
        num_classes: classifier outputs (default: the arch's).
        attention: ``dcs`` (DCS in every block) or ``self``/``none`` (the ViT's own
            attention, plain TransReID).
        pretrained: timm's ImageNet weights (a download).
        pretrained_file: a local checkpoint of the plain ViT, loaded strictly.

    Attributes: ``embedding_dim`` and ``pretrained_report``, as :class:`BackboneNet`'s.
    """

    def __init__(self, arch: BackboneArch, num_classes: int | None = None, attention: str | bool | None = None,
                 pretrained: bool = False, pretrained_file: str | None = None):
        super().__init__()
        self.arch, self.family = arch, "vit"
        self.attention = resolve_attention(arch.attention, attention)
        self.num_classes = int(num_classes or arch.num_classes)
        tr = arch.transreid
        self.backbone = create_vit(arch, pretrained)
        dim = self.backbone.embed_dim
        self.sie_coefficient = float(tr["sie_coefficient"])
        self.sie = nn.Parameter(torch.zeros(tr["sie_cameras"], 1, dim)) if tr["sie_cameras"] else None
        if self.sie is not None:
            nn.init.trunc_normal_(self.sie, std=0.02)
        self.groups = tr["jpm_groups"] if tr["jpm"] else 0
        self.shift_num, self.shuffle_groups = tr["shift_num"], tr["shuffle_groups"]
        self.dcs = nn.ModuleDict()
        if self.attention == "dcs":
            for i, blk in enumerate(self.backbone.blocks):
                sel = make_selector(arch, blk.attn)
                self.dcs[f"block{i}"] = sel
                blk.attn = DCSViTAttention(blk.attn, sel)
        self.jpm_block = self.jpm_norm = None
        if self.groups:
            self.jpm_block, self.jpm_norm = copy.deepcopy(self.backbone.blocks[-1]), copy.deepcopy(self.backbone.norm)
            if self.attention == "dcs":
                self.dcs["jpm"] = make_selector(arch, self.jpm_block.attn)
                object.__setattr__(self.jpm_block.attn, "selector", self.dcs["jpm"])
        parts = 1 + self.groups
        self.embedding_dim = dim * parts
        self.head = BranchReIDHead(dim, parts, self.num_classes, arch.bnneck)
        scale = torch.cat([torch.ones(dim), torch.full((dim * self.groups,), 1.0 / max(self.groups, 1))])
        self.register_buffer("embedding_scale", scale, persistent=False)
        self.pretrained_report = start_from_pretrained(self, pretrained, pretrained_file)

    @property
    def use_dcs(self) -> bool:
        return self.attention == "dcs"

    def init_jpm_from_last_block(self) -> None:
        """Copy the last block and the final norm into the JPM branch (after loading weights)."""
        if self.jpm_block is not None:
            self.jpm_block.load_state_dict(self.backbone.blocks[-1].state_dict())
            self.jpm_norm.load_state_dict(self.backbone.norm.state_dict())
            if self.use_dcs:
                self.dcs["jpm"].load_state_dict(self.dcs[f"block{len(self.backbone.blocks) - 1}"].state_dict())

    def _jigsaw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Local features of the JPM from the tokens (B, 1+N, D) before the last block."""
        cls, patches = x[:, :1], x[:, 1:]
        b, n, d = patches.shape
        patches = torch.cat([patches[:, self.shift_num:], patches[:, :self.shift_num]], dim=1)  # shift
        g = self.shuffle_groups if n % self.shuffle_groups == 0 else 1
        patches = patches.reshape(b, g, n // g, d).transpose(1, 2).reshape(b, n, d)  # patch shuffle
        length = n // self.groups
        return [self.jpm_norm(self.jpm_block(torch.cat([cls, patches[:, i * length:(i + 1) * length]], 1)))[:, 0]
                for i in range(self.groups)]

    @property
    def uses_camera(self) -> bool:
        """The camera embedding (SIE) is on: training and feature extraction pass ``camera``."""
        return self.sie is not None

    def forward(self, x: torch.Tensor, return_features: bool = False, camera: torch.Tensor | None = None, **_unused):
        """Args:
            x: (B, 3, H, W) images.
            return_features: the feature dict instead of the logits.
            camera: (B,) camera indices for SIE (omitted: no camera term).
        """
        images, vit = x, self.backbone
        t = vit._pos_embed(vit.patch_embed(x))  # (B, 1+N, D)
        if self.sie is not None and camera is not None:
            t = t + self.sie_coefficient * self.sie[camera]
        elif self.sie is not None and self.training:  # no cameras: SIE takes part with a zero term (DDP
            t = t + 0.0 * self.sie.sum()              # needs every parameter in the loss)
        t = vit.norm_pre(t)
        for blk in vit.blocks[:-1]:
            t = blk(t)
        feats = [vit.norm(vit.blocks[-1](t))[:, 0]]  # global feature (B, D)
        if self.groups:
            feats += self._jigsaw(t)
        out = self.head(torch.cat(feats, dim=1))  # (B, D * (1 + groups))
        out["embedding"] = out["embedding"] * self.embedding_scale
        if not return_features:
            return out["logits"]
        out["ib_input"] = input_representation(images)
        return out
