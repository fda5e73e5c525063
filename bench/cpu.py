"""The embedded default model on this CPU: seconds per video and per step, peak RAM, and where time goes.

    python bench/cpu.py [--profile]

Times what `animatediff generate "..."` does with no model arguments (16 frames, 64x64, 25 DDIM steps,
guidance 7.5): loading the embedded family, then generating, in a fresh process so the load is cold.
With --profile, prints the operators that take the time during sampling (torch.profiler).
"""

from __future__ import annotations

import argparse
import itertools
import resource
import time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    t0 = time.perf_counter()
    import torch

    from animatediff import AnimateDiff

    imported = time.perf_counter()
    base_rss = rss_mb()
    pipe = AnimateDiff.default(device="cpu")
    loaded = time.perf_counter()
    prompt = "a large red circle moving right on a blue background"
    stamps: list[float] = []
    videos = []
    for run in range(args.runs):
        stamps.clear()
        start = time.perf_counter()
        videos.append(pipe(prompt, seed=run, progress=False, callback=lambda *_: stamps.append(time.perf_counter())))
        videos[-1].total = time.perf_counter() - start
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"import {imported - t0:.2f} s, load {loaded - imported:.2f} s")
    print(f"video (16 frames 64x64, 25 steps, CFG): {', '.join(f'{v.total:.2f}' for v in videos)} s")
    print(f"step (UNet, batch 2 x 16 frames): {1000 * sorted(steps)[len(steps) // 2]:.0f} ms median")
    print(f"first command end to end (import + load + one video): {loaded - t0 + videos[0].total:.2f} s")
    print(f"peak RAM above imports: {rss_mb() - base_rss:.0f} MiB")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe(prompt, seed=0, steps=5, progress=False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
