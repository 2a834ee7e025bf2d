"""A ViT ReID backbone in the TransReID style, written in plain torch.

Overlapping patch embedding (a 16x16 convolution with stride 12 on a 256x128
crop gives a 21x10 grid), a class token with learned position embeddings,
pre-norm transformer blocks, and a batch-norm neck on the class token whose
output is the embedding. Parameter names follow the common ViT layout
(``base.blocks.N.attn.qkv``, ``bottleneck``), so checkpoints of the same
architecture trained with the research code load strictly.

No pretrained transformer weights are bundled or downloaded: the model starts
random and a user-given checkpoint must fill every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownEncoderError
from .base import Encoder, EncoderSpec
from .checkpoints import build_and_load, read_state_dict


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT ReID backbone."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_size: int = 16
    stride: int = 12  # < patch_size: neighbouring patches overlap
    height: int = 256
    width: int = 128
    norm_eps: float = 1e-6

    @property
    def grid(self) -> tuple[int, int]:
        """Patch rows and columns."""
        return (
            (self.height - self.patch_size) // self.stride + 1,
            (self.width - self.patch_size) // self.stride + 1,
        )


#: registered variants: ViT-B/16 and the DeiT-S-sized small one
VIT_CONFIGS: dict[str, ViTConfig] = {
    "transreid_vit_b16": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "transreid_vit_s16": ViTConfig(embed_dim=384, depth=12, num_heads=6),
}


class OverlapPatchEmbed(nn.Module):
    """Image -> sequence of patch tokens with a strided convolution."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, rows*cols, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """Two linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: attention and feed-forward, each with a residual."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """Patch tokens + class token through the blocks; returns the normed class token."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        rows, cols = cfg.grid
        self.patch_embed = OverlapPatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + rows * cols, cfg.embed_dim))
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])


class ViTReID(nn.Module):
    """ViT backbone plus batch-norm neck; in eval mode returns the neck output (B, D)."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.base = ViTBackbone(cfg)
        self.bottleneck = nn.BatchNorm1d(cfg.embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random initialisation (truncated normal, as ViTs are usually initialised)."""
        nn.init.trunc_normal_(self.base.cls_token, std=0.02)
        nn.init.trunc_normal_(self.base.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.base(x))


def build_vit_reid(name: str) -> ViTReID:
    """A randomly initialised registered ViT ReID variant, in eval mode."""
    try:
        cfg = VIT_CONFIGS[name]
    except KeyError:
        raise UnknownEncoderError(
            f"unknown transformer {name!r}: expected one of {', '.join(sorted(VIT_CONFIGS))}"
        ) from None
    return ViTReID(cfg).eval()


def build_vit_encoder(
    spec: EncoderSpec,
    weights: Path,
    sha: str,
    device: str,
    runtime: Optional[str] = None,
    threads: Optional[int] = None,
    precision: str = "auto",
    channels_last: Optional[bool] = None,
    trust_pickle: bool = False,
    streams: Optional[int] = None,
) -> Encoder:
    """Builder for the registered transformer encoders: the checkpoint must fill every parameter."""
    from .autoselect import build_from_torch

    state = read_state_dict(weights, trust_pickle=trust_pickle)
    model = build_and_load(lambda: build_vit_reid(spec.name), state, str(weights))
    return build_from_torch(
        spec,
        weights,
        sha,
        device,
        lambda: model,
        runtime=runtime,
        threads=threads,
        precision=precision,
        channels_last=channels_last,
        streams=streams,
    )
