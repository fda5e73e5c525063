"""End-to-end text-to-video: ours vs diffusers' AnimateDiffPipeline, same files, same noise, one run.

    python bench/generate.py                        # CPU, small: 8 frames 128x128, 5 DDIM steps, fp32
    python bench/generate.py --device cuda --dtype float16 --frames 16 --size 512 --steps 25

Both sides load the same random-weight SD1.5 single file and v2 motion module (bench/common.py) in a
fresh process, generate from the same starting latents with DDIM, guidance 7.5 and a negative prompt,
and decode every frame. Reported: whole video seconds (after loading), ms per denoising step
(UNet with CFG batch 2), peak memory (RSS above the post-import level on CPU; CUDA peak allocated on
GPU), and the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import torch

from common import both_sides, make_files, parse, rss_mb

PROMPT, NEGATIVE = "a corgi running on the beach, golden hour", "blurry, low quality"


def peak_memory_mb(device: str, base_rss: float) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_mb() - base_rss


def worker(side: str, args: argparse.Namespace, out: Path) -> None:
    model, motion = make_files(args.dir)
    if side == "ours":
        import animatediff  # noqa: F401
    else:
        import diffusers  # noqa: F401
    base = rss_mb()
    dtype = getattr(torch, args.dtype)
    h = args.size // 8
    latents = torch.randn(args.batch, 4, args.frames, h, h, generator=torch.Generator().manual_seed(0))
    stamps: list[float] = []

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    if side == "ours":
        from animatediff import AnimateDiff

        pipe = AnimateDiff.from_checkpoints(model, motion, device=args.device, dtype=args.dtype)
        if args.compile:
            pipe.unet = torch.compile(pipe.unet)

        def generate():
            videos = pipe([PROMPT] * args.batch, [NEGATIVE] * args.batch, frames=args.frames, height=args.size,
                          width=args.size, steps=args.steps, guidance=7.5, latents=latents, progress=False,
                          callback=lambda *_: (sync(), stamps.append(time.perf_counter())))  # fmt: skip
            return torch.from_numpy(videos[0].frames)
    else:
        from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter, StableDiffusionPipeline
        from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
        from safetensors.torch import load_file

        config = str(args.dir / "sd15-config")
        sd = StableDiffusionPipeline.from_single_file(str(model), config=config, local_files_only=True,
                                                      torch_dtype=dtype, safety_checker=None)  # fmt: skip
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)
        adapter.load_state_dict(convert_animatediff_checkpoint_to_diffusers(load_file(motion)), strict=False)
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1,
                                  clip_sample=False, set_alpha_to_one=True)  # fmt: skip
        pipe = AnimateDiffPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                   motion_adapter=adapter.to(dtype), scheduler=scheduler).to(args.device)  # fmt: skip
        del sd
        pipe.set_progress_bar_config(disable=True)
        if args.compile:
            pipe.unet = torch.compile(pipe.unet)

        def step_end(p, i, t, kw):
            sync()
            stamps.append(time.perf_counter())
            return kw

        def generate():
            out = pipe([PROMPT] * args.batch, negative_prompt=[NEGATIVE] * args.batch, num_frames=args.frames,
                       height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                       latents=latents.to(args.device, dtype), output_type="np", decode_chunk_size=8,
                       callback_on_step_end=step_end)  # fmt: skip
            return torch.from_numpy((out.frames[0] * 255).round().astype("uint8"))

    warmup_s = 0.0
    if args.warmup or args.compile:  # the first call compiles (timed apart) and warms kernels and caches
        t0 = time.perf_counter()
        with torch.no_grad():
            generate()
        sync()
        warmup_s = time.perf_counter() - t0
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    stamps.clear()
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        frames = generate()
    sync()
    total = time.perf_counter() - t0
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    torch.save({"video_s": total, "step_ms": 1000 * sorted(steps)[len(steps) // 2] if steps else float("nan"),
                "peak_mb": peak_memory_mb(args.device, base), "warmup_s": warmup_s, "frames": frames}, out)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", action="store_true", help="generate once before timing (GPU kernels, caches)")
    ap.add_argument("--batch", type=int, default=1, help="videos per call")
    ap.add_argument("--compile", action="store_true", help="torch.compile the UNet on both sides")
    args = parse(ap)
    if args.worker:
        return worker(args.worker, args, args.out)
    o, d = both_sides(__file__, args, "gen")
    print(f"SD1.5 + v2 motion module, random weights, {args.frames} frames {args.size}x{args.size}, "
          f"{args.steps} DDIM steps, CFG 7.5, {args.dtype} on {args.device}")  # fmt: skip
    print(f"{'':24}{'ours':>12}{'diffusers':>12}{'ours/diffusers':>16}")
    rows = (("whole video (s)", "video_s"), ("UNet step, CFG (ms)", "step_ms"), ("peak memory (MiB)", "peak_mb"))
    for label, key in rows:
        print(f"{label:24}{o[key]:12.2f}{d[key]:12.2f}{o[key] / d[key]:16.2f}")


if __name__ == "__main__":
    main()
