"""The Stable Diffusion 1.5 UNet inflated to video, with optional AnimateDiff motion modules.

    unet(sample [B, 4, F, h, w], timestep [B] or scalar, context [B, 77, 768]) -> eps [B, 4, F, h, w]

Frames are folded into the batch for every 2D layer; the text context stays one row per video (or one
row per frame, [B*F, 77, 768], for per-frame prompts). Without motion modules the model is the plain
image UNet applied to each frame. Extension points are explicit arguments: ControlNet-style residuals
(`down_residuals`, `mid_residual`) are added to the skip features and the mid-block output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import MotionConfig, UNetConfig
from .layers import TimestepEmbedding, group_norm, timestep_embedding
from .unet_blocks import DownBlock, MidBlock, StepContext, UpBlock


class UNet3D(nn.Module):
    def __init__(self, cfg: UNetConfig, motion: MotionConfig | None = None):
        super().__init__()
        self.config = cfg
        chs = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chs[0], cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        skip_chs = [chs[0]]
        for i, ch in enumerate(chs):
            last = i == cfg.levels - 1
            self.down_blocks.append(
                DownBlock(chs[i - 1] if i else chs[0], ch, cfg.num_heads[i], cfg.attention_levels[i], not last, cfg)
            )
            skip_chs += [ch] * (cfg.layers_per_block + (not last))

        self.mid_block = MidBlock(chs[-1], cfg.num_heads[-1], cfg)

        self.up_blocks = nn.ModuleList()
        prev = chs[-1]
        for i, level in enumerate(reversed(range(cfg.levels))):
            ch = chs[level]
            in_chs = []
            for _ in range(cfg.layers_per_block + 1):
                in_chs.append(prev + skip_chs.pop())
                prev = ch
            last = i == cfg.levels - 1
            self.up_blocks.append(
                UpBlock(in_chs, ch, cfg.num_heads[level], cfg.attention_levels[level], not last, cfg)
            )

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, chs[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(chs[0], cfg.out_channels, 3, padding=1)

        self.motion_config: MotionConfig | None = None
        self.gradient_checkpointing = False
        self.set_motion_modules(motion)

    # -- motion modules ---------------------------------------------------------------------------

    def set_motion_modules(self, cfg: MotionConfig | None) -> None:
        """Insert freshly initialised motion modules of this family (or remove them with None)."""
        self.motion_config = cfg
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            block.add_motion_modules(cfg)

    def motion_module_list(self) -> list[nn.Module]:
        return [m for block in [*self.down_blocks, self.mid_block, *self.up_blocks] for m in block.motion_modules]

    def motion_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if ".motion_modules." in n}

    def motion_state_dict(self) -> dict[str, torch.Tensor]:
        """The motion modules alone, keyed as in the original AnimateDiff files."""
        return {k: v for k, v in self.state_dict().items() if ".motion_modules." in k}

    # -- forward ----------------------------------------------------------------------------------

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        context: torch.Tensor,
        down_residuals: list[torch.Tensor] | None = None,
        mid_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, frames = sample.shape[:3]
        if self.motion_config is not None and frames > self.motion_config.max_frames:
            raise ValueError(
                f"{frames} frames exceed the motion module's {self.motion_config.max_frames} "
                f"({self.motion_config.version}); use at most {self.motion_config.max_frames} frames"
            )
        dtype = self.conv_in.weight.dtype
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        cfg = self.config
        features = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(features.to(dtype))
        pool = frames if self.motion_config is not None and self.motion_config.pools_norm_over_frames else 1
        s = StepContext(
            temb=temb.repeat_interleave(frames, dim=0),
            context=context.to(dtype),
            frames=frames,
            pool_frames=pool,
            use_checkpoint=self.gradient_checkpointing and self.training and torch.is_grad_enabled(),
        )

        # contiguous: a strided view here (e.g. latents sliced from the VAE's moments) crashes the CPU
        # backward of PyTorch 2.13 (segfault), and costs a reorder in the first conv anyway
        x = self.conv_in(rearrange(sample.to(dtype), "b c f h w -> (b f) c h w").contiguous())
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, s)
            skips += block_skips
        if down_residuals is not None:
            skips = [k + fold(r) for k, r in zip(skips, down_residuals, strict=True)]

        x = self.mid_block(x, s)
        if mid_residual is not None:
            x = x + fold(mid_residual)

        for block in self.up_blocks:
            n = len(block.resnets)
            skips, block_skips = skips[:-n], skips[-n:]
            size = tuple(skips[-1].shape[-2:]) if skips else None  # the next level's size
            x = block(x, block_skips, s, size)

        x = self.conv_out(F.silu(group_norm(self.conv_norm_out, x, pool)))
        return rearrange(x, "(b f) c h w -> b c f h w", b=b)


def fold(t: torch.Tensor) -> torch.Tensor:
    """Residuals may come per video [B, C, F, h, w] or already folded [(B F), C, h, w]."""
    return rearrange(t, "b c f h w -> (b f) c h w") if t.dim() == 5 else t
