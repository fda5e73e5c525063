"""The AnimateDiff motion module: a temporal transformer inserted after each ResNet/attention pair.

Read top to bottom, this is the paper's Fig. 3 / the original `VanillaTemporalModule`:

    x  [(b f), c, h, w]                      frames folded into the batch by the UNet
    -> GroupNorm (per frame)                  the original normalises each frame; diffusers pools
                                              over frames here, which changes the numbers
    -> [(b h w), f, c]                        every pixel becomes a sequence over time
    -> proj_in
    -> for each block: x += SelfAttn(LN(x) + PE), x += SelfAttn(LN(x) + PE), x += FF(LN(x))
    -> proj_out (zero-initialised: a fresh module starts as the identity)
    -> back to [(b f), c, h, w], + residual

Parameter names are the original's, so `mm_sd_v15_v2.ckpt` and friends load without renaming:
`temporal_transformer.transformer_blocks.0.attention_blocks.{0,1}.{to_q,to_k,to_v,to_out.0}`,
`...attention_blocks.N.pos_encoder.pe`, `norms.{0,1}`, `ff.net.{0.proj,2}`, `ff_norm`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from ..config import MotionConfig
from .layers import Attention, FeedForward


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The fixed position table `pe` [1, length, dim] of the original (Vaswani et al. encoding)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(position * div)
    pe[0, :, 1::2] = torch.cos(position * div)
    return pe


class PositionalEncoding(nn.Module):
    def __init__(self, dim: int, max_frames: int):
        super().__init__()
        # Persistent so that files we write carry `pos_encoder.pe` like the released ones (ComfyUI reads
        # the maximum frame count from it); loaders accept files without it. On the meta device the
        # table is left empty (computing it there is slow): loading fills it.
        pe = torch.empty(1, max_frames, dim)
        self.register_buffer("pe", pe if pe.is_meta else sinusoidal_table(max_frames, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        if frames > self.pe.shape[1]:
            raise ValueError(
                f"{frames} frames exceed this motion module's {self.pe.shape[1]} positions; "
                "generate fewer frames (or use context windows)"
            )
        return x + self.pe[:, :frames].to(x.dtype)


class TemporalAttention(Attention):
    """Self-attention across frames, on sequences [(b h w), f, c] with the position table added."""

    def __init__(self, dim: int, heads: int, max_frames: int):
        super().__init__(dim, heads)
        self.pos_encoder = PositionalEncoding(dim, max_frames)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # Query, key and value all see the position-encoded input (as in the original).
        return super().forward(self.pos_encoder(x))


class TemporalConvolution(nn.Module):
    """The ablation's stand-in for a temporal attention: a 1D convolution (kernel 3) over frames.

    The paper's ablation (sec. 5.3) replaces the temporal attention with 1D temporal convolution and keeps
    the rest: 3C^2 weights against attention's 4C^2, so the module keeps about its parameter count (20C^2
    against 22C^2 with proj_in/out and the feed-forward), but each layer sees only the neighbouring frames.
    No position table: a convolution knows the order of what it sees.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.conv(rearrange(x, "n f c -> n c f")), "n c f -> n f c")


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim: int, cfg: MotionConfig):
        super().__init__()
        conv = cfg.kind == "conv1d"
        self.attention_blocks = nn.ModuleList(
            [TemporalConvolution(dim) if conv else TemporalAttention(dim, cfg.num_heads, cfg.max_frames)
             for _ in range(2)]
        )  # fmt: skip
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(2)])
        self.ff = FeedForward(dim, cfg.ff_mult)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, cfg: MotionConfig):
        super().__init__()
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, cfg) for _ in range(cfg.transformer_layers)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        _, _, h, w = x.shape
        seq = rearrange(self.norm(x), "(b f) c h w -> (b h w) f c", f=frames)
        seq = self.proj_in(seq)
        for block in self.transformer_blocks:
            seq = block(seq)
        seq = self.proj_out(seq)
        # Residual first: the sum takes x's memory layout, not the permuted one of `seq`.
        return x + rearrange(seq, "(b h w) f c -> (b f) c h w", h=h, w=w)


class MotionModule(nn.Module):
    """One motion module (the original's `VanillaTemporalModule`; with `kind="conv1d"`, the ablation)."""

    def __init__(self, channels: int, cfg: MotionConfig):
        super().__init__()
        self.temporal_transformer = TemporalTransformer(channels, cfg)
        # Zero-initialised output: inserting a fresh module leaves the image model unchanged.
        nn.init.zeros_(self.temporal_transformer.proj_out.weight)
        nn.init.zeros_(self.temporal_transformer.proj_out.bias)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, frames)
