"""Writing our models in the community's formats, so our files load in other tools.

Every writer goes through the same tables as the readers (inverted), and records our configs in
safetensors metadata so that tiny or unusual models load back exactly.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import ldm_sd15
from . import motion_modules as mm
from .io import save_file
from .keymap import key_map, translate
from .lora import LoraWeight
from .shapes import metadata_for


def _mapped(state: dict[str, torch.Tensor], mapping: dict[str, str], dtype: torch.dtype | None) -> dict:
    out = {}
    for ours, theirs in mapping.items():
        t = state[ours]
        out[theirs] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def _vae_ldm(vae: nn.Module, dtype) -> dict[str, torch.Tensor]:
    state = vae.state_dict()
    out = _mapped(state, key_map(list(state), ldm_sd15.vae_table(vae.config), ldm_sd15.VAE_PREFIX), dtype)
    # LDM keeps the VAE attention projections as 1x1 convolutions.
    for k, t in out.items():
        if ".mid.attn_1." in k and k.endswith("weight") and t.dim() == 2:
            out[k] = t[:, :, None, None]
    return out


def save_sd15(
    path: str | os.PathLike, unet: nn.Module, vae: nn.Module | None = None, text_encoder: nn.Module | None = None,
    dtype: torch.dtype | None = None, prediction_type: str | None = None,
) -> None:  # fmt: skip
    """A single-file LDM checkpoint (what civitai hosts). Motion modules are not included. With
    `prediction_type`, the file says what its UNet predicts, as kohya's trainers and ComfyUI read it."""
    state = {k: v for k, v in unet.state_dict().items() if ".motion_modules." not in k}
    tensors = _mapped(state, key_map(list(state), ldm_sd15.unet_table(unet.config), ldm_sd15.UNET_PREFIX), dtype)
    if vae is not None:
        tensors.update(_vae_ldm(vae, dtype))
    if text_encoder is not None:
        ts = text_encoder.state_dict()
        tensors.update(_mapped(ts, key_map(list(ts), ldm_sd15.text_table(), ldm_sd15.TEXT_PREFIX), dtype))
    meta = metadata_for(
        unet=unet.config, vae=getattr(vae, "config", None), text_encoder=getattr(text_encoder, "config", None)
    )
    if prediction_type is not None:
        meta[ldm_sd15.PREDICTION_METADATA] = "v" if prediction_type == "v_prediction" else "epsilon"
        if prediction_type == "v_prediction":
            tensors[ldm_sd15.V_PRED_KEY] = torch.zeros(0)
    save_file(tensors, path, meta)


def save_vae(path: str | os.PathLike, vae: nn.Module, layout: str = "diffusers", dtype=None) -> None:
    """A standalone VAE: diffusers names, or LDM names without the `first_stage_model.` prefix."""
    if layout == "ldm":
        tensors = {k.removeprefix(ldm_sd15.VAE_PREFIX): v for k, v in _vae_ldm(vae, dtype).items()}
    else:
        state = vae.state_dict()
        tensors = _mapped(state, {k: k for k in state}, dtype)
    save_file(tensors, path, metadata_for(vae=vae.config))


def save_motion_module(path: str | os.PathLike, unet: nn.Module, layout: str = "animatediff", dtype=None) -> None:
    """The motion modules alone: the original layout (with `pos_encoder.pe`) or diffusers' MotionAdapter."""
    state = unet.motion_state_dict()
    if layout == "diffusers":
        mapping = key_map(list(state), mm.diffusers_table(list(state)))
        state = {k: v for k, v in state.items() if not k.endswith("attention_blocks.1.pos_encoder.pe")}
        mapping = {k: mapping[k] for k in state}
    else:
        mapping = {k: k for k in state}
    save_file(_mapped(state, mapping, dtype), path, metadata_for(motion_module=unet.motion_config, unet=unet.config))


def lora_tensors(weights: list[LoraWeight], layout: str) -> dict[str, torch.Tensor]:
    """LoRA pairs as file tensors.

    layout "animatediff": MotionLoRA / domain-adapter processor keys (no alpha: factors must be 1);
    "kohya": `lora_unet_<diffusers path>` (the naming every reader accepts) with `.alpha` = factor * rank;
    "peft": `unet.<module>.lora_A/B.weight`; "diffusers": the same with diffusers' motion-module names
    (what diffusers' AnimateDiff LoRA loading expects of a MotionLoRA).
    """
    out: dict[str, torch.Tensor] = {}
    for w in weights:
        if layout == "animatediff":
            if w.factor != 1.0:
                raise ValueError("the AnimateDiff LoRA layout has no alpha: bake the factor into `up` first")
            module, proj = w.module.rsplit(".", 1) if not w.module.endswith("to_out.0") else (w.module[:-9], "to_out")
            base = f"{module}.processor.{proj}_lora"
            out[f"{base}.down.weight"], out[f"{base}.up.weight"] = w.down, w.up
        elif layout == "kohya":
            prefix = "lora_unet" if w.component == "unet" else "lora_te"
            path = w.module if w.component == "unet" else "text_model." + w.module
            base = f"{prefix}_{path.replace('.', '_')}"
            out[f"{base}.lora_down.weight"], out[f"{base}.lora_up.weight"] = w.down, w.up
            out[f"{base}.alpha"] = torch.tensor(w.factor * w.down.shape[0])
        elif layout in ("peft", "diffusers"):
            prefix = "unet" if w.component == "unet" else "text_encoder.text_model"
            module = w.module
            if layout == "diffusers" and ".motion_modules." in module:  # diffusers' MotionAdapter names
                module = translate(module, mm.diffusers_table([f"{module}.weight"]))
            out[f"{prefix}.{module}.lora_A.weight"], out[f"{prefix}.{module}.lora_B.weight"] = w.down, w.up
            if w.factor != 1.0:
                out[f"{prefix}.{w.module}.alpha"] = torch.tensor(w.factor * w.down.shape[0])
        else:
            raise ValueError(f"unknown LoRA layout {layout!r}")
    return out


def save_lora(path: str | os.PathLike, weights: list[LoraWeight], layout: str) -> None:
    save_file({k: v.contiguous() for k, v in lora_tensors(weights, layout).items()}, path)
