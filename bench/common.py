"""Shared by the benchmarks: full-size random-weight checkpoint files, a local diffusers config
folder (so diffusers never reaches the network), peak-RSS measurement and fresh worker processes."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # reference.py: diffusers configs from our configs
BENCH_DIR = Path(tempfile.gettempdir()) / "animatediff-bench"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_files(folder: Path) -> tuple[Path, Path]:
    from animatediff.checkpoints.export import save_motion_module, save_sd15
    from animatediff.config import MotionConfig, TextConfig, UNetConfig, VAEConfig
    from animatediff.models.clip import CLIPTextModel
    from animatediff.models.unet import UNet3D
    from animatediff.models.vae import AutoencoderKL

    model, motion = folder / "sd15_random_fp16.safetensors", folder / "mm_sd_v15_v2_random.safetensors"
    if model.exists() and motion.exists():
        return model, motion
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        unet = UNet3D(UNetConfig.from_name("sd15"), MotionConfig.from_name("mm_sd_v15_v2"))
        vae = AutoencoderKL(VAEConfig.from_name("sd-vae-ft-mse"))
        text = CLIPTextModel(TextConfig.from_name("clip-vit-large-patch14"))
    for m in (unet, vae, text):
        m.to_empty(device="cpu")
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, p[0].numel() ** -0.5 if p.dim() > 1 else 0.02, generator=g)
    from animatediff.components import finalize_position_tables

    finalize_position_tables(unet)
    save_sd15(model, unet, vae, text, dtype=torch.float16)
    save_motion_module(motion, unet, dtype=torch.float16)
    return model, motion


def diffusers_config_folder(folder: Path) -> Path:
    """A local diffusers config folder (no weights) so from_single_file needs no network."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig

    from animatediff.config import UNetConfig
    from reference import diffusers_unet2d_config, write_clip_vocab

    out = folder / "sd15-config"
    if (out / "model_index.json").exists():
        return out
    with torch.device("meta"):
        UNet2DConditionModel(**diffusers_unet2d_config(UNetConfig.from_name("sd15"))).save_config(out / "unet")
        AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                      sample_size=512).save_config(out / "vae")  # fmt: skip
    CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   projection_dim=768, hidden_act="quick_gelu").save_pretrained(out / "text_encoder")
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    write_clip_vocab(out / "tokenizer")
    DDIMScheduler().save_config(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}  # fmt: skip
    (out / "model_index.json").write_text(json.dumps(index))
    return out


def run_worker(script: str, side: str, args: list[str], out: Path) -> dict:
    """Run `script --worker side ...` in a fresh process and return what it saved to `out`."""
    cmd = [sys.executable, script, "--worker", side, "--out", str(out), *args]
    # Our CLI sets THP_MEM_ALLOC_ENABLE before torch loads (animatediff/__init__.py); a benchmark
    # imports torch first, so our worker gets it the way the CLI does.
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"} if side == "ours" else dict(os.environ)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{side} worker failed:\n{r.stderr}")
    return torch.load(out, weights_only=True)


def parse(ap) -> object:
    """Adds the worker plumbing (--dir, --worker, --out) to a benchmark's arguments and parses them."""
    ap.add_argument("--dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--worker", choices=["ours", "diffusers"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    return args


def both_sides(script: str, args, tag: str) -> tuple[dict, dict]:
    """The same benchmark in two fresh processes, ours then diffusers, with this command's own flags."""
    make_files(args.dir)
    diffusers_config_folder(args.dir)
    flags = list(sys.argv[1:])
    return tuple(run_worker(script, side, flags, args.dir / f"{tag}-{side}.pt") for side in ("ours", "diffusers"))
