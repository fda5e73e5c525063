"""Latent cache (`data.cache_dir`) vs encoding every batch, one run: the toy base stage, whose text
encoder trains (so only the VAE latents can be cached; captions are encoded live).

    python bench/cache.py                    # 512 toy images, batch 32, 40 steps per side
    python bench/cache.py --steps 80 --batch 16

Both sides train the same random-weight toy family (UNet + text encoder, AdamW) on the same images
with the same seed; only `data.cache_dir` differs. Reported: mean seconds per step over the run, and
the one-off time the cache took to build (the VAE encoding of the whole data set once).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def run(work: Path, images: Path, init: Path, steps: int, batch: int, cached: bool) -> tuple[float, float]:
    from animatediff.toy import world
    from animatediff.toy.train import Budget, stage_config
    from animatediff.training.loop import Trainer

    data = {"images": str(images), "size": world.SIZE, "frames": 1}
    if cached:
        data["cache_dir"] = str(work / "cache")
    name = "cached" if cached else "uncached"
    train = {"batch_size": batch, "lr": 5e-4, "train_text_encoder": True}
    cfg = stage_config(work, name, "image", init, data, steps, Budget(workers=0), 0, train=train)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    t1 = time.perf_counter()  # the cached side also encodes the whole data set once, in here
    trainer.run()
    # every step, the final export included (the same on both sides)
    return (time.perf_counter() - t1) / steps, t1 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    from animatediff.checkpoints.export import save_sd15
    from animatediff.toy import dataset
    from animatediff.toy.models import random_models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = dataset.write_images(work / "images", args.images, seed=0)
        unet, vae, text = random_models(torch.float32)
        save_sd15(work / "init.safetensors", unet, vae, text)
        uncached, setup = run(work, images, work / "init.safetensors", args.steps, args.batch, cached=False)
        cached, setup_cached = run(work, images, work / "init.safetensors", args.steps, args.batch, cached=True)
    build = setup_cached - setup  # the rest of the setup (models, data set index) is the same on both sides
    print(f"toy base stage (text encoder training), batch {args.batch}, {torch.get_num_threads()} threads")
    print("| | encode every batch | cached latents | uncached / cached |\n|---|---|---|---|")
    print(f"| s / step | {uncached:.3f} | {cached:.3f} | {uncached / cached:.2f} |")
    print(f"| one-off cache build ({args.images} images) | – | {build:.1f} s | |")


if __name__ == "__main__":
    main()
