"""Independent reference models (diffusers / transformers) built from our configs, for parity tests.

Two behaviours of the original AnimateDiff differ from diffusers and are patched into the reference
here, so the reference computes what the original code computes:
- the motion module's GroupNorm normalises each frame (diffusers pools over the frames);
- with v1 modules (`use_inflated_groupnorm: false`) the ResNet norms and `conv_norm_out` pool over frames.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from animatediff.config import MotionConfig, TextConfig, UNetConfig, VAEConfig


def diffusers_unet2d_config(cfg: UNetConfig) -> dict:
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)]
    return dict(
        sample_size=64,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=cfg.num_heads,  # diffusers' SD1.x quirk: this is the number of heads
        norm_num_groups=cfg.norm_num_groups,
        norm_eps=cfg.norm_eps,
        use_linear_projection=cfg.use_linear_projection,
        flip_sin_to_cos=cfg.flip_sin_to_cos,
        freq_shift=cfg.freq_shift,
    )


def diffusers_unet2d(cfg: UNetConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**diffusers_unet2d_config(cfg)).eval()


def diffusers_motion_adapter(cfg: UNetConfig, motion: MotionConfig):
    from diffusers import MotionAdapter

    return MotionAdapter(
        block_out_channels=cfg.block_out_channels,
        motion_layers_per_block=cfg.layers_per_block,
        motion_num_attention_heads=motion.num_heads,
        motion_norm_num_groups=motion.norm_num_groups,
        motion_max_seq_length=motion.max_frames,
        use_motion_mid_block=motion.mid_block,
    ).eval()


class PerFrameGroupNorm(nn.Module):
    """The original motion module's norm: each frame of [b, c, f, h, w] normalised on its own."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x):
        f = x.shape[2]
        return rearrange(self.norm(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) c h w -> b c f h w", f=f)


class PooledGroupNorm(nn.Module):
    """The v1 UNet's ResNet norms: statistics pooled over the frames of folded [(b f), c, h, w]."""

    def __init__(self, norm: nn.GroupNorm, frames: int):
        super().__init__()
        self.norm, self.frames = norm, frames

    def forward(self, x):
        y = self.norm(rearrange(x, "(b f) c h w -> b c f h w", f=self.frames))
        return rearrange(y, "b c f h w -> (b f) c h w")


def make_original(ref_motion_unet, motion: MotionConfig, frames: int) -> None:
    """Patch a diffusers UNetMotionModel (weights already loaded) to compute what the original computes."""
    for name, module in list(ref_motion_unet.named_modules()):
        in_motion = ".motion_modules." in name
        if in_motion and isinstance(getattr(module, "norm", None), nn.GroupNorm) and hasattr(module, "proj_in"):
            module.norm = PerFrameGroupNorm(module.norm)
    if motion.pools_norm_over_frames:
        for module in ref_motion_unet.modules():
            if type(module).__name__ == "ResnetBlock2D":
                module.norm1 = PooledGroupNorm(module.norm1, frames)
                module.norm2 = PooledGroupNorm(module.norm2, frames)
        ref_motion_unet.conv_norm_out = PooledGroupNorm(ref_motion_unet.conv_norm_out, frames)


@torch.no_grad()
def random_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fill a model built on the meta device with random weights of sensible scale (fast at full size).

    Every parameter is random, including the zero-initialised motion-module outputs, so a test sees
    every layer. Sinusoidal position tables are rebuilt by diffusers' own class.
    """
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0, p[0].numel() ** -0.5, generator=g)
        elif name.endswith("weight"):
            p.normal_(1, 0.1, generator=g)
        else:
            p.normal_(0, 0.05, generator=g)
    for module in model.modules():
        if type(module).__name__ == "SinusoidalPositionalEmbedding":
            dim, length = module.pe.shape[2], module.pe.shape[1]
            module.pe.copy_(type(module)(dim, length).pe)
    return model.eval()


def diffusers_motion_unet(cfg: UNetConfig, motion: MotionConfig, seed: int = 0):
    """A random-weight diffusers UNetMotionModel (not yet patched to the original's norms)."""
    from diffusers import UNetMotionModel

    with torch.device("meta"):
        model = UNetMotionModel.from_unet2d(diffusers_unet2d(cfg), diffusers_motion_adapter(cfg, motion))
    return random_weights_(model, seed)


def diffusers_vae(cfg: VAEConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        scaling_factor=cfg.scaling_factor,
    ).eval()


def transformers_clip(cfg: TextConfig):
    """transformers' model at `cfg` with every parameter randomised at a scale where each sub-layer
    moves the residual stream (the default init leaves biases at 0 and norms at 1, hiding mix-ups)."""
    import transformers

    ref_cfg = transformers.CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act=cfg.hidden_act,
        eos_token_id=cfg.eos_token_id,
        attn_implementation="eager",
    )
    ref = transformers.CLIPTextModel(ref_cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias") or "embedding" in name:
                p.normal_(0.0, 0.1 if name.endswith("bias") else 1.0)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return ref


def write_clip_vocab(path: Path) -> Path:
    """vocab.json / merges.txt derived from the shipped .gz as OpenAI's simple_tokenizer.py does."""
    data = resources.files("animatediff.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    merges = gzip.decompress(data).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = [chr(c) for c in cs]
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    (path / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return path
