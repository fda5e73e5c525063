"""Stable Diffusion 1.x single-file checkpoints (the original LDM layout civitai models ship in).

    model.diffusion_model.*                     UNet     (input_blocks / middle_block / output_blocks)
    first_stage_model.*                         VAE      (encoder.down.{i}.block.{j}, mid.attn_1, ...)
    cond_stage_model.transformer.text_model.*   CLIP     (transformers names under a prefix)

Tables map our module prefixes (diffusers names) to LDM ones; see `keymap.translate`.
"""

from __future__ import annotations

from ..config import UNetConfig, VAEConfig
from .keymap import PrefixTable

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."

# How a single file says its UNet predicts v (velocity) rather than the noise: the empty `v_pred` tensor
# that ComfyUI and Forge look for, or Stability's ModelSpec metadata, which kohya's trainers write.
V_PRED_KEY = "v_pred"
PREDICTION_METADATA = "modelspec.prediction_type"
PREDICTION_NAMES = {"epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}

# Entries that carry no weights of ours (noise schedule buffers, EMA counters, CLIP position ids).
IGNORED_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "model_ema.decay", "model_ema.num_updates",
    "cond_stage_model.transformer.text_model.embeddings.position_ids",
    "cond_stage_model.transformer.embeddings.position_ids",
)  # fmt: skip

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip


def _resnet(table: PrefixTable, ours: str, ldm: str) -> None:
    for a, b in _RESNET.items():
        table[f"{ours}.{a}"] = f"{ldm}.{b}"


def unet_table(cfg: UNetConfig) -> PrefixTable:
    """LDM `input_blocks.{(n+1)i+j+1}` <-> `down_blocks.{i}.resnets.{j}` and friends (n = layers per level)."""
    n, levels = cfg.layers_per_block, cfg.levels
    t: PrefixTable = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    for i in range(levels):
        for j in range(n):
            ldm = f"input_blocks.{(n + 1) * i + j + 1}"
            _resnet(t, f"down_blocks.{i}.resnets.{j}", f"{ldm}.0")
            if cfg.attention_levels[i]:
                t[f"down_blocks.{i}.attentions.{j}"] = f"{ldm}.1"
        if i < levels - 1:
            t[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(n + 1) * (i + 1)}.0.op"

    _resnet(t, "mid_block.resnets.0", "middle_block.0")
    t["mid_block.attentions.0"] = "middle_block.1"
    _resnet(t, "mid_block.resnets.1", "middle_block.2")

    for i in range(levels):
        level = levels - 1 - i
        attention = cfg.attention_levels[level]
        for j in range(n + 1):
            ldm = f"output_blocks.{(n + 1) * i + j}"
            _resnet(t, f"up_blocks.{i}.resnets.{j}", f"{ldm}.0")
            if attention:
                t[f"up_blocks.{i}.attentions.{j}"] = f"{ldm}.1"
        if i < levels - 1:
            t[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{(n + 1) * i + n}.{2 if attention else 1}.conv"
    return t


_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_table(cfg: VAEConfig) -> PrefixTable:
    """LDM's decoder levels are numbered in reverse: `decoder.up.{L-1-i}` <-> `decoder.up_blocks.{i}`."""
    levels = len(cfg.block_out_channels)
    t: PrefixTable = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for part in ("encoder", "decoder"):
        t[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        t[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        for a, b in _VAE_ATTENTION.items():
            t[f"{part}.mid_block.attentions.0.{a}"] = f"{part}.mid.attn_1.{b}"
    for i in range(levels):
        for j in range(cfg.layers_per_block):
            _vae_resnet(t, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        if i < levels - 1:
            t[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        for j in range(cfg.layers_per_block + 1):
            _vae_resnet(t, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{levels - 1 - i}.block.{j}")
        if i < levels - 1:
            t[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - i}.upsample.conv"
    return t


def _vae_resnet(table: PrefixTable, ours: str, ldm: str) -> None:
    table[ours] = ldm
    table[f"{ours}.conv_shortcut"] = f"{ldm}.nin_shortcut"


def text_table(file_keys: set[str] | None = None) -> PrefixTable:
    """transformers' CLIPTextModel names, under `text_model.` (very old files lack that level)."""
    old = file_keys is not None and f"{TEXT_PREFIX}embeddings.token_embedding.weight" in file_keys
    return {"": "" if old else "text_model"}
