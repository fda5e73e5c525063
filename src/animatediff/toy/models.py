"""The embedded default model family, shipped inside the package (see docs/toy_world.md).

Files live in `animatediff/toy/weights/` in the community's formats: an SD1.5-layout single file for
the base, an original-layout motion module, LoRAs. Until they are trained, a seeded random model of
the same configuration stands in, and says so.
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import torch

from ..config import TOY_MOTION, TOY_TEXT, TOY_UNET, TOY_VAE

TOY_SIZE = 64  # pixels per side of the toy world's frames

def weights_dir() -> Path:
    return Path(str(resources.files("animatediff.toy").joinpath("weights")))


def load_default(cls, device: torch.device, dtype: torch.dtype):
    from ..checkpoints import load
    from ..components import build_text_encoder, build_unet, build_vae

    folder = weights_dir()
    base_file, motion_file = folder / "toy_base.safetensors", folder / "toy_motion.safetensors"
    if base_file.exists() and motion_file.exists():
        base, motion = load(base_file), load(motion_file)
        unet, notes = build_unet(base, motion, dtype)
        return cls(unet, build_vae(base, dtype), build_text_encoder(base, dtype), device=device, dtype=dtype,
                   default_size=TOY_SIZE, notes=notes)  # fmt: skip
    warnings.warn("the embedded toy model is not trained yet: generating with random weights", stacklevel=3)
    return cls(*random_models(dtype), device=device, dtype=dtype, default_size=TOY_SIZE,
               notes=["untrained random-weight toy model"])  # fmt: skip


def random_models(dtype: torch.dtype = torch.float32, seed: int = 0):
    from ..models.clip import CLIPTextModel
    from ..models.unet import UNet3D
    from ..models.vae import AutoencoderKL

    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        unet, vae, text = UNet3D(TOY_UNET, TOY_MOTION), AutoencoderKL(TOY_VAE), CLIPTextModel(TOY_TEXT)
    return tuple(m.to(dtype).eval().requires_grad_(False) for m in (unet, vae, text))
