"""`animatediff` command line: verbs are thin layers over the Python API.

Errors a user can cause (bad files, impossible sizes, unwritable outputs) print one line and exit
with status 2; `--debug` shows the traceback instead. Ctrl-C exits with 130 and leaves no file.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line itself."""


def parse_scaled(value: str) -> tuple[str, float]:
    """PATH or PATH:SCALE (the scale is what follows the last colon, if it is a number)."""
    path, sep, scale = value.rpartition(":")
    if sep and path:
        try:
            return path, float(scale)
        except ValueError:
            pass
    return value, 1.0


def parse_size(value: str) -> tuple[int, int]:
    """WIDTHxHEIGHT or one number for a square."""
    m = re.fullmatch(r"(\d+)(?:[xX*](\d+))?", value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 512x512 or 512, got {value!r}")
    w = int(m[1])
    return w, int(m[2]) if m[2] else w


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "video"


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (local files; nothing is downloaded)")
    g.add_argument("--model", metavar="PATH", help="SD1.5 model: single .safetensors/.ckpt or a diffusers folder "
                   "(default: the small model embedded in the package)")  # fmt: skip
    g.add_argument("--motion-module", metavar="PATH", help="AnimateDiff motion module (mm_sd_v15_v2.ckpt, ...)")
    g.add_argument("--motion-version", choices=["v1", "v2", "v3"], help="say the motion module's version when its "
                   "file cannot tell (v1 and v3 files without position tables)")  # fmt: skip
    g.add_argument("--vae", metavar="PATH", help="a VAE to use instead of the model's (e.g. sd-vae-ft-mse)")
    g.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], help="what the model's UNet predicts, "
                   "if its file does not say (default: the file's `v_pred` key or metadata, else epsilon)")  # fmt: skip
    g.add_argument("--lora", metavar="PATH[:SCALE]", action="append", default=[], type=parse_scaled,
                   help="image LoRA (kohya/civitai or diffusers); repeatable")  # fmt: skip
    g.add_argument("--motion-lora", metavar="PATH[:SCALE]", action="append", default=[], type=parse_scaled,
                   help="MotionLoRA (v2_lora_ZoomIn.ckpt...); repeatable")  # fmt: skip
    g.add_argument("--adapter", metavar="PATH[:SCALE]", type=parse_scaled, help="v3 domain adapter (v3_sd15_adapter)")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps (default: auto)")
    r.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: fp16 on GPUs)")
    r.add_argument("--offload", action="store_true", help="keep models in RAM and move each to the GPU only while used")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="animatediff", description="AnimateDiff text-to-video, offline.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="verb", required=True)

    g = sub.add_parser("generate", help="make a video from a prompt", description="Make a video from a prompt.")
    g.add_argument("prompt")
    g.add_argument("--negative", default="", help="negative prompt (default: empty)")
    g.add_argument("--frames", type=int, default=16, help="number of frames (default 16; v1 modules take up to 24)")
    g.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT in pixels, multiples of 8 (default: the model's)")
    g.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    g.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: the model's: 7.5, or the embedded toy model's own)")
    g.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale 0..1 (default 0)")
    g.add_argument("--seed", type=int, help="random seed (default: random; printed and saved in the file)")
    g.add_argument("--sampler", default="ddim", help="ddim, euler, euler_a, euler_karras, dpmpp_2m, "
                   "dpmpp_2m_karras, lcm (default ddim, as the original)")  # fmt: skip
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    g.add_argument("--clip-skip", type=int, default=1, help="use the text encoder's k-th last layer (default 1)")
    g.add_argument("--fps", type=float, default=8.0, help="frames per second of the output (default 8)")
    g.add_argument("--vae-tile", type=int, metavar="N", help="decode in tiles of N latent pixels (large sizes)")
    g.add_argument("-o", "--output", type=Path, help="output file: .mp4 .gif .webp, or .png for a folder of "
                   "frames (default: <prompt>-<seed>.mp4)")  # fmt: skip
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_model_args(g)

    r = sub.add_parser("run", help="run an original AnimateDiff prompt config (configs/prompts/*.yaml)")
    r.add_argument("config", type=Path)
    r.add_argument("-o", "--output-dir", type=Path, default=Path("samples"), help="where videos go (default samples/)")
    r.add_argument("--format", default="gif", choices=["gif", "mp4", "webp"], help="output format (default gif)")
    r.add_argument("--fps", type=float, default=8.0)
    r.add_argument("--model", metavar="PATH", help="model for entries without dreambooth_path")
    r.add_argument("--device", default="auto")
    r.add_argument("--dtype", default="auto")
    r.add_argument("-q", "--quiet", action="store_true")

    i = sub.add_parser("info", help="say what checkpoint files are")
    i.add_argument("files", nargs="+", type=Path)

    t = sub.add_parser("train", help="train a motion module, MotionLoRA, domain adapter or LoRA (docs/training.md)")
    t.add_argument("config", type=Path, help="training config (YAML)")
    t.add_argument("--resume", default="auto", help="auto (latest checkpoint in output_dir), none, or a path")

    sub.add_parser("shards", help="pack a folder of captioned videos into tar shards for training", add_help=False)
    sub.add_parser("toy", help="the embedded toy world: `toy train` (remake the model family), `toy eval`",
                   add_help=False)  # fmt: skip
    return p


def cmd_generate(args: argparse.Namespace) -> None:
    from .pipeline import AnimateDiff
    from .video import writable

    seed = args.seed if args.seed is not None else int(time.time_ns() % (2**31 - 1))
    output = args.output or Path(f"{slug(args.prompt)}-{seed}.mp4")
    writable(output)  # before minutes of work, not after
    t0 = time.perf_counter()
    pipe = AnimateDiff.from_checkpoints(
        args.model, args.motion_module, vae=args.vae, loras=args.lora, motion_loras=args.motion_lora,
        adapter=args.adapter, motion_version=args.motion_version, prediction_type=args.prediction_type,
        device=args.device, dtype=args.dtype, offload=args.offload,
    )  # fmt: skip
    for note in pipe.notes:
        print(f"note: {note}", file=sys.stderr)
    width, height = args.size or (pipe.default_size, pipe.default_size)
    video = pipe(
        args.prompt, args.negative, frames=args.frames, width=width, height=height, steps=args.steps,
        guidance=args.guidance, guidance_rescale=args.guidance_rescale, seed=seed, sampler=args.sampler,
        eta=args.eta, clip_skip=args.clip_skip, fps=args.fps, vae_tile=args.vae_tile, progress=not args.quiet,
    )  # fmt: skip
    video.metadata["model"] = str(args.model or "embedded toy model")
    path = video.save(output)
    print(f"saved {path} ({len(video)} frames, {width}x{height}, {args.fps:g} fps, seed {seed}) "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import AnimateDiff
    from .prompt_config import read_jobs
    from .video import writable

    jobs = read_jobs(args.config, Path(args.model) if args.model else None)
    out = args.output_dir / args.config.stem
    out.mkdir(parents=True, exist_ok=True)
    writable(out / f"probe.{args.format}")
    cache: dict[tuple, AnimateDiff] = {}
    for n, job in enumerate(jobs):
        if job.model is None:
            raise ValueError(f"{args.config}: entry {job.name} has no dreambooth_path; pass --model")
        key = (job.model, job.motion_module, job.motion_version, tuple(job.loras), tuple(job.motion_loras), job.adapter)
        if key not in cache:
            cache.clear()  # one pipeline in memory at a time
            cache[key] = AnimateDiff.from_checkpoints(
                job.model, job.motion_module, loras=job.loras, motion_loras=job.motion_loras, adapter=job.adapter,
                motion_version=job.motion_version, device=args.device, dtype=args.dtype,
            )  # fmt: skip
        pipe = cache[key]
        t0 = time.perf_counter()
        video = pipe(
            job.prompt, job.negative, frames=job.frames, width=job.width, height=job.height, steps=job.steps,
            guidance=job.guidance, seed=job.seed, fps=args.fps, progress=not args.quiet,
        )  # fmt: skip
        path = video.save(out / f"{n:04d}-{slug(job.prompt)}.{args.format}")
        print(f"[{n + 1}/{len(jobs)}] saved {path} (seed {job.seed}) in {time.perf_counter() - t0:.1f} s")


def cmd_info(args: argparse.Namespace) -> None:
    from .checkpoints import load

    for f in args.files:
        print(load(f).describe())


def cmd_train(args: argparse.Namespace) -> None:
    from .training.loop import train

    train(args.config, args.resume)


VERBS = {"generate": cmd_generate, "run": cmd_run, "info": cmd_info, "train": cmd_train}


def _guarded(call: Callable[[], int | None], debug: bool, training: bool = False) -> int:
    """Run a command; a known error becomes one line and exit status 2 (the traceback only with --debug)."""
    from .checkpoints import CheckpointError

    errors: tuple[type[Exception], ...] = (CheckpointError, ValueError, OSError, KeyError)
    if training:
        from .training.loop import TrainingError

        errors += (TrainingError,)
    try:
        return call() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except errors as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # commands with parsers of their own; --debug is understood anywhere on their line
    debug, rest = "--debug" in argv, [a for a in argv if a != "--debug"]
    if rest[:1] == ["shards"]:  # python -m animatediff.training.shards
        from .training.shards import main as shards_main

        return _guarded(lambda: shards_main(rest[1:]), debug)
    if rest[:2] == ["toy", "train"]:
        from .toy.train import main as toy_train

        return _guarded(lambda: toy_train(rest[2:]), debug, training=True)
    if rest[:2] == ["toy", "eval"]:
        from .toy.evaluate import main as toy_eval

        return _guarded(lambda: toy_eval(rest[2:]), debug)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    if not args.debug:  # one line per warning, without the source line Python adds
        warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"

    def verb() -> None:  # the verbs' return values are not exit statuses
        VERBS[args.verb](args)

    return _guarded(verb, args.debug, training=args.verb == "train")


if __name__ == "__main__":
    sys.exit(main())
