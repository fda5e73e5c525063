"""The paper's training stages: which models are loaded, which parameters learn, what file comes out.

    image        the text-to-image UNet itself (fine-tune, DreamBooth-style; or train from scratch)
    image_lora   a LoRA on the image UNet's attention (kohya layout, what civitai LoRAs are)
    adapter      stage 1: the domain adapter, a LoRA on the image attention, trained on video frames
    motion       stage 2: the motion modules, base (and adapter) frozen, trained on clips
    motion_lora  stage 3: a MotionLoRA on the motion modules' attention, trained on a few clips

Every result is written in the community's layout, so it loads here and in other tools.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import LoraSet, load_lora
from ..checkpoints.export import save_lora, save_motion_module, save_sd15
from ..components import (
    build_text_encoder,
    build_unet,
    build_vae,
    finalize_position_tables,
    load_model_file,
    noise_schedule_for,
)
from ..config import MotionConfig
from ..models.clip import CLIPTextModel
from ..models.tokenizer import load_tokenizer
from ..models.unet import UNet3D
from ..models.vae import AutoencoderKL
from . import lora as lora_layers
from .config import Config

OUTPUT_NAMES = {
    "image": "model.safetensors",
    "image_lora": "lora.safetensors",
    "adapter": "adapter.safetensors",
    "motion": "motion_module.safetensors",
    "motion_lora": "motion_lora.safetensors",
}


@dataclass
class StageModels:
    unet: UNet3D
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    trainable: dict[str, nn.Parameter]  # name -> parameter, names as in `named_trainable`
    loras: dict[str, lora_layers.LoRALinear] = field(default_factory=dict)
    tokenizer: object = None
    prediction_type: str = "epsilon"  # what the UNet predicts: the config's, else the base file's

    @property
    def trains_text(self) -> bool:
        return any(n.startswith("text_encoder.") for n in self.trainable)


def base_path(cfg: Config) -> str:
    if cfg.model == "toy":
        from ..toy.models import weights_dir

        return str(weights_dir() / "toy_base.safetensors")
    return cfg.model


def base_files(cfg: Config):
    return load_model_file(base_path(cfg), "model", ("sd15",))


def build_stage(cfg: Config, device: torch.device) -> StageModels:
    """Load the models for `cfg.stage`, freeze them, and mark what learns (in float32)."""
    base = base_files(cfg)
    motion = None
    if cfg.motion_module and cfg.stage in ("motion", "motion_lora"):
        motion = load_model_file(
            cfg.motion_module, "motion_module", ("motion_module",), motion_version=cfg.motion_version
        )
    unet, _ = build_unet(base, motion, torch.float32)
    if cfg.stage == "motion" and motion is None:
        # fresh modules, zero-initialised outputs: training starts from the image model's behaviour
        unet.set_motion_modules(_motion_config(cfg, unet))
    finalize_position_tables(unet)
    vae = build_vae(base, torch.float32)
    text = build_text_encoder(base, torch.float32)
    for m in (unet, vae, text):
        m.requires_grad_(False).eval()
    if cfg.adapter and cfg.stage in ("motion", "motion_lora"):
        adapter, _ = load_lora(cfg.adapter, {"unet": unet})
        LoraSet(unet).add("adapter", adapter.weights, cfg.adapter_scale)  # merged, frozen

    t = cfg.train
    predicts = noise_schedule_for(base, t.prediction_type).prediction_type
    models = StageModels(unet, vae, text, trainable={}, tokenizer=load_tokenizer(), prediction_type=predicts)
    if cfg.stage == "image":
        models.trainable = {f"unet.{n}": p for n, p in unet.named_parameters()}
        if t.train_text_encoder:
            models.trainable.update({f"text_encoder.{n}": p for n, p in text.named_parameters()})
    elif cfg.stage == "motion":
        models.trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if ".motion_modules." in n}
    else:
        default = lora_layers.MOTION_ATTENTION if cfg.stage == "motion_lora" else lora_layers.IMAGE_ATTENTION
        models.loras = lora_layers.inject(unet, list(t.lora_targets) or [default], t.lora_rank)
        models.trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if _is_lora_param(n)}
    for p in models.trainable.values():
        p.requires_grad_(True)
    for m in (unet, vae, text):
        m.to(device)
    return models


def _is_lora_param(name: str) -> bool:
    return name.endswith(".down.weight") or name.endswith(".up.weight")


def _motion_config(cfg: Config, unet: UNet3D) -> MotionConfig:
    preset = MotionConfig.from_name(cfg.motion_preset)
    # a family for a UNet of another size keeps the preset's choices but fits its GroupNorm
    groups = min(preset.norm_num_groups, unet.config.norm_num_groups)
    return MotionConfig(**{**preset.to_dict(), "norm_num_groups": groups})


def export(cfg: Config, models: StageModels, out_dir: Path, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the stage's result (with `weights`, e.g. EMA averages, in place of the live ones)."""
    path = out_dir / OUTPUT_NAMES[cfg.stage]
    saved = {}
    if weights:
        with torch.no_grad():
            for name, p in models.trainable.items():
                saved[name] = p.detach().clone()
                p.copy_(weights[name])
    try:
        if cfg.stage == "image":
            save_sd15(path, models.unet, models.vae, models.text_encoder, prediction_type=models.prediction_type)
        elif cfg.stage == "motion":
            save_motion_module(path, models.unet)
        elif cfg.stage == "image_lora":
            save_lora(path, lora_layers.extract(models.loras), "kohya")
        else:  # adapter, motion_lora: the processor layout of the released files
            save_lora(path, lora_layers.extract(models.loras), "animatediff")
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                models.trainable[name].copy_(value)
    return path


def check_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output folder {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise OSError(f"the output folder {path} is not writable")


