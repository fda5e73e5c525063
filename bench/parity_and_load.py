"""Load time, peak RAM and output parity for a full-size SD1.5 single-file checkpoint: ours vs diffusers.

    python bench/parity_and_load.py [--dtype float32|float16] [--keep]

Writes a random-weight fp16 SD1.5 checkpoint in civitai's layout (and a v2 motion module), then loads
it in fresh processes: ours (`AnimateDiff.from_checkpoints`) and diffusers
(`StableDiffusionPipeline.from_single_file` with a local config folder, no network). Each worker runs
the UNet on the same small input; the main process prints the figures side by side and the max
difference of the outputs. Peak RAM is the worker's maximum resident set size minus its size after
imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # reference.py: diffusers configs from our configs


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


def probe_input():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 2, 16, 16, generator=g), torch.randn(1, 77, 768, generator=g)


def worker(side: str, model: Path, motion: Path, dtype: str, config: Path, out: Path) -> None:
    if side == "ours":
        import animatediff  # noqa: F401
    else:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    base = rss_mb()
    t0 = time.perf_counter()
    dt = getattr(torch, dtype)
    x, ctx = probe_input()
    if side == "ours":
        from animatediff import AnimateDiff

        pipe = AnimateDiff.from_checkpoints(model, None, device="cpu", dtype=dtype)
        load_s = time.perf_counter() - t0
        load_rss = rss_mb()
        t1 = time.perf_counter()
        pipe.set_motion_module(motion)
        motion_s = time.perf_counter() - t1
        pipe.set_motion_module(None)
        with torch.no_grad():
            eps = pipe.unet(x, 500, ctx).float()
        params = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                     for p in m.parameters())  # fmt: skip
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(
            str(model), config=str(config), local_files_only=True, torch_dtype=dt, safety_checker=None
        )
        load_s = time.perf_counter() - t0
        load_rss = rss_mb()
        motion_s = float("nan")
        with torch.no_grad():
            frames = [pipe.unet(x[:, :, f], 500, ctx).sample for f in range(x.shape[2])]
        eps = torch.stack(frames, dim=2).float()
        params = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                     for p in m.parameters())  # fmt: skip
    torch.save({"eps": eps, "load_s": load_s, "motion_s": motion_s, "peak_mb": load_rss - base,
                "model_mb": params / 2**20}, out)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "animatediff-bench")
    ap.add_argument("--worker", choices=["ours", "diffusers"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        model, motion = make_files(args.dir)
        return worker(args.worker, model, motion, args.dtype, args.dir / "sd15-config", args.out)

    model, motion = make_files(args.dir)
    diffusers_config_folder(args.dir)
    print(f"checkpoint: {model.name} ({model.stat().st_size / 2**30:.2f} GiB fp16), loaded as {args.dtype}")
    results = {}
    for side in ("ours", "diffusers"):
        out = args.dir / f"{side}.pt"
        cmd = [sys.executable, __file__, "--worker", side, "--dtype", args.dtype, "--dir", str(args.dir), "--out",
               str(out)]  # fmt: skip
        # Our CLI sets THP_MEM_ALLOC_ENABLE before torch loads (see animatediff/__init__.py); here torch
        # is imported first, so the worker gets it the way the CLI does.
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"} if side == "ours" else dict(os.environ)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"{side} worker failed:\n{r.stderr}")
        results[side] = torch.load(out, weights_only=True)
    o, d = results["ours"], results["diffusers"]
    print(f"{'':28}{'ours':>12}{'diffusers':>12}{'ratio':>8}")
    for label, key in (("load UNet+VAE+CLIP (s)", "load_s"), ("peak RAM during load (MiB)", "peak_mb")):
        print(f"{label:28}{o[key]:12.2f}{d[key]:12.2f}{o[key] / d[key]:8.2f}")
    print(f"{'loaded models (MiB)':28}{o['model_mb']:12.0f}{d['model_mb']:12.0f}")
    print(f"{'peak RAM / model size':28}{o['peak_mb'] / o['model_mb']:12.2f}{d['peak_mb'] / d['model_mb']:12.2f}")
    print(f"{'+ motion module v2 (s)':28}{o['motion_s']:12.2f}{'':>12}")
    err = (o["eps"] - d["eps"]).abs().max().item() / max(1.0, d["eps"].abs().max().item())
    print(f"UNet output, same file, max relative difference: {err:.2e}")


if __name__ == "__main__":
    main()
