"""Building the models from checkpoint files: meta-device construction, strict loading, devices.

Models are built on the `meta` device (no memory, no random init) and receive their weights straight
from the file in the target dtype, so a load never holds two copies of a model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import torch
from torch import nn

from .checkpoints import CheckpointError, Loaded, load, load_into
from .config import MotionConfig
from .models.clip import CLIPTextModel
from .models.motion import PositionalEncoding, sinusoidal_table
from .models.unet import UNet3D
from .models.vae import AutoencoderKL
from .sampling import NoiseSchedule

log = logging.getLogger("animatediff")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}  # fmt: skip


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) != "auto":
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA device is available")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("--device mps was asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """auto: fp16 on GPUs (what SD1.5 runs in everywhere), fp32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16") from None


def expect_kind(path: str | os.PathLike, loaded: Loaded, wanted: tuple[str, ...], slot: str) -> Loaded:
    """A clear error when a file goes into the wrong slot (a motion module given as --model, ...)."""
    if loaded.kind in wanted:
        return loaded
    hints = {
        "motion_module": "pass it with --motion-module",
        "motion_lora": "pass it with --motion-lora",
        "lora": "pass it with --lora",
        "domain_adapter": "pass it with --adapter",
        "sd15": "pass it with --model",
        "vae": "pass it with --vae",
    }
    raise CheckpointError(path, f"this is a {loaded.label}, not a file for {slot}", hints.get(loaded.kind, ""))


def build(model_type: type[nn.Module], loaded: Loaded, component: str, dtype: torch.dtype, *args) -> nn.Module:
    """A model of `model_type` with the weights of `loaded.components[component]`."""
    c = loaded.components.get(component)
    if c is None:
        raise CheckpointError(loaded.path, f"has no {component.replace('_', ' ')}")
    with torch.device("meta"):
        model = model_type(c.config, *args).to(dtype)
    load_into(model, c)
    return model.eval().requires_grad_(False)


def build_unet(
    model: Loaded, motion: Loaded | None, dtype: torch.dtype
) -> tuple[UNet3D, list[str]]:
    """The UNet of `model` with the motion modules of `motion` (or none). Returns notes for the user."""
    notes: list[str] = []
    base = model.components.get("unet")
    if base is None:
        raise CheckpointError(model.path, "has no UNet")
    motion_cfg: MotionConfig | None = motion.components["motion_module"].config if motion else None
    with torch.device("meta"):
        unet = UNet3D(base.config, motion_cfg).to(dtype)
    load_into(unet, base, what="UNet")
    if motion is not None:
        load_into(unet, motion.components["motion_module"], what="motion module")
        notes += finalize_position_tables(unet)
    return unet.eval().requires_grad_(False), notes


def finalize_position_tables(unet: nn.Module) -> list[str]:
    """Use the exact sinusoid for `pos_encoder.pe` unless the file's table is really different.

    The released tables are that sinusoid (stored in fp16 in fp16 files); the current original code
    recomputes it rather than loading it. A table that differs beyond rounding (a fine-tune that
    changed it) is kept, as ComfyUI keeps it, and reported. Files without a table get the sinusoid.
    """
    notes = []
    for name, module in unet.named_modules():
        if not isinstance(module, PositionalEncoding):
            continue
        exact = sinusoidal_table(module.pe.shape[1], module.pe.shape[2])
        if module.pe.device.type == "meta" or torch.allclose(module.pe.float().cpu(), exact, atol=2e-3):
            module.pe = exact.to(dtype=module.pe.dtype if module.pe.device.type != "meta" else torch.float32)
        elif not notes:
            notes.append(f"the motion module's position tables differ from the sinusoid (e.g. {name}); kept as stored")
    return notes


def load_model_file(path: str | os.PathLike, slot: str, kinds: tuple[str, ...], **kwargs) -> Loaded:
    return expect_kind(path, load(path, **kwargs), kinds, slot)


def build_vae(loaded: Loaded, dtype: torch.dtype) -> AutoencoderKL:
    return build(AutoencoderKL, loaded, "vae", dtype)


def build_text_encoder(loaded: Loaded, dtype: torch.dtype) -> CLIPTextModel:
    return build(CLIPTextModel, loaded, "text_encoder", dtype)


def noise_schedule_for(base: Loaded | None, prediction_type: str | None = None) -> NoiseSchedule:
    """AnimateDiff's noise schedule, predicting what `prediction_type` says, else the model file, else epsilon."""
    predicts = prediction_type or (base.prediction_type if base is not None else None) or "epsilon"
    if predicts not in ("epsilon", "v_prediction"):
        raise ValueError(f"unknown prediction type {predicts!r}: use epsilon or v_prediction")
    return replace(NoiseSchedule.PRESETS["animatediff"], prediction_type=predicts)
