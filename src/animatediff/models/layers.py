"""Building blocks shared by the UNet, the motion module and the VAE.

Parameter names follow diffusers (`to_q`, `to_out.0`, `ff.net.0.proj`), which the original AnimateDiff
code and its motion-module files also use, so those files load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal timestep features [N, dim] (DDPM / Stable Diffusion convention), always float32."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal features (`time_embedding.linear_1/2`)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, pool_frames: int = 1) -> torch.Tensor:
    """GroupNorm on frames folded into the batch, `(b f) c h w`.

    With `pool_frames=F` the statistics are pooled over the F frames of each video, which is what
    the original UNet3D computes when `use_inflated_groupnorm` is off (v1 motion modules).
    """
    if pool_frames == 1:
        return norm(x)
    y = norm(rearrange(x, "(b f) c h w -> b c f h w", f=pool_frames))
    return rearrange(y, "b c f h w -> (b f) c h w")


class Attention(nn.Module):
    """Multi-head attention on `F.scaled_dot_product_attention`; self- or cross-attention.

    Cross-attention to a per-video context: when `context` has one row per video while `x` has one row
    per frame, the frames of a video are concatenated into one long query sequence instead of copying
    the context (and its key/value projections) once per frame. The result is identical.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        head_dim: int | None = None,
    ):
        super().__init__()
        inner = heads * head_dim if head_dim else query_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim, inner, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim, inner, bias=qkv_bias)
        # `to_out.0`: a one-element container so the key matches every checkpoint format.
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Heads-split SDPA on [N, L, C] projections."""
        q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return rearrange(out, "n h l d -> n l (h d)")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            return self.to_out(self.attend(self.to_q(x), self.to_k(x), self.to_v(x)))
        frames = x.shape[0] // context.shape[0]
        if frames * context.shape[0] != x.shape[0]:
            raise ValueError(f"context batch {context.shape[0]} does not divide query batch {x.shape[0]}")
        q = rearrange(self.to_q(x), "(b f) n c -> b (f n) c", f=frames)
        out = self.attend(q, self.to_k(context), self.to_v(context))
        return self.to_out(rearrange(out, "b (f n) c -> (b f) n c", f=frames))


class GEGLU(nn.Module):
    """Gated GELU input projection of the feed-forward (`ff.net.0.proj`)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward; `net.1` is the (parameter-free) dropout slot of the checkpoints' layout."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResnetBlock(nn.Module):
    """Pre-norm ResNet block of the UNet (with a time projection) and of the VAE (without).

    `pool_frames` > 1 pools the GroupNorm statistics over the frames of each video (v1, see `group_norm`).
    """

    def __init__(
        self, in_ch: int, out_ch: int, temb_ch: int | None, groups: int = 32, eps: float = 1e-5
    ):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_ch, out_ch) if temb_ch else None
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None, pool_frames: int = 1) -> torch.Tensor:
        h = self.conv1(F.silu(group_norm(self.norm1, x, pool_frames)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(group_norm(self.norm2, h, pool_frames)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv. The VAE pads only right/bottom (LDM's asymmetric padding), the UNet all sides."""

    def __init__(self, channels: int, asymmetric: bool = False):
        super().__init__()
        self.asymmetric = asymmetric
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x (or to an explicit size, for latents not divisible by 8) then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, scale_factor=None if size else 2.0, mode="nearest")
        return self.conv(x)
