"""Shape probes: model configurations read off tensor shapes (as ComfyUI's model_detection does).

What shapes cannot tell (attention heads, GroupNorm groups, VAE scaling) falls back to the SD1.5
values, unless the file carries our `animatediff.config` metadata (files this package writes do).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from ..config import MotionConfig, TextConfig, UNetConfig, VAEConfig, motion_preset
from .io import CheckpointError, CheckpointFile

METADATA_KEY = "animatediff.config"
_CONFIG_TYPES = {"unet": UNetConfig, "vae": VAEConfig, "text_encoder": TextConfig, "motion_module": MotionConfig}


def metadata_config(f: CheckpointFile, component: str):
    """The config recorded in the file by this package, if any."""
    raw = f.metadata.get(METADATA_KEY)
    if not raw:
        return None
    try:
        d = json.loads(raw).get(component)
        return _CONFIG_TYPES[component].from_dict(d) if d else None
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f.path, f"invalid {METADATA_KEY} metadata ({e})") from e


def metadata_for(**configs) -> dict[str, str]:
    """safetensors metadata recording our configs, e.g. `metadata_for(unet=cfg, vae=vae_cfg)`."""
    return {METADATA_KEY: json.dumps({k: v.to_dict() for k, v in configs.items() if v is not None})}


def _max_index(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(found) if found else -1


def unet_config_ldm(f: CheckpointFile, prefix: str) -> UNetConfig:
    keys = [k[len(prefix) :] for k in f.keys() if k.startswith(prefix)]
    shape = lambda k: f.shape(prefix + k)  # noqa: E731
    downsamplers = sorted(int(m.group(1)) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)))
    levels = len(downsamplers) + 1
    blocks = _max_index(keys, r"input_blocks\.(\d+)\.") + 1
    per_level = blocks // levels - 1
    first = [(per_level + 1) * i + 1 for i in range(levels)]
    chs = tuple(shape(f"input_blocks.{b}.0.out_layers.3.weight")[0] for b in first)
    attention = tuple(f"input_blocks.{b}.1.proj_in.weight" in keys for b in first)
    a = next((b for b, has in zip(first, attention) if has), None)
    cfg = UNetConfig(
        in_channels=shape("input_blocks.0.0.weight")[1],
        out_channels=shape("out.2.weight")[0],
        block_out_channels=chs,
        layers_per_block=per_level,
        attention_levels=attention,
        num_heads=(8,) * levels,
    )
    if a is not None:
        cfg = replace(
            cfg,
            cross_attention_dim=shape(f"input_blocks.{a}.1.transformer_blocks.0.attn2.to_k.weight")[1],
            use_linear_projection=len(shape(f"input_blocks.{a}.1.proj_in.weight")) == 2,
            transformer_layers=_max_index(keys, rf"input_blocks\.{a}\.1\.transformer_blocks\.(\d+)\.") + 1,
        )
    return cfg


def unet_config_diffusers(f: CheckpointFile) -> UNetConfig:
    keys = f.keys()
    levels = _max_index(keys, r"down_blocks\.(\d+)\.") + 1
    chs = tuple(f.shape(f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels))
    attention = tuple(f"down_blocks.{i}.attentions.0.proj_in.weight" in f for i in range(levels))
    cfg = UNetConfig(
        in_channels=f.shape("conv_in.weight")[1],
        out_channels=f.shape("conv_out.weight")[0],
        block_out_channels=chs,
        layers_per_block=_max_index(keys, r"down_blocks\.0\.resnets\.(\d+)\.") + 1,
        attention_levels=attention,
        num_heads=(8,) * levels,
    )
    a = next((i for i, has in enumerate(attention) if has), None)
    if a is not None:
        t = f"down_blocks.{a}.attentions.0"
        cfg = replace(
            cfg,
            cross_attention_dim=f.shape(f"{t}.transformer_blocks.0.attn2.to_k.weight")[1],
            use_linear_projection=len(f.shape(f"{t}.proj_in.weight")) == 2,
            transformer_layers=_max_index(keys, rf"{re.escape(t)}\.transformer_blocks\.(\d+)\.") + 1,
        )
    return cfg


def vae_config(f: CheckpointFile, prefix: str, ldm: bool) -> VAEConfig:
    keys = [k[len(prefix) :] for k in f.keys() if k.startswith(prefix)]
    shape = lambda k: f.shape(prefix + k)  # noqa: E731
    if ldm:
        levels = _max_index(keys, r"encoder\.down\.(\d+)\.") + 1
        chs = tuple(shape(f"encoder.down.{i}.block.0.conv2.weight")[0] for i in range(levels))
        per_level = _max_index(keys, r"encoder\.down\.0\.block\.(\d+)\.") + 1
    else:
        levels = _max_index(keys, r"encoder\.down_blocks\.(\d+)\.") + 1
        chs = tuple(shape(f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(levels))
        per_level = _max_index(keys, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.") + 1
    return VAEConfig(
        in_channels=shape("encoder.conv_in.weight")[1],
        out_channels=shape("decoder.conv_out.weight")[0],
        latent_channels=shape("post_quant_conv.weight")[0],
        block_out_channels=chs,
        layers_per_block=per_level,
    )


def text_config(f: CheckpointFile, prefix: str) -> TextConfig:
    """prefix ends at the transformers names, e.g. `cond_stage_model.transformer.text_model.`."""
    keys = [k[len(prefix) :] for k in f.keys() if k.startswith(prefix)]
    vocab, hidden = f.shape(prefix + "embeddings.token_embedding.weight")
    return TextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=f.shape(prefix + "encoder.layers.0.mlp.fc1.weight")[0],
        num_layers=_max_index(keys, r"encoder\.layers\.(\d+)\.") + 1,
        num_heads=max(1, hidden // 64),  # CLIP text towers use 64-wide heads
        max_positions=f.shape(prefix + "embeddings.position_embedding.weight")[0],
    )


def motion_config(f: CheckpointFile, keys: list[str], version: str, pe_length: int | None) -> MotionConfig:
    cfg = metadata_config(f, "motion_module")
    if cfg is not None:
        return cfg
    layers = _max_index(keys, r".*?\.transformer_blocks\.(\d+)\.") + 1
    return replace(motion_preset(version, pe_length), transformer_layers=max(layers, 1))
