"""`animatediff toy eval`: the paper's claims, measured on the embedded toy family.

Videos are generated for a fixed set of prompts and seeds and judged by a detector built on the
world's known geometry (toy/detect.py, no learned model). One row per setting, with its baseline:

    base, frame by frame        the image model alone (no motion module): 16 independent images
    base + motion module        claim 1: a motion module trained once animates the image model
    outlined, frame by frame    the personalised model alone: the style its stills have
    outlined + motion module    claim 2: the same module animates a personalised model, no tuning
    + MotionLoRA pan right      claim 3: a few clips impose a motion (share of videos that pan)
    + MotionLoRA zoom in        ... (share of videos that zoom)
    conv1d motion module        ablation 4: temporal convolutions keep frames alike but barely move
    adapter at scale 1 / 0      ablation 5: the domain adapter carries the videos' watermark
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import world
from .detect import motion_matches, video_metrics
from .models import GUIDANCE, path


@dataclass(frozen=True)
class Setting:
    name: str
    model: str = "base"
    motion: str | None = "motion"
    loras: tuple[tuple[str, float], ...] = ()
    expect: str | None = None  # the motion a MotionLoRA should produce (detect.motion_kind's name)


SETTINGS = (
    Setting("base, frame by frame", motion=None),
    Setting("base + motion module"),
    Setting("outlined, frame by frame", model="personal", motion=None),
    Setting("outlined + motion module", model="personal"),
    Setting("base + outlined LoRA + motion module", loras=(("style_lora", 1.0),)),
    Setting("+ MotionLoRA pan right", loras=(("pan_right", 1.0),), expect="pan right"),
    Setting("+ MotionLoRA zoom in", loras=(("zoom_in", 1.0),), expect="zoom in"),
    Setting("conv1d motion module (ablation)", motion="motion_conv1d"),
    Setting("+ domain adapter at scale 1", loras=(("adapter", 1.0),)),
)

COLUMNS = ("adherence", "consistency", "flicker", "jumps", "moving", "displacement", "smoothness", "outlined",
           "watermark", "lora hit")  # fmt: skip


def prompts(n: int, seed: int = 1234) -> list[str]:
    """n prompts covering colours, shapes and backgrounds (a fixed, seeded set)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        color = list(world.COLORS)[i % len(world.COLORS)]
        shape = world.SHAPES[(i // 2) % len(world.SHAPES)]
        background = str(rng.choice([c for c in world.COLORS if c != color]))
        size = ("medium", "large")[i % 2]
        out.append(f"a {size} {color} {shape} on a {background} background")
    return out


@dataclass
class Row:
    setting: Setting
    metrics: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        m = self.metrics
        mean = lambda k: float(np.mean([x[k] for x in m]))  # noqa: E731
        # on a plain background a camera pan looks like the object moving the other way: accepted
        hit = [motion_matches(x, self.setting.expect) for x in m] if self.setting.expect else []
        return {
            "adherence": mean("adherence"),
            "consistency": mean("consistency"),
            "flicker": mean("flicker"),
            "jumps": mean("jumps"),
            "moving": mean("moving"),
            "displacement": mean("displacement"),
            "smoothness": float(np.median([x["smoothness"] for x in m])),
            "outlined": mean("style_outlined"),
            "watermark": mean("watermark"),
            "lora hit": float(np.mean(hit)) if hit else math.nan,
        }


def build(setting: Setting, cache: dict):
    """A pipeline for a setting (the base model and motion modules are reused between settings)."""
    from ..pipeline import AnimateDiff

    key = setting.model
    if key not in cache:
        cache.clear()
        cache[key] = AnimateDiff.from_checkpoints(path(setting.model), path("motion"), device="cpu", dtype="float32")
    pipe = cache[key]
    for name in list(pipe.lora_kinds):
        pipe.remove_lora(name)
    pipe.set_motion_module(path(setting.motion) if setting.motion else None)
    for name, scale in setting.loras:
        pipe.load_lora(path(name), scale, name=name)
    return pipe


def evaluate(
    n_prompts: int = 8, seeds: tuple[int, ...] = (0, 1, 2, 3), steps: int = 25, frames: int = 16,
    guidance: float = GUIDANCE, settings: tuple[Setting, ...] = SETTINGS, gif_dir: Path | None = None, log=print,
) -> list[Row]:  # fmt: skip
    rows, cache = [], {}
    for setting in settings:
        t0 = time.perf_counter()
        pipe = build(setting, cache)
        row = Row(setting)
        for i, prompt in enumerate(prompts(n_prompts)):
            scene = world.scene_for_prompt(prompt, np.random.default_rng(i))
            for seed in seeds:
                with torch.no_grad():
                    video = pipe(prompt, frames=frames, height=world.SIZE, width=world.SIZE, steps=steps, seed=seed,
                                 guidance=guidance, progress=False)  # fmt: skip
                row.metrics.append(video_metrics(video.frames, scene))
                if gif_dir is not None and i == 0 and seed == seeds[0]:
                    gif_dir.mkdir(parents=True, exist_ok=True)
                    video.save(gif_dir / f"toy-{_slug(setting.name)}.gif")
        rows.append(row)
        log(f"{setting.name}: {len(row.metrics)} videos in {time.perf_counter() - t0:.0f} s")
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-").replace("--", "-")


def table(rows: list[Row]) -> str:
    """Markdown: a row per setting; percentages for fractions, pixels for displacement."""
    head = "| setting | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS) + "\n"
    lines = []
    for row in rows:
        s = row.summary()
        cells = []
        for c in COLUMNS:
            v = s[c]
            if math.isnan(v):
                cells.append("–")
            elif c in ("flicker", "displacement", "smoothness"):
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{100 * v:.0f}%")
        lines.append(f"| {row.setting.name} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, read off the table's rows by name."""

    claim: str
    measure: Callable[[dict[str, dict[str, float]]], tuple[str, bool]]  # summaries by row -> (measured, met)


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def _targets() -> tuple[Target, ...]:
    def base_motion(r):
        m = r["base + motion module"]
        text = f"{_pct(m['adherence'])} adherence, {_pct(m['consistency'])} consistency"
        return text, m["adherence"] >= 0.95 and m["consistency"] >= 0.95

    def baseline_worse(r):
        # "keeps colour and shape and moves smoothly; the baseline visibly does not": the baseline is clearly
        # worse on one (identity kept, or objects jumping between frames) and the module no worse on the other
        m, f = r["base + motion module"], r["base, frame by frame"]
        text = f"jumps {_pct(f['jumps'])} vs {_pct(m['jumps'])}, consistency {_pct(f['consistency'])} vs " \
               f"{_pct(m['consistency'])}"  # fmt: skip
        jumps_gap = f["jumps"] >= 2 * m["jumps"] + 0.05
        consistency_gap = f["consistency"] + 0.1 <= m["consistency"]
        no_worse = m["consistency"] >= f["consistency"] - 0.05 and m["jumps"] <= f["jumps"] + 0.02
        return text, (jumps_gap or consistency_gap) and no_worse

    def personal(r):
        p, still, m = r["outlined + motion module"], r["outlined, frame by frame"], r["base + motion module"]
        text = f"outlined {_pct(p['outlined'])} (stills {_pct(still['outlined'])}), moving {_pct(p['moving'])} " \
               f"(base {_pct(m['moving'])})"  # fmt: skip
        return text, p["outlined"] >= still["outlined"] - 0.05 and p["moving"] >= m["moving"] - 0.1

    def lora(name):
        def measure(r):
            hit = r[name]["lora hit"]
            return _pct(hit), hit >= 0.9

        return measure

    def conv1d(r):
        c, m = r["conv1d motion module (ablation)"], r["base + motion module"]
        text = f"displacement {c['displacement']:.2f} vs {m['displacement']:.2f} px, consistency " \
               f"{_pct(c['consistency'])} vs {_pct(m['consistency'])}"  # fmt: skip
        return text, c["displacement"] < 0.6 * m["displacement"] and c["consistency"] >= m["consistency"] - 0.1

    def adapter(r):
        a, m = r["+ domain adapter at scale 1"], r["base + motion module"]
        text = f"watermark {_pct(a['watermark'])} vs {_pct(m['watermark'])}, moving {_pct(a['moving'])}"
        return text, a["watermark"] >= 0.5 and m["watermark"] <= 0.05

    return (
        Target("base + motion module: colour and shape kept in >= 95% of frames", base_motion),
        Target("frame-by-frame baseline visibly worse (2x the jumps or 10 points less consistent; the module no "
               "worse on the other)", baseline_worse),
        Target("personalised + motion module: style as in its stills, motion as with the base", personal),
        Target("MotionLoRA pan right: >= 90% of videos pan right", lora("+ MotionLoRA pan right")),
        Target("MotionLoRA zoom in: >= 90% of videos zoom in", lora("+ MotionLoRA zoom in")),
        Target("conv1d ablation: frames alike, moved < 60% as far as by the transformer", conv1d),
        Target("domain adapter: watermark in >= 50% of frames at scale 1, none at scale 0", adapter),
    )


def targets(rows: list[Row]) -> str:
    """Markdown: each of the issue's targets with what the rows measured and whether it is met."""
    by_name = {row.setting.name: row.summary() for row in rows}
    lines = ["| target | measured | |", "|---|---|---|"]
    for t in _targets():
        text, met = t.measure(by_name)
        lines.append(f"| {t.claim} | {text} | {'**met**' if met else 'not met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="animatediff toy eval", description="Measure the paper's claims (toy world).")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=4, help="N seeds per prompt (default 4: 32 videos a row)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds FIRST..FIRST+N-1 (default 0); fresh seeds check that a figure is not the table's luck")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=GUIDANCE, help=f"CFG scale (default {GUIDANCE:g}, the family's)")
    ap.add_argument("--quick", action="store_true", help="4 prompts, 1 seed (what CI runs)")
    ap.add_argument("--write", type=Path, help="also write the table to this markdown file (e.g. docs/toy_eval.md)")
    ap.add_argument("--gifs", type=Path, help="save one GIF per setting here (e.g. docs/images)")
    args = ap.parse_args(argv)
    if min(args.prompts, args.seeds) < 1 or args.first_seed < 0:
        print(f"error: --prompts and --seeds must be at least 1 and --first-seed at least 0, got {args.prompts}, "
              f"{args.seeds} and {args.first_seed}")  # fmt: skip
        return 2
    first = args.first_seed
    n, seeds = (4, (first,)) if args.quick else (args.prompts, tuple(range(first, first + args.seeds)))
    if not path("base").exists():
        print("error: the embedded toy model is not trained yet: run `animatediff toy train` first")
        return 2
    rows = evaluate(n, seeds, args.steps, guidance=args.guidance, gif_dir=args.gifs)
    text = report(rows, n, seeds, args.steps, args.guidance, gifs=args.gifs is not None)
    print(text)
    if args.write:
        args.write.write_text(text)
    return 0


def report(
    rows: list[Row], n_prompts: int, seeds: tuple[int, ...], steps: int, guidance: float = GUIDANCE, gifs: bool = False,
) -> str:  # fmt: skip
    """The markdown page `--write` saves: how it was measured, the table, the targets."""
    first = f" --first-seed {seeds[0]}" if seeds[0] else ""
    which = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    how = (f"Measured on the shipped family: {n_prompts} prompts x {len(seeds)} seeds ({which}) per "
           f"row, 16 frames {world.SIZE}x{world.SIZE}, {steps} DDIM steps, CFG {guidance:g}, on the CPU (float32).")
    if gifs:
        how += f" Each GIF is the first prompt (*\"{prompts(1)[0]}\"*), seed {seeds[0]}."
    return (f"# Toy-world evaluation\n\n`animatediff toy eval --prompts {n_prompts} --seeds {len(seeds)}{first}`\n\n"
            f"{how}\n\n{table(rows)}\n{targets(rows)}")  # fmt: skip
