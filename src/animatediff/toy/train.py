"""Training the embedded model family from scratch, reproducibly: `animatediff toy train`.

    1 datasets     the world written to disk (images, watermarked clips and a frame of each, outlined images,
                   motion clips)
    2 vae          a tiny AutoencoderKL (64x64 -> 4x16x16) on rendered frames (its own short loop)
      text         with Budget.text_steps: the text encoder alone, naming each caption's attributes (its own
                   loop), then frozen in the base
    3 base         the text-to-image UNet (the text encoder too with text_steps 0), on still images (`image`)
      refine       the base's second, gentler cosine cycle on the same images: the base that ships. The
                   stages below train on the first cycle's base and carry over to it unchanged
    4 adapter      the domain adapter on video frames, captioned as stills: it absorbs the watermark (`adapter`)
    5 motion       the motion module on clips captioned as stills, base and adapter frozen (`motion`)
    6 personal     a DreamBooth-style fine-tune on outlined objects (stage `image`), as a single file
    7 style_lora   the same style as an image LoRA (stage `image_lora`)
    8 motion loras "pan right" and "zoom in" from 50 clips each (stage `motion_lora`)
    9 conv1d       the ablation: 1D temporal convolutions in the same slot, same data

Every stage but the VAE runs through `animatediff.training` (the same code users train with), and
every file is written in the community's layouts. Seeded throughout; each stage's time is logged.
Uses the GPU when there is one.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load
from ..checkpoints.export import save_sd15
from ..checkpoints.io import CheckpointFile, save_file
from ..checkpoints.loading import load_into
from ..config import TOY_TEXT, TOY_UNET, TOY_VAE
from ..models.clip import CLIPTextModel
from ..models.unet import UNet3D
from ..models.vae import AutoencoderKL
from ..training.config import Config, validate
from ..training.loop import Trainer
from ..training.stages import OUTPUT_NAMES
from . import dataset, world
from .models import FILES, GUIDANCE, weights_dir


@dataclass(frozen=True)
class Budget:
    """Sized to train the whole family in about 4 h on the 2-core CPU, stage after stage (with
    `--lanes 2` an estimated 2.7 h, 2.2 h with `--vae`; minutes on a GPU)."""

    images: int = 20000
    videos: int = 4000
    style_images: int = 8000  # the personalised data: 2,000 (29 epochs) kept shapes less well (docs/toy_world.md)
    lora_clips: int = 50
    vae_steps: int = 4000
    text_steps: int = 1500  # the text encoder pretrained alone, then frozen (0: it learns with the UNet)
    base_steps: int = 6000
    refine_steps: int = 2000  # the base's second cycle (lr 2e-4): base + motion module 94% -> 99% adherence
    adapter_steps: int = 800
    motion_steps: int = 1500
    personal_steps: int = 1800
    style_lora_steps: int = 600
    pan_right_steps: int = 1350  # the MotionLoRAs (their recipes: MOTION_LORAS below)
    zoom_in_steps: int = 1200
    pan_right_batch: int = 8  # clips a step: pan right's direction is a weak signal, so it takes twice the clips
    zoom_in_batch: int = 4
    image_batch: int = 32
    video_batch: int = 4
    vae_batch: int = 16
    workers: int = 2


# About 3x the default: the longer recipe, for a machine with time or a GPU.
LONG = Budget(vae_steps=10000, base_steps=18000, refine_steps=6000, adapter_steps=2400, motion_steps=4500,
              personal_steps=5400, style_lora_steps=1500, pan_right_steps=4050,
              zoom_in_steps=3600)  # fmt: skip

# Each MotionLoRA's recipe (its steps and clips a step: the Budget's `<name>_steps`, `<name>_batch`). A strong
# learning rate on the noisier steps only: the loss is small there and its direction signal weak (docs/toy_world.md:
# pan right 75% of videos vs 12% with lr 1e-3, rank 8, 300 steps on all timesteps). Pan's direction is settled at
# t >= 850 (rank 32: 75% vs 69% at 16); what it lacked was clips a step and then steps: on fresh seeds (16-23, 64
# videos) 8 clips a step for 900 steps pan 94% of videos, 4 clips 81%, 16 clips 81% (drawing worse: adherence 88%
# against 96%), and 4 clips on t >= 600 59% (that weakens it where the direction is settled). On seeds 8-15, 8 clips
# for 1,350 steps pan 97% (900 steps: 89%; 16 clips for 450 steps: 66%), and 96% over seeds 8-31, adherence 91%.
# Zoom's size change is made lower down: on t >= 850 it learnt the direction but too little size (38% of videos at
# 1,800 steps, 81% with the file at scale 1.5); on t >= 600, 88% at lr 6e-3 on the previous family. On the shipped
# one, over 32 videos (seeds 0-3): lr 6e-3 72%, 9e-3 88%, 1.2e-2 69% (adherence 59%, against 76-85%).
MOTION_LORAS = {
    "pan_right": {"lora_rank": 32, "lr": 3e-3, "min_timestep": 850},
    "zoom_in": {"lora_rank": 16, "lr": 9e-3, "min_timestep": 600},
}

# Seconds in CI: every stage runs, on a handful of samples.
QUICK = Budget(images=24, videos=8, style_images=8, lora_clips=4, vae_steps=2, text_steps=2, base_steps=2,
               refine_steps=2, adapter_steps=2, motion_steps=2, personal_steps=2, style_lora_steps=2, pan_right_steps=2,
               zoom_in_steps=2, pan_right_batch=4, zoom_in_batch=2, image_batch=4, video_batch=2, vae_batch=4,
               workers=0)  # fmt: skip


def render_batch(rng: np.random.Generator, n: int) -> torch.Tensor:
    """Frames as the whole family will see them: stills, outlined stills, watermarked video frames, at
    any angle (rotating objects turn through them all)."""
    frames = []
    for _ in range(n):
        u = rng.random()
        if u < 0.5:
            frames.append(world.render(world.sample_scene(rng, upright=False)))
        elif u < 0.7:
            frames.append(world.render(world.sample_scene(rng, "outlined", upright=False)))
        else:
            scene = world.sample_scene(rng, upright=False)
            motion = world.sample_motion(rng, shape=scene.shape)
            args = world.trajectory(scene, motion, 16)[int(rng.integers(16))]
            frames.append(world.render(**args, watermark=True))
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def detail_weight(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weight, high at edges (object outlines, texture): the flat background is most of
    every frame and is learnt first; without this the objects stay blurred blobs for thousands of steps."""
    edge = (x - F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().sum(1, keepdim=True)
    return 1 + 10 * F.max_pool2d(edge, 5, 1, 2).clamp(max=1)


def reconstruction_adherence(vae: AutoencoderKL, n: int = 64, seed: int = 12345) -> float:
    """Share of rendered stills whose VAE round trip the detector still reads as the right colour,
    shape and background: an upper bound on what any model generating through this VAE can score."""
    from .detect import detect

    rng = np.random.default_rng(seed)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    x = torch.from_numpy(np.stack([world.render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    device = next(vae.parameters()).device
    with torch.no_grad():
        rec = vae.decode(vae.encode(x.to(device)).mean).float().cpu()
    frames = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    ok = 0
    for frame, scene in zip(frames, scenes):
        d = detect(frame)
        ok += d.found and (d.color, d.shape, d.background) == (scene.color, scene.shape, scene.background)
    return ok / n


# What a caption names, each read back by a head in the text encoder's pretraining.
ATTRIBUTES = {"color": tuple(world.COLORS), "shape": world.SHAPES, "size": tuple(world.SIZES),
              "background": tuple(world.COLORS), "texture": world.TEXTURES}  # fmt: skip


def train_text(text: CLIPTextModel, steps: int, seed: int, device: torch.device, log,
               batch: int = 128) -> CLIPTextModel:  # fmt: skip
    """The text encoder's own stage, in place of CLIP's pretraining: a linear head per attribute reads
    it back from the caption's mean hidden state (a fifth of the captions leave the size out, as
    prompts may). The base then trains with the encoder frozen, as Stable Diffusion did with CLIP.

    Learning with the UNet instead, the encoder merges the words whose pictures the UNet's attention
    (at 8x8 and 4x4 latents) cannot tell apart: in the shipped base "triangle" and "star" end 0.24
    apart (circle and star 1.93), and the base draws one blob for both (docs/toy_world.md)."""
    from ..models.tokenizer import load_tokenizer
    from ..prompts import encode_ids, prompt_ids

    rng = np.random.default_rng(seed)
    tokenizer = load_tokenizer()
    text = text.to(device).train()
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(text.config.hidden_size, len(v)) for k, v in ATTRIBUTES.items()})
    heads = heads.to(device)
    opt = torch.optim.AdamW([*text.parameters(), *heads.parameters()], lr=1e-3)
    for step in range(steps):
        scenes = [world.sample_scene(rng) for _ in range(batch)]
        sized = rng.random(batch) < 0.8
        ids, _ = prompt_ids(tokenizer, [world.caption(s, with_size=bool(w)) for s, w in zip(scenes, sized)])
        pooled = encode_ids(text, ids, batch).mean(1)
        loss, right = 0.0, []
        for key, values in ATTRIBUTES.items():
            keep = (torch.from_numpy(sized) if key == "size" else torch.ones(batch, dtype=torch.bool)).to(device)
            target = torch.tensor([values.index(getattr(s, key)) for s in scenes], device=device)[keep]
            logits = heads[key](pooled[keep])
            loss = loss + F.cross_entropy(logits, target)
            right.append((logits.argmax(1) == target).float().mean().item())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 500 == 0 or step == steps - 1:
            log(f"text step {step}: loss {loss.item():.4f}, attributes read right {min(right):.0%} (worst)")
    return text.eval().cpu()


LOGVAR_INIT = -8.0


def train_vae(steps: int, seed: int, device: torch.device, log, batch: int = 16) -> AutoencoderKL:
    """Edge-weighted reconstruction (L1 + L2) with a small KL term, then the latent scale set to give
    unit variance. bf16 autocast: 1.6x faster on this CPU, and the toy VAE does not mind.

    The posterior starts narrow (logvar bias LOGVAR_INIT): with a KL weight this small nothing pulls
    it there quickly, and while it is wide the decoder learns from noisy latents and blurs. Logged:
    the share of round trips the detector reads right, the ceiling for every model decoded by it
    (the shipped VAE: 92-94% after 4,000 steps; 24% for the previous recipe's 1,000 steps)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = AutoencoderKL(TOY_VAE).to(device).train()
    with torch.no_grad():  # a narrow posterior from the start
        vae.quant_conv.bias[TOY_VAE.latent_channels :].fill_(LOGVAR_INIT)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for step in range(steps):
        x = render_batch(rng, batch).to(device)
        with torch.autocast(device.type, torch.bfloat16):
            post = vae.encode(x)
            z = post.mean + post.std * torch.randn(post.mean.shape).to(device)
            rec = vae.decode(z).float()
        kl = 0.5 * (post.mean.square() + post.std.square() - 1 - post.logvar).float().mean()
        d = rec - x
        loss = (detail_weight(x) * (d.abs() + d.square())).mean() + 1e-5 * kl
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if step % 500 == 0 or step == steps - 1:
            vae.eval()
            read = reconstruction_adherence(vae)
            log(f"vae step {step}: loss {loss.item():.4f}, reconstructions read right {read:.0%}")
            vae.train()
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(render_batch(rng, 64).to(device)).mean for _ in range(4)])
    vae.config = replace(vae.config, scaling_factor=float(1.0 / means.std()))
    return vae


def toy_vae_of(file: str | Path) -> AutoencoderKL:
    """The VAE of a single file, which must be the toy world's (latent scale kept)."""
    component = load(file).components.get("vae")
    if component is None or replace(component.config, scaling_factor=TOY_VAE.scaling_factor) != TOY_VAE:
        raise ValueError(f"{file} holds no toy-world VAE: pass a base single file such as toy_base.safetensors")
    vae = AutoencoderKL(component.config)
    load_into(vae, component)
    return vae.float().eval()


def stage_config(work: Path, name: str, stage: str, model: Path, data: dict, steps: int, budget: Budget, seed: int,
                 **extra) -> Config:  # fmt: skip
    from ..training.config import (
        CheckpointConfig,
        DataConfig,
        LogConfig,
        TrainConfig,
        ValidationConfig,
    )

    train = {"steps": steps, "seed": seed, **extra.pop("train", {})}
    validation = extra.pop("validation", None)
    return validate(Config(
        stage=stage, model=str(model), output_dir=str(work / name),
        data=DataConfig(workers=budget.workers, **data), train=TrainConfig(**train),
        checkpoint=CheckpointConfig(every=max(500, steps // 4), keep=1),
        validation=ValidationConfig(**validation) if validation else ValidationConfig(),
        logging=LogConfig(every=50, tensorboard=False), **extra,
    ))  # fmt: skip


STAGES = ("base", "refine", "adapter", "motion", "personal", "style_lora", "pan_right", "zoom_in", "conv1d")
# the stages whose outputs each one trains on (STAGES is their order)
NEEDS = {"base": (), "refine": ("base",), "adapter": ("base",), "motion": ("base", "adapter"), "personal": ("base",),
         "style_lora": ("base",), "pan_right": ("base", "adapter", "motion"),
         "zoom_in": ("base", "adapter", "motion"), "conv1d": ("base", "adapter")}  # fmt: skip


# With lanes: phase after phase, each of one lane (on every thread) or of two that need nothing from each
# other (one thread each, the second in its own process), paired by the stages' one-thread times
# (docs/toy_world.md): the motion module beside its ablation, then each MotionLoRA with an image stage.
SCHEDULE = (
    (("base", "refine", "adapter"),),
    (("motion",), ("conv1d",)),
    (("zoom_in", "style_lora"), ("pan_right", "personal")),
)


def _to_run(cfgs: dict[str, Config], only: tuple[str, ...], install: bool) -> list[str]:
    """The stages to run, in order. A stage whose output exists is done (rewriting it would also change
    the file that later stages' latent caches were made from); one that was interrupted resumes from its
    last checkpoint. With `only`, just those run, from scratch, and every output they (or the install)
    need must exist: checked before anything is removed or trained."""
    done = {name: _output(c) for name, c in cfgs.items()}
    if not only:
        return [name for name in STAGES if not done[name].exists()]
    for name in STAGES:
        needed = name not in only and (install or any(name in NEEDS[o] for o in only))
        if needed and not done[name].exists():
            raise FileNotFoundError(f"stage {name} has no output yet ({done[name]}): train without --only first")
    for name in only:
        shutil.rmtree(cfgs[name].output_dir, ignore_errors=True)
    return [name for name in STAGES if name in only]


def _output(cfg: Config) -> Path:
    return Path(cfg.output_dir) / OUTPUT_NAMES[cfg.stage]


def run_stage(name: str, cfg: Config, log=print) -> float:
    """Train one stage (resuming where it stopped); returns its seconds."""
    t0 = time.perf_counter()
    Trainer(cfg, resume="auto").run()
    seconds = round(time.perf_counter() - t0, 1)
    log(f"[{name}] {seconds:.1f} s")
    return seconds


def _run_lane(stages: list[tuple[str, Config]]) -> dict[str, float]:
    torch.set_num_threads(1)
    return {name: run_stage(name, cfg) for name, cfg in stages}


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_family(work: str | Path, budget: Budget = Budget(), seed: int = 0, install: bool = True, log=print,
                 only: tuple[str, ...] = (), lanes: int = 1, vae_from: str | Path | None = None) -> dict:  # fmt: skip
    """Run every stage into `work`; with `install`, copy the results into the package (fp16).

    `only`: retrain just these stages (from scratch; their earlier output is removed), keeping the
    others' outputs; `base` brings its second cycle, `refine`, with it. Those the named stages train on
    must exist, and with `install` all of them. Two `only` runs with `install=False` whose stages do not
    need each other's can run side by side (e.g. the motion module and MotionLoRAs beside the
    personalised model and the ablation).

    `lanes=2` (CPU only) does that by itself, phase by phase (SCHEDULE): the base and adapter on every
    thread, then two one-thread lanes at a time.

    `vae_from`: a single file whose toy VAE is used instead of training one (its recipe is the same
    whatever comes after it: the shipped base's VAE saves the half hour on a CPU)."""
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}: choose from {', '.join(STAGES)}")
    if "base" in only:  # the second cycle continues the first: kept, it would install a base made from the old one
        only = tuple(dict.fromkeys((*only, "refine")))
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    times: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - t0, 1)
        log(f"[{name}] {times[name]:.1f} s")
        return result

    init = work / "init.safetensors"  # the VAE (and the untrained base): every other stage starts from it
    if only and not init.exists():
        raise FileNotFoundError(f"no trained family in {work} yet: train without --only first")
    given_vae = toy_vae_of(vae_from) if vae_from is not None and not init.exists() else None  # checked first
    made = work / "init.json"  # how init's text encoder was made (none written: learnt with the UNet)
    if init.exists():
        made_with = json.loads(made.read_text())["text_steps"] if made.exists() else 0
        if made_with != budget.text_steps:
            raise ValueError(f"{init} was made with text_steps {made_with}, this recipe has {budget.text_steps}: "
                             "train into a fresh --work")  # fmt: skip
    data = work / "data"
    kinds_all = world.MOTIONS
    # Clips are captioned as stills. The motion layers read no text, and the base's text encoder never
    # saw the motion words: they only disturbed the frozen image layers, and the motion module learnt to
    # make up for that in the base alone (docs/toy_world.md).
    still = {"motion_words": False}
    timed("datasets", lambda: (
        dataset.write_images(data / "images", budget.images, seed),
        dataset.write_videos(data / "videos", budget.videos, seed + 1, kinds_all, **still),
        dataset.write_frames(data / "adapter_frames", budget.videos, seed + 1, kinds_all),  # each clip's middle frame
        dataset.write_images(data / "outlined", budget.style_images, seed + 2, style="outlined"),
        dataset.write_videos(data / "pan_right", budget.lora_clips, seed + 3, ("pan right",), **still),
        dataset.write_videos(data / "zoom_in", budget.lora_clips, seed + 4, ("zoom in",), **still),
    ))  # fmt: skip

    # The VAE loop keeps no checkpoints: the initial single file holding it is its resume point.
    if not init.exists():
        if given_vae is not None:
            vae = given_vae
            log(f"vae: {vae_from}'s")
        else:
            vae = timed("vae", lambda: train_vae(budget.vae_steps, seed, device, log, budget.vae_batch))
        torch.manual_seed(seed)
        unet, text = UNet3D(TOY_UNET), CLIPTextModel(TOY_TEXT)
        if budget.text_steps:
            text = timed("text", lambda: train_text(text, budget.text_steps, seed, device, log))
        made.write_text(json.dumps({"text_steps": budget.text_steps}))
        save_sd15(init, unet, vae.cpu(), text)  # written atomically, after its record

    # VAE latents are computed once per dataset (data.cache_dir): most of a step's cost otherwise
    cache = lambda name: str(work / "cache" / name)  # noqa: E731
    images = {"images": str(data / "images"), "size": world.SIZE, "frames": 1, "cache_dir": cache("images")}
    videos = {"videos": str(data / "videos"), "size": world.SIZE, "frames": 16, "stride": 1,
              "cache_dir": cache("videos")}  # fmt: skip
    probe = {"prompts": ("a large red circle on a blue background", "a small yellow star on a green background"),
             "seeds": (1,), "steps": 25, "guidance": GUIDANCE, "frames": 16, "size": world.SIZE,
             "every": max(1000, budget.motion_steps // 2)}  # fmt: skip

    # Min-SNR-gamma weighting and a cosine decay: several times faster to a sharp model from scratch
    fast = {"snr_gamma": 5.0, "schedule": "cosine"}
    # ...but min-SNR weighs the low-noise steps down (t < 120 on this schedule), where small details are drawn:
    # the adapter, whose watermark is one, trains on plain MSE (on stills: the watermark in 64% of frames against
    # 30% at the same lr, the prompt in 92% against 94%). The motion module keeps min-SNR: on plain MSE the
    # low-noise steps' large errors took over and it kept shapes but hardly moved (19% of videos; docs/toy_world.md)
    plain = {"snr_gamma": None}
    out = lambda name, stage: work / name / OUTPUT_NAMES[stage]  # noqa: E731  (where a stage's file lands)
    cfgs: dict[str, Config] = {}  # every stage's config, in STAGES order; inputs are earlier stages' outputs

    base_train = {"batch_size": budget.image_batch, "lr": 5e-4, "warmup_steps": 200,
                  "train_text_encoder": not budget.text_steps, **fast}  # fmt: skip
    captioned = {**images, "caption_dropout": 0.1}
    cfgs["base"] = stage_config(work, "base", "image", init, captioned, budget.base_steps, budget, seed,
                                train=base_train, validation={**probe, "frames": 1})  # fmt: skip
    base = out("base", "image")
    # A second cosine cycle at a lower rate (a warm restart, as in SGDR): the shipped base, drawing stars with all
    # five arms. The stages below keep the first cycle's base, as the shipped files were made (docs/toy_world.md)
    cfgs["refine"] = stage_config(work, "refine", "image", base, captioned, budget.refine_steps, budget, seed,
                                  train={**base_train, "lr": 2e-4, "warmup_steps": 50})  # fmt: skip
    lora_train = {"batch_size": budget.image_batch, "lr": 1e-3, "lora_rank": 8, **fast}
    # the middle frame of every clip, captioned as a still: what the adapter should absorb is how video frames
    # look (the watermark), not where motion takes objects (dataset.frame_sample)
    adapter_train = {**lora_train, "lr": 5e-3, **plain}  # lr 1e-2 breaks it (the prompt in 7% of stills)
    frames = {"images": str(data / "adapter_frames"), "size": world.SIZE, "frames": 1,
              "cache_dir": cache("adapter_frames")}  # fmt: skip
    cfgs["adapter"] = stage_config(work, "adapter", "adapter", base, frames, budget.adapter_steps, budget, seed,
                                   train=adapter_train)  # fmt: skip
    adapter = out("adapter", "adapter")
    motion_train = {"batch_size": budget.video_batch, "lr": 5e-4, "warmup_steps": 100, **fast}
    cfgs["motion"] = stage_config(work, "motion", "motion", base, videos, budget.motion_steps, budget, seed,
                                  motion_preset="toy", adapter=str(adapter), train=motion_train,
                                  validation=probe)  # fmt: skip
    # the caption dropped in 10% of samples, as in the base's training: the empty prompt (CFG's other branch)
    # then draws outlines too, instead of pulling every shape back to filled. Without it, the thick-lined star
    # and triangle prompts were filled in all stills (64% outlined, against 97%; docs/toy_world.md)
    outlined = {"images": str(data / "outlined"), "size": world.SIZE, "frames": 1, "cache_dir": cache("outlined"),
                "caption_dropout": 0.1}  # fmt: skip
    # lr 1.5e-4: at 3e-4 the personalised model drifted further from the base the motion module was trained
    # with, and moved objects less (75% of videos against the base's 89%; docs/toy_world.md)
    cfgs["personal"] = stage_config(work, "personal", "image", base, outlined, budget.personal_steps, budget, seed,
                                    train={"batch_size": budget.image_batch, "lr": 1.5e-4, **fast})  # fmt: skip
    # on attention only: a LoCon (lora.IMAGE_RESNET_CONV too) outlined about as few frames (docs/toy_world.md)
    cfgs["style_lora"] = stage_config(work, "style_lora", "image_lora", base, outlined, budget.style_lora_steps,
                                      budget, seed, train=lora_train)  # fmt: skip
    for name, recipe in MOTION_LORAS.items():
        motion_lora_train = {**lora_train, "batch_size": getattr(budget, f"{name}_batch")}
        clips = {"videos": str(data / name), "size": world.SIZE, "frames": 16, "stride": 1, "cache_dir": cache(name)}
        cfgs[name] = stage_config(work, name, "motion_lora", base, clips, getattr(budget, f"{name}_steps"), budget,
                                  seed, motion_module=str(out("motion", "motion")), adapter=str(adapter),
                                  train={**motion_lora_train, **recipe})  # fmt: skip
    # the ablation: same data, steps and recipe as the motion module
    cfgs["conv1d"] = stage_config(work, "conv1d", "motion", base, videos, budget.motion_steps, budget, seed,
                                  motion_preset="toy_conv1d", adapter=str(adapter), train=motion_train)  # fmt: skip

    todo = _to_run(cfgs, only, install)
    if lanes > 1 and device.type == "cpu":
        for phase in SCHEDULE:
            busy = [[n for n in lane if n in todo] for lane in phase]
            busy = [lane for lane in busy if lane]
            if len(busy) < 2:  # alone (or all done): on every thread
                times.update({name: run_stage(name, cfgs[name], log) for lane in busy for name in lane})
                continue
            # each lane would build its stages' latent caches on one thread, and two lanes the same one when
            # they read the same data (motion and conv1d; personal and style_lora): built here first, once,
            # on every thread, for each stage whose inputs are there already
            for name in (n for lane in busy for n in lane):
                if cfgs[name].data.cache_dir and all(_output(cfgs[n]).exists() for n in NEEDS[name]):
                    Trainer(cfgs[name], resume="none")  # setting a stage up builds its cache
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool, _threads(1):
                other = pool.submit(_run_lane, [(n, cfgs[n]) for n in busy[1]])
                times.update({name: run_stage(name, cfgs[name], log) for name in busy[0]})
                times.update(other.result())
    else:
        for name in todo:
            times[name] = run_stage(name, cfgs[name], log)

    results = {"base": out("refine", "image"), "motion": out("motion", "motion"),
               "motion_conv1d": out("conv1d", "motion"), "adapter": adapter, "personal": out("personal", "image"),
               "style_lora": out("style_lora", "image_lora"), "pan_right": out("pan_right", "motion_lora"),
               "zoom_in": out("zoom_in", "motion_lora")}  # fmt: skip
    log_file = work / "times.json"  # merged: a stage that was kept keeps the time it took when it ran
    earlier = json.loads(log_file.read_text())["seconds"] if log_file.exists() else {}
    log_file.write_text(json.dumps({"device": str(device), "seconds": {**earlier, **times}, "budget": budget.__dict__},
                                   indent=1))  # fmt: skip
    if install:
        install_files(results)
    return {"times": times, "files": {k: str(v) for k, v in results.items()}}


def install_files(results: dict[str, Path], dest: Path | None = None) -> None:
    """Copy the family into the package, in half precision (metadata kept)."""
    dest = dest or weights_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for key, src in results.items():
        f = CheckpointFile(src)
        tensors = {k: (t.half() if t.is_floating_point() else t) for k, t in f.items()}
        save_file(tensors, dest / FILES[key], f.metadata)
        load(dest / FILES[key])  # every shipped file must read back through the normal loaders


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="animatediff toy train", description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("toy-work"), help="datasets, runs and checkpoints (resumable)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a seconds-long smoke run of every stage")
    size.add_argument("--long", action="store_true", help="about 3x the default steps (hours on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-install", action="store_true", help="leave the package's embedded files alone")
    ap.add_argument("--vae", type=Path, metavar="FILE", help="use this single file's toy VAE instead of training one "
                    "(e.g. the shipped toy_base.safetensors; when WORK has no init.safetensors yet)")  # fmt: skip
    ap.add_argument("--lanes", type=int, choices=(1, 2), default=1, help="2: on a CPU, train the stages that do not "
                    "need each other in two one-thread processes (docs/toy_world.md)")  # fmt: skip
    ap.add_argument(
        "--only",
        default="",
        metavar="STAGE,...",
        help=f"retrain just these stages, keeping the others' outputs ({', '.join(STAGES)})",
    )
    args = ap.parse_args(argv)
    budget = QUICK if args.quick else LONG if args.long else Budget()
    only = tuple(x.strip() for x in args.only.split(",") if x.strip())  # train_family checks the names
    out = train_family(args.work, budget, args.seed, install=not args.no_install, only=only, lanes=args.lanes,
                      vae_from=args.vae)  # fmt: skip
    print(json.dumps(out["times"], indent=1))
    return 0
