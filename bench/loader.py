"""Data loading over many short epochs, one run: a toy MotionLoRA stage (few clips, so an epoch lasts a
few steps, as in the paper's MotionLoRA training on a few dozen clips), its latents cached, read in the
trainer's own process (`data.workers: 0`) and by two worker processes (`data.workers: 2`).

    python bench/loader.py                  # 24 clips, 8 a step (3 steps an epoch), 24 steps a side
    python bench/loader.py --clips 50 --batch 16 --steps 30

Both sides train the shipped toy family's pan right stage recipe from the same files with the same
seed; only the worker count differs, so any difference is the cost of the workers. Reading cached
latents costs little, so two workers should cost nothing either: a trainer that starts its workers
again every epoch pays for it here (docs/performance.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def run(work: Path, clips: Path, workers: int, steps: int, batch: int) -> float:
    from animatediff.toy import models, world
    from animatediff.toy.train import MOTION_LORAS, Budget, stage_config
    from animatediff.training.loop import Trainer

    data = {"videos": str(clips), "size": world.SIZE, "frames": 16, "stride": 1, "cache_dir": str(work / "cache")}
    train = {**MOTION_LORAS["pan_right"], "batch_size": batch}
    cfg = stage_config(work, f"workers{workers}", "motion_lora", models.path("base"), data, steps,
                       Budget(workers=workers), 0, motion_module=str(models.path("motion")),
                       adapter=str(models.path("adapter")), train=train)  # fmt: skip
    trainer = Trainer(cfg)  # (the first side also builds the latent cache, in here: not timed)
    t0 = time.perf_counter()
    trainer.run()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()

    from animatediff.toy import dataset, world

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = dataset.write_videos(work / "clips", args.clips, seed=3, kinds=("pan right",), motion_words=False)
        main_process = run(work, clips, 0, args.steps, args.batch)
        two_workers = run(work, clips, 2, args.steps, args.batch)
    epochs = args.steps * args.batch / (args.clips // args.batch * args.batch)
    print(f"toy MotionLoRA stage, {args.clips} clips of {world.SIZE}x{world.SIZE}x16, {args.batch} a step, "
          f"{args.steps} steps ({epochs:.0f} epochs), {torch.get_num_threads()} threads")  # fmt: skip
    print("| | workers 0 | workers 2 | workers 2 / workers 0 |\n|---|---|---|---|")
    print(f"| s / step | {main_process:.2f} | {two_workers:.2f} | {two_workers / main_process:.2f} |")


if __name__ == "__main__":
    main()
