"""The embedded default model family, shipped inside the package (see docs/toy_world.md).

Files live in `animatediff/toy/weights/` in the community's formats: an SD1.5-layout single file for
the base (and for the personalised base), an original-layout motion module, processor-layout adapter
and MotionLoRAs, a kohya-layout style LoRA. `animatediff toy train` makes them from scratch.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import torch

from ..config import TOY_MOTION, TOY_TEXT, TOY_UNET, TOY_VAE
from . import world

FILES = {
    "base": "toy_base.safetensors",
    "motion": "toy_motion.safetensors",
    "motion_conv1d": "toy_motion_conv1d.safetensors",
    "adapter": "toy_adapter.safetensors",
    "personal": "toy_outlined.safetensors",
    "style_lora": "toy_outlined_lora.safetensors",
    "pan_right": "toy_pan_right.safetensors",
    "zoom_in": "toy_zoom_in.safetensors",
}

# The family's CFG scale, as SD1.5's is 7.5. Measured, not assumed: at 7.5 the motion module redraws
# shapes (base + module adheres in 86% of frames), at 4-5 in 94% (docs/toy_world.md, "The family's
# guidance scale").
GUIDANCE = 4.0


def weights_dir() -> Path:
    return Path(str(resources.files("animatediff.toy").joinpath("weights")))


def path(key: str) -> Path:
    return weights_dir() / FILES[key]


def unknown_words(prompt: str) -> list[str]:
    """Words of a prompt that the toy world's captions never use."""
    known = world.vocabulary()
    words = [w.strip(".,;:!?()[]\"'") for w in prompt.lower().split()]
    return sorted({w for w in words if w and w not in known})


def load_default(cls, device: torch.device, dtype: torch.dtype, prediction_type: str | None = None):
    from ..checkpoints import load
    from ..components import build_text_encoder, build_unet, build_vae, noise_schedule_for

    if path("base").exists() and path("motion").exists():
        base, motion = load(path("base")), load(path("motion"))
        unet, notes = build_unet(base, motion, dtype)
        pipe = cls(unet, build_vae(base, dtype), build_text_encoder(base, dtype), device=device, dtype=dtype,
                   noise_schedule=noise_schedule_for(base, prediction_type), default_guidance=GUIDANCE,
                   notes=notes)  # fmt: skip
    else:
        warnings.warn("the embedded toy model is not trained yet: generating with random weights", stacklevel=3)
        pipe = cls(*random_models(dtype), noise_schedule=noise_schedule_for(None, prediction_type), device=device,
                   dtype=dtype, default_guidance=GUIDANCE, notes=["untrained random-weight toy model"])  # fmt: skip
    pipe.vocabulary_check = unknown_words
    return pipe


def random_models(dtype: torch.dtype = torch.float32, seed: int = 0):
    from ..models.clip import CLIPTextModel
    from ..models.unet import UNet3D
    from ..models.vae import AutoencoderKL

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet, vae, text = UNet3D(TOY_UNET, TOY_MOTION), AutoencoderKL(TOY_VAE), CLIPTextModel(TOY_TEXT)
    return tuple(m.to(dtype).eval().requires_grad_(False) for m in (unet, vae, text))
