"""AutoencoderKL: the Stable Diffusion VAE (LDM's first stage), named like diffusers' AutoencoderKL.

    frames [N, 3, H, W] in [-1, 1]
    -> encoder: conv_in, levels of ResNets (stride-2 conv between levels), mid block
       (ResNet, single-head self-attention over all pixels, ResNet), norm, conv_out
    -> quant_conv -> DiagonalGaussian(mean, logvar), each [N, 4, H/8, W/8]
    latents -> post_quant_conv -> decoder (the mirror image, one extra ResNet per level) -> frames

Frames of a video are simply a batch here: the VAE is per-image. Latents are unscaled; multiplying by
`config.scaling_factor` (0.18215 for SD1.5) is the caller's job. Parameter names equal diffusers'
state-dict keys, so a diffusers VAE loads with `strict=True`; LDM files go through a key table.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import VAEConfig
from .layers import Attention, Downsample, ResnetBlock, Upsample

EPS = 1e-6  # every GroupNorm of the VAE


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, exp(logvar)), per latent pixel."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None, per_frame: bool = False) -> torch.Tensor:
        """mean + std * noise, the noise drawn in float32 from a CPU generator (same seed, same latents
        on any device and dtype). By default one draw [1, C, h, w] is shared by all N frames."""
        n = self.mean.shape[0] if per_frame else 1
        # Shared noise: frames of a static scene get identical latents, so the noise adds no flicker.
        noise = torch.randn((n, *self.mean.shape[1:]), generator=generator, dtype=torch.float32, device="cpu")
        return self.mean + self.std * noise.to(self.mean.device, self.mean.dtype)


class VAEAttention(Attention):
    """GroupNorm, then single-head self-attention over the h*w pixels of each frame, plus a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__(channels, heads=1, qkv_bias=True)
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = super().forward(rearrange(self.group_norm(x), "n c h w -> n (h w) c"))
        return x + rearrange(y, "n (h w) c -> n c h w", h=h, w=w)


def resnets(in_ch: int, out_ch: int, n: int, groups: int) -> nn.ModuleList:
    return nn.ModuleList(
        [ResnetBlock(in_ch if j == 0 else out_ch, out_ch, None, groups, EPS) for j in range(n)]
    )


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = resnets(channels, channels, 2, groups)
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class DownBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = resnets(in_ch, out_ch, layers, groups)
        self.downsamplers = nn.ModuleList([Downsample(out_ch, asymmetric=True)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in (*self.resnets, *self.downsamplers):
            x = module(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, layers: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = resnets(in_ch, out_ch, layers, groups)
        self.upsamplers = nn.ModuleList([Upsample(out_ch)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in (*self.resnets, *self.upsamplers):
            x = module(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, last = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            [DownBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block, g, i < last) for i in range(last + 1)]
        )
        self.mid_block = MidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean and logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g, last = cfg.block_out_channels[::-1], cfg.norm_num_groups, len(cfg.block_out_channels) - 1
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList(
            [
                UpBlock(ch[max(i - 1, 0)], ch[i], cfg.layers_per_block + 1, g, i < last)
                for i in range(last + 1)
            ]
        )
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """fn over slices of at most `chunk` frames, to bound activation memory (the VAE is per-frame)."""
    if chunk is None or chunk >= x.shape[0]:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, size); the last tile is moved back to end exactly at the border."""
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def blend_ramp(length: int, ramp: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """Per-pixel weights [length] of one tile: linear ramps over `ramp` pixels at inner edges."""
    w = torch.ones(length)
    if ramp == 0:
        return w
    up = (torch.arange(ramp) + 0.5) / ramp  # never zero, so every pixel keeps a positive total weight
    if fade_in:
        w[:ramp] = torch.minimum(w[:ramp], up)
    if fade_out:
        w[-ramp:] = torch.minimum(w[-ramp:], up.flip(0))
    return w


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel along each side (8 for SD)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def encode(self, frames: torch.Tensor, chunk: int | None = None) -> DiagonalGaussian:
        """frames [N, 3, H, W] in [-1, 1] -> posterior over latents [N, 4, H/8, W/8]."""
        return DiagonalGaussian(in_chunks(lambda x: self.quant_conv(self.encoder(x)), frames, chunk))

    def decode(
        self,
        latents: torch.Tensor,
        chunk: int | None = None,
        tile: int | None = None,
        overlap: int | None = None,
    ) -> torch.Tensor:
        """Unscaled latents [N, 4, h, w] -> frames [N, 3, 8h, 8w], roughly in [-1, 1].

        `chunk`: decode at most this many frames at once. `tile`: decode square tiles of this many latent
        pixels (overlapping by `overlap`, default tile // 4, blended linearly) to bound memory at large
        sizes. Tiles see their own GroupNorm statistics and attention, so the result is close to, not
        equal to, a plain decode; a tile covering the whole latent gives exactly the plain decode.
        """
        if tile is None:
            return in_chunks(self._decode, latents, chunk)
        overlap = tile // 4 if overlap is None else overlap
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be in [0, tile): got tile={tile}, overlap={overlap}")
        return in_chunks(lambda z: self._decode_tiled(z, tile, overlap), latents, chunk)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def _decode_tiled(self, z: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
        s, (h, w) = self.downscale, z.shape[-2:]
        out = z.new_zeros(z.shape[0], self.config.out_channels, h * s, w * s)
        total = z.new_zeros(h * s, w * s)
        ys, xs = tile_starts(h, tile, tile - overlap), tile_starts(w, tile, tile - overlap)
        for y in ys:
            for x in xs:
                piece = self._decode(z[..., y : y + tile, x : x + tile])
                ph, pw = piece.shape[-2:]
                wy = blend_ramp(ph, overlap * s, y > 0, y + tile < h)
                wx = blend_ramp(pw, overlap * s, x > 0, x + tile < w)
                weight = (wy[:, None] * wx[None]).to(out)
                out[..., y * s : y * s + ph, x * s : x * s + pw] += piece * weight
                total[y * s : y * s + ph, x * s : x * s + pw] += weight
        return out / total
