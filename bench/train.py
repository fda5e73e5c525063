"""Motion-module training step: ours vs a diffusers-based step, same files, same inputs, one run.

    python bench/train.py                          # CPU, reduced: 4 frames 64x64, batch 1
    python bench/train.py --device cuda --precision bf16 --frames 16 --size 256 --batch 1 --checkpointing

Both sides load the same random-weight SD1.5 single file and v2 motion module (bench/common.py),
freeze the image model, and train only the motion modules with AdamW (lr 1e-4) on the same latents,
timesteps, noise and text embeddings: the UNet forward and backward plus the optimizer step. VAE and
text encoding are left out (they are the same frozen work on both sides, and cacheable). Reported:
clips per second and peak memory (RSS above imports on CPU, CUDA peak allocated on GPU).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from common import both_sides, make_files, parse, rss_mb


def inputs(args, device):
    g = torch.Generator().manual_seed(0)
    h = args.size // 8
    x = torch.randn(args.batch, 4, args.frames, h, h, generator=g)
    noise = torch.randn(x.shape, generator=g)
    ctx = torch.randn(args.batch, 77, 768, generator=g)
    t = torch.randint(0, 1000, (args.batch,), generator=g)
    return x.to(device), noise.to(device), ctx.to(device), t.to(device)


def worker(side: str, args: argparse.Namespace, out: Path) -> None:
    model, motion = make_files(args.dir)
    if side == "ours":
        import animatediff  # noqa: F401
    else:
        import diffusers  # noqa: F401
    base = rss_mb()
    device = torch.device(args.device)
    x, noise, ctx, t = inputs(args, device)
    if side == "ours":
        from animatediff.checkpoints import load
        from animatediff.components import build_unet

        unet, _ = build_unet(load(model), load(motion), torch.float32)
        unet.to(device).train()
        unet.gradient_checkpointing = args.checkpointing
        params = [p for n, p in unet.named_parameters() if ".motion_modules." in n]

        def forward():
            return unet(x, t, ctx)
    else:
        from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
        from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
        from safetensors.torch import load_file

        unet2d = UNet2DConditionModel.from_single_file(str(model), config=str(args.dir / "sd15-config"),
                                                       subfolder="unet", local_files_only=True)  # fmt: skip
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)
        adapter.load_state_dict(convert_animatediff_checkpoint_to_diffusers(load_file(motion)), strict=False)
        unet = UNetMotionModel.from_unet2d(unet2d, adapter).to(device).train()
        del unet2d
        unet.freeze_unet2d_params()
        if args.checkpointing:
            unet.enable_gradient_checkpointing()
        params = [p for n, p in unet.named_parameters() if ".motion_modules." in n]
        ctx_frames = ctx.repeat_interleave(args.frames, 0)

        def forward():
            return unet(x, t, ctx_frames).sample

    for p in unet.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-4)
    amp = torch.autocast(device.type, getattr(torch, args.precision)) if args.precision != "float32" else nullcontext()

    def step():
        with amp:
            loss = F.mse_loss(forward().float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: optimizer states, kernels
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb() - base
    median = sorted(times)[len(times) // 2]
    torch.save({"clips_s": args.batch / median, "step_s": median, "peak_mb": peak}, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    args = parse(ap)
    if args.worker:
        return worker(args.worker, args, args.out)
    o, d = both_sides(__file__, args, "train")
    print(f"motion-module training step, SD1.5 + v2 (random weights), batch {args.batch} x {args.frames} frames "
          f"{args.size}x{args.size}, {args.precision} on {args.device}"
          f"{', gradient checkpointing' if args.checkpointing else ''}")  # fmt: skip
    print(f"{'':22}{'ours':>12}{'diffusers':>12}{'ours/diffusers':>16}")
    for label, key in (("clips / s", "clips_s"), ("step (s)", "step_s"), ("peak memory (MiB)", "peak_mb")):
        print(f"{label:22}{o[key]:12.3f}{d[key]:12.3f}{o[key] / d[key]:16.2f}")


if __name__ == "__main__":
    main()
