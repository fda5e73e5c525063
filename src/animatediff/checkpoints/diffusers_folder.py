"""diffusers folders: a pipeline (`unet/`, `vae/`, `text_encoder/`, each with `config.json`), or one model
folder (a MotionAdapter, an AutoencoderKL such as sd-vae-ft-mse, a UNet, a CLIP text encoder).

Our UNet and VAE use diffusers' parameter names, so those tables are the identity, except for VAE
files saved before diffusers renamed the attention (`query/key/value/proj_attn`, as in the
original sd-vae-ft-mse upload). The configs come from config.json, not from shapes.
"""

from __future__ import annotations

from pathlib import Path

from ..config import MotionConfig, TextConfig, UNetConfig, VAEConfig, motion_preset
from . import motion_modules as mm
from .io import CheckpointError, CheckpointFile, read_config_json
from .keymap import PrefixTable, key_map

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    "diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
)  # fmt: skip

_OLD_VAE_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def vae_table_diffusers(f: CheckpointFile) -> PrefixTable:
    if not any(k.endswith("attentions.0.query.weight") for k in f.keys()):
        return {}
    return {
        f"{part}.mid_block.attentions.0.{new}": f"{part}.mid_block.attentions.0.{old}"
        for part in ("encoder", "decoder")
        for new, old in _OLD_VAE_ATTENTION.items()
    }


def weights_file(folder: Path) -> CheckpointFile:
    for name in WEIGHT_NAMES:
        if (folder / name).exists():
            return CheckpointFile(folder / name)
    if any(folder.glob("*.index.json")):
        raise CheckpointError(folder, "sharded weights are not supported", "merge the shards into one file")
    raise CheckpointError(folder, "no weights file found", f"expected one of {', '.join(WEIGHT_NAMES[:2])}")


def unet_config(c: dict) -> UNetConfig:
    down = c.get("down_block_types", [])
    supported = {"CrossAttnDownBlock2D", "DownBlock2D"}
    if not set(down) <= supported or c.get("addition_embed_type") or c.get("class_embed_type"):
        raise CheckpointError(None, f"unsupported UNet ({c.get('_class_name')}, blocks {down})", "SD1.x UNets only")
    levels = len(c["block_out_channels"])
    heads = c.get("num_attention_heads") or c.get("attention_head_dim", 8)  # SD1.x: head count, misnamed
    heads = tuple(heads) if isinstance(heads, list) else (heads,) * levels
    layers = c.get("transformer_layers_per_block", 1)
    if not isinstance(layers, int):
        raise CheckpointError(None, "per-level transformer depths are not supported")
    return UNetConfig(
        in_channels=c.get("in_channels", 4),
        out_channels=c.get("out_channels", 4),
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=c.get("layers_per_block", 2),
        attention_levels=tuple(t.startswith("CrossAttn") for t in down),
        num_heads=heads,
        transformer_layers=layers,
        cross_attention_dim=c.get("cross_attention_dim", 768),
        norm_num_groups=c.get("norm_num_groups", 32),
        norm_eps=c.get("norm_eps", 1e-5),
        use_linear_projection=c.get("use_linear_projection", False),
        flip_sin_to_cos=c.get("flip_sin_to_cos", True),
        freq_shift=c.get("freq_shift", 0),
    )


def vae_config(c: dict) -> VAEConfig:
    return VAEConfig(
        in_channels=c.get("in_channels", 3),
        out_channels=c.get("out_channels", 3),
        latent_channels=c.get("latent_channels", 4),
        block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=c.get("layers_per_block", 2),
        norm_num_groups=c.get("norm_num_groups", 32),
        scaling_factor=c.get("scaling_factor", 0.18215),
    )


def text_config(c: dict) -> TextConfig:
    return TextConfig(
        vocab_size=c.get("vocab_size", 49408),
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        max_positions=c.get("max_position_embeddings", 77),
        layer_norm_eps=c.get("layer_norm_eps", 1e-5),
        hidden_act=c.get("hidden_act", "quick_gelu"),
        eos_token_id=c.get("eos_token_id", 49407),
    )


def motion_config(c: dict) -> MotionConfig:
    """diffusers does not record the version: mid block -> v2, else the table length tells v1 (24) / v3."""
    length = c.get("motion_max_seq_length", 32)
    version = "v2" if c.get("use_motion_mid_block", True) else ("v1" if length == 24 else "v3")
    cfg = motion_preset(version, length)
    from dataclasses import replace

    return replace(
        cfg,
        num_heads=c.get("motion_num_attention_heads", 8),
        norm_num_groups=c.get("motion_norm_num_groups", 32),
        transformer_layers=c.get("motion_transformer_layers_per_block", 1),
    )


def load_folder(path: Path):
    from .loading import Component, Loaded, _report_unused, _text_keys, _unet_keys, _vae_keys, set_prediction_type

    if (path / "unet").is_dir():
        label = "Stable Diffusion 1.x model (diffusers folder)"
        loaded = Loaded(path=path, kind="sd15", format="diffusers", label=label)
        parts = {"unet": path / "unet", "vae": path / "vae", "text_encoder": path / "text_encoder"}
        parts = {name: p for name, p in parts.items() if p.is_dir()}
        scheduler = path / "scheduler" / "scheduler_config.json"  # where a folder says what its UNet predicts
        if scheduler.exists():
            set_prediction_type(loaded, str(read_config_json(scheduler).get("prediction_type", "")))
    elif (path / "config.json").exists():
        c = read_config_json(path / "config.json")
        name = {"MotionAdapter": "motion_module", "AutoencoderKL": "vae", "UNet2DConditionModel": "unet"}.get(
            c.get("_class_name"), "text_encoder" if "CLIPTextModel" in c.get("architectures", []) else None
        )
        if name is None:
            raise CheckpointError(path, f"unsupported diffusers model {c.get('_class_name') or c.get('architectures')}")
        loaded = Loaded(path=path, kind=name, format="diffusers", label=f"{name.replace('_', ' ')} (diffusers folder)")
        parts = {name: path}
    else:
        raise CheckpointError(path, "is a folder but not a diffusers model (no unet/ nor config.json)")

    for name, folder in parts.items():
        c = read_config_json(folder / "config.json")
        f = weights_file(folder)
        try:
            if name == "unet":
                cfg = unet_config(c)
                keys = {k: k for k in _unet_keys(cfg)}
            elif name == "vae":
                cfg = vae_config(c)
                keys = key_map(_vae_keys(cfg), vae_table_diffusers(f))
            elif name == "text_encoder":
                cfg = text_config(c)
                keys = key_map(_text_keys(cfg), {}, "text_model." if "text_model.final_layer_norm.weight" in f else "")
            else:
                cfg = motion_config(c)
                loaded.version = cfg.version
                ours = [k for k in _unet_keys(UNetConfig(block_out_channels=tuple(c["block_out_channels"])), cfg)
                        if ".motion_modules." in k]  # fmt: skip
                keys = key_map(ours, mm.diffusers_table(ours))
        except (KeyError, TypeError) as e:
            raise CheckpointError(folder / "config.json", f"missing or malformed field {e}") from e
        optional = frozenset(k for k in keys if mm.is_pe_key(k))
        loaded.components[name] = Component(name, cfg, f, keys, optional)
        other = Loaded(path=folder, kind=name, format="diffusers", label=name)
        other.components[name] = loaded.components[name]
        _report_unused(other, f, lambda k: k.endswith("position_ids") or mm.is_pe_key(k))
        loaded.unused += [f"{folder.name}/{k}" for k in other.unused]
    return loaded
