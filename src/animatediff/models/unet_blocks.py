"""The SD1.5 UNet's levels, inflated to video.

Every 2D layer sees frames folded into the batch, `(b f) c h w`. Each level holds ResNets, optional
spatial transformers (text cross-attention) and, once a motion module family is attached, one motion
module after each ResNet/attention pair. Module names follow diffusers / the original AnimateDiff
(`down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`, `up_blocks.3.motion_modules.2`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import MotionConfig, UNetConfig
from .layers import Attention, Downsample, FeedForward, ResnetBlock, Upsample
from .motion import MotionModule


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim=context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame self-attention + text cross-attention (diffusers' Transformer2DModel)."""

    def __init__(self, channels: int, heads: int, cfg: UNetConfig):
        super().__init__()
        self.linear = cfg.use_linear_projection
        self.norm = nn.GroupNorm(cfg.norm_num_groups, channels, eps=1e-6)
        proj = nn.Linear if self.linear else (lambda i, o: nn.Conv2d(i, o, 1))
        self.proj_in = proj(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, cfg.cross_attention_dim) for _ in range(cfg.transformer_layers)]
        )
        self.proj_out = proj(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = rearrange(y, "n c h w -> n (h w) c")
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        # Back to contiguous NCHW before the conv: a permuted input would make the conv (and, through
        # the residual, every later layer) run in another memory layout, with reorders in between.
        y = rearrange(y, "n (h w) c -> n c h w", h=h, w=w).contiguous()
        if not self.linear:
            y = self.proj_out(y)
        return x + y


class StepContext:
    """What every layer of one UNet call needs besides the features (built once per call)."""

    __slots__ = ("context", "frames", "pool_frames", "temb", "use_checkpoint")

    def __init__(self, temb, context, frames, pool_frames, use_checkpoint):
        self.temb, self.context, self.frames = temb, context, frames
        self.pool_frames, self.use_checkpoint = pool_frames, use_checkpoint

    def run(self, fn: Callable, *args):
        """Call a layer, through activation checkpointing when training with it enabled."""
        if self.use_checkpoint:
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)


class Level(nn.Module):
    """Shared body of the down, mid and up blocks: ResNet -> [attention] -> [motion module], repeated."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList
    motion_modules: nn.ModuleList

    def add_motion_modules(self, cfg: MotionConfig | None) -> None:
        channels = [r.conv2.out_channels for r in self.resnets]
        self.motion_modules = nn.ModuleList([MotionModule(c, cfg) for c in channels] if cfg else [])

    def layer(self, i: int, x: torch.Tensor, s: StepContext) -> torch.Tensor:
        x = s.run(self.resnets[i], x, s.temb, s.pool_frames)
        if self.attentions:
            x = s.run(self.attentions[i], x, s.context)
        if self.motion_modules:
            x = s.run(self.motion_modules[i], x, s.frames)
        return x


class DownBlock(Level):
    def __init__(self, in_ch: int, out_ch: int, heads: int, attention: bool, downsample: bool, cfg: UNetConfig):
        super().__init__()
        temb, g, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps
        n = cfg.layers_per_block
        self.resnets = nn.ModuleList([ResnetBlock(in_ch if i == 0 else out_ch, out_ch, temb, g, eps) for i in range(n)])
        self.attentions = nn.ModuleList([SpatialTransformer(out_ch, heads, cfg) for _ in range(n)] if attention else [])
        self.motion_modules = nn.ModuleList()
        self.downsamplers = nn.ModuleList([Downsample(out_ch)] if downsample else [])

    def forward(self, x: torch.Tensor, s: StepContext) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self.layer(i, x, s)
            skips.append(x)
        for down in self.downsamplers:
            x = down(x)
            skips.append(x)
        return x, skips


class MidBlock(Level):
    """ResNet -> attention -> [motion module, v2 only] -> ResNet."""

    def __init__(self, ch: int, heads: int, cfg: UNetConfig):
        super().__init__()
        temb, g, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, temb, g, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(ch, heads, cfg)])
        self.motion_modules = nn.ModuleList()

    def add_motion_modules(self, cfg: MotionConfig | None) -> None:
        ch = self.resnets[0].conv2.out_channels
        self.motion_modules = nn.ModuleList([MotionModule(ch, cfg)] if cfg and cfg.mid_block else [])

    def forward(self, x: torch.Tensor, s: StepContext) -> torch.Tensor:
        x = s.run(self.resnets[0], x, s.temb, s.pool_frames)
        x = s.run(self.attentions[0], x, s.context)
        if self.motion_modules:
            x = s.run(self.motion_modules[0], x, s.frames)
        return s.run(self.resnets[1], x, s.temb, s.pool_frames)


class UpBlock(Level):
    def __init__(
        self, in_chs: list[int], out_ch: int, heads: int, attention: bool, upsample: bool, cfg: UNetConfig
    ):
        """`in_chs[i]` is the channel count entering ResNet i: previous features + the skip it concatenates."""
        super().__init__()
        temb, g, eps = cfg.time_embed_dim, cfg.norm_num_groups, cfg.norm_eps
        self.resnets = nn.ModuleList([ResnetBlock(c, out_ch, temb, g, eps) for c in in_chs])
        self.attentions = nn.ModuleList(
            [SpatialTransformer(out_ch, heads, cfg) for _ in in_chs] if attention else []
        )
        self.motion_modules = nn.ModuleList()
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def forward(
        self, x: torch.Tensor, skips: list[torch.Tensor], s: StepContext, size: tuple[int, int] | None
    ) -> torch.Tensor:
        """`skips`: this block's skip features in down-path order (the last one is used first)."""
        for i, skip in enumerate(reversed(skips)):
            x = self.layer(i, torch.cat([x, skip], dim=1), s)
        for up in self.upsamplers:
            x = up(x, size)
        return x

