"""The GPU benchmark: ours vs diffusers' AnimateDiffPipeline, eager and torch.compile, in one run.

    python bench/gpu.py                 # a CUDA machine with diffusers installed (see docs/performance.md)
    python bench/gpu.py --quick         # the main configuration only

SD1.5 UNet + v2 motion module + sd-vae-ft-mse + CLIP-L, random weights at the real sizes, fp16,
25 DDIM steps, guidance 7.5 (CFG batch 2), both sides from the same files and starting latents.
Configurations: 16 frames 512x512 (main), 24 and 32 frames, 768x768, and a batch of 4 videos.
For each: whole-video seconds after a warm-up call, median ms per UNet step, peak GPU memory.
Also: compile time (the warm-up call), achieved TFLOP/s of the UNet step (FLOPs counted by
torch.utils.flop_counter), and the PSNR of our fp16 frames against our fp32 eager frames, asserted,
so speed never silently changes the picture. Prints a table and writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from common import BENCH_DIR, diffusers_config_folder, make_files, run_worker

HERE = Path(__file__).resolve().parent
GENERATE = str(HERE / "generate.py")
CONFIGS = {  # name: (frames, size, batch)
    "16x512": (16, 512, 1),
    "24x512": (24, 512, 1),
    "32x512": (32, 512, 1),
    "16x768": (16, 768, 1),
    "16x512 batch 4": (16, 512, 4),
}
MIN_PSNR = 30.0  # dB: fp16 against fp32, same noise; lower means the fast path changed the picture


def flops_worker(out: Path, frames: int, size: int, device: str) -> None:
    """FLOPs of one UNet call (CFG batch 2) at a configuration, counted on the device."""
    from torch.utils.flop_counter import FlopCounterMode

    from animatediff.config import MotionConfig, UNetConfig
    from animatediff.models.unet import UNet3D

    with torch.device(device):
        unet = UNet3D(UNetConfig.from_name("sd15"), MotionConfig.from_name("mm_sd_v15_v2")).half().eval()
        x = torch.randn(2, 4, frames, size // 8, size // 8, dtype=torch.half)
        ctx = torch.randn(2, 77, 768, dtype=torch.half)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor([500, 500], device=device), ctx)
    torch.save({"flops": counter.get_total_flops()}, out)


def _numbers(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "frames"}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.float() - b.float()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the main configuration only")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--worker", choices=["flops"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    if args.worker:
        return flops_worker(args.out, args.frames, args.size, "cuda")
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA device (bench/generate.py runs the same comparison on a CPU)")
    args.dir.mkdir(parents=True, exist_ok=True)
    make_files(args.dir)
    diffusers_config_folder(args.dir)

    def run(side: str, name: str, dtype: str = "float16", compile_: bool = False) -> dict:
        frames, size, batch = CONFIGS[name]
        flags = ["--device", "cuda", "--dtype", dtype, "--frames", str(frames), "--size", str(size), "--batch",
                 str(batch), "--steps", str(args.steps), "--dir", str(args.dir), "--warmup"]  # fmt: skip
        tag = f"{side}-{name.replace(' ', '_')}-{dtype}-{'compiled' if compile_ else 'eager'}"
        return run_worker(GENERATE, side, flags + ["--compile"] * compile_, args.dir / f"gpu-{tag}.pt")

    results: dict[str, dict] = {}
    names = ["16x512"] if args.quick else list(CONFIGS)
    for name in names:
        results[name] = {"ours": run("ours", name), "diffusers": run("diffusers", name)}
    main_cfg = results["16x512"]
    main_cfg["ours_compiled"] = run("ours", "16x512", compile_=True)
    main_cfg["diffusers_compiled"] = run("diffusers", "16x512", compile_=True)
    reference = run("ours", "16x512", dtype="float32")
    quality = psnr(main_cfg["ours"]["frames"], reference["frames"])
    quality_compiled = psnr(main_cfg["ours_compiled"]["frames"], reference["frames"])
    flops = run_worker(__file__, "flops", ["--frames", "16", "--size", "512"], args.dir / "gpu-flops.pt")["flops"]

    device = torch.cuda.get_device_name()
    print(f"{device}; SD1.5 + v2 motion module, random weights, fp16, {args.steps} DDIM steps, CFG 7.5")
    print(f"{'':34}{'video s':>9}{'step ms':>9}{'peak GiB':>10}")
    for name, sides in results.items():
        for side, r in sides.items():
            print(f"{name + ' ' + side:34}{r['video_s']:9.2f}{r['step_ms']:9.1f}{r['peak_mb'] / 1024:10.2f}")
    best_step = min(main_cfg["ours"]["step_ms"], main_cfg["ours_compiled"]["step_ms"])
    best_video = min(main_cfg["ours"]["video_s"], main_cfg["ours_compiled"]["video_s"])
    summary = {
        "device": device,
        "steps": args.steps,
        "speedup_vs_diffusers_eager": main_cfg["diffusers"]["video_s"] / best_video,
        "speedup_vs_diffusers_compiled": main_cfg["diffusers_compiled"]["video_s"] / best_video,
        "peak_mem_ratio": main_cfg["ours"]["peak_mb"] / main_cfg["diffusers"]["peak_mb"],
        "unet_step_tflop": flops / 1e12,
        "achieved_tflops": flops / 1e12 / (best_step / 1000),
        "compile_s": {side: main_cfg[f"{side}_compiled"]["warmup_s"] for side in ("ours", "diffusers")},
        "psnr_fp16_vs_fp32_db": quality,
        "psnr_compiled_vs_fp32_db": quality_compiled,
        "configs": {n: {s: _numbers(r) for s, r in sides.items()} for n, sides in results.items()},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "configs"}, indent=1))
    out = HERE / "results" / "gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    assert quality >= MIN_PSNR and quality_compiled >= MIN_PSNR, f"fp16 frames drift from fp32: {quality:.1f} dB"


if __name__ == "__main__":
    main()
