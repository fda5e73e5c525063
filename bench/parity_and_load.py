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
import time
from pathlib import Path

import torch

from common import both_sides, make_files, parse, rss_mb


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
    args = parse(ap)
    model, motion = make_files(args.dir)
    if args.worker:
        return worker(args.worker, model, motion, args.dtype, args.dir / "sd15-config", args.out)
    print(f"checkpoint: {model.name} ({model.stat().st_size / 2**30:.2f} GiB fp16), loaded as {args.dtype}")
    o, d = both_sides(__file__, args, "load")
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
