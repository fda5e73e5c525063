"""Training configuration: frozen dataclasses read from YAML, with typos named (and a guess).

    stage: motion                 # image | image_lora | adapter | motion | motion_lora
    model: models/sd15.safetensors
    output_dir: runs/motion
    data: {videos: data/clips, frames: 16, stride: 4, size: 256}
    train: {steps: 10000, batch_size: 4, lr: 1.0e-4}

Defaults are the original AnimateDiff recipe: linear betas 0.00085-0.012 over 1000 steps, epsilon
MSE loss, AdamW lr 1e-4 (weight decay 1e-2), 16 frames at stride 4, 256 pixels, grad-norm clip 1.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Literal

import yaml

STAGES = ("image", "image_lora", "adapter", "motion", "motion_lora")


# Names other trainers (the original train.py, diffusers' scripts) use for our keys, for suggestions.
ALIASES = {
    "learning_rate": "lr", "train_batch_size": "batch_size", "max_train_steps": "steps",
    "gradient_accumulation_steps": "grad_accum", "mixed_precision": "precision", "adam_weight_decay": "weight_decay",
    "lr_warmup_steps": "warmup_steps", "lr_scheduler": "schedule", "checkpointing_steps": "every",
    "validation_steps": "every", "sample_size": "size", "sample_stride": "stride", "sample_n_frames": "frames",
    "video_folder": "videos", "csv_path": "csv", "global_seed": "seed",
}  # fmt: skip


class ConfigError(ValueError):
    """A training config that cannot be used, said in one line."""


@dataclass(frozen=True)
class DataConfig:
    videos: str | None = None  # folder of videos with a .txt caption beside each
    csv: str | None = None  # WebVid-style CSV (videoid,name,page_dir); `videos` is then its video folder
    shards: str | None = None  # glob of tar shards (mp4 + txt)
    images: str | None = None  # folder of images with captions (image stages)
    frames: int = 16
    stride: int = 4
    size: int = 256
    workers: int = 2
    caption_dropout: float = 0.0  # train the unconditional branch too (needed when training a base from scratch)
    cache_dir: str | None = None  # precomputed VAE latents and text embeddings (fixed clips, no augmentation)
    allow_missing_captions: bool = False


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 4  # global: per optimizer step, over all processes and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine"] = "constant"
    max_grad_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    ema_decay: float | None = None
    seed: int = 42
    lora_rank: int = 64
    lora_targets: tuple[str, ...] = ()  # regexes of module names; empty: the stage's default
    train_text_encoder: bool = False  # image stage
    # What the UNet learns to predict; None: what the model file says it predicts (epsilon if it says nothing).
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    # Min-SNR-gamma loss weighting (Hang et al. 2023): converges several times faster from scratch; None = plain MSE
    snr_gamma: float | None = None
    # Train on timesteps [min_timestep, max_timestep) only (kohya's options of the same names), e.g. to
    # spend a fine-tune on the high-noise steps where layout and motion are settled.
    min_timestep: int = 0
    max_timestep: int = 1000
    # MotionDirector's appearance-debiased temporal loss (Zhao et al. 2023), its beta: the error is also
    # taken relative to a random anchor frame's, so what every frame shares (the clip's look) weighs less
    # than how frames differ (its motion). Video stages only; None: off.
    debias_beta: float | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500
    keep: int = 3


@dataclass(frozen=True)
class ValidationConfig:
    every: int = 0  # 0: off
    prompts: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (42,)
    negative: str = ""
    steps: int = 25
    guidance: float = 7.5
    frames: int = 16
    size: int = 256


@dataclass(frozen=True)
class LogConfig:
    every: int = 10
    tensorboard: bool = True


@dataclass(frozen=True)
class Config:
    stage: Literal["image", "image_lora", "adapter", "motion", "motion_lora"]
    output_dir: str
    model: str = "toy"  # an SD1.5 file/folder, or "toy" for the embedded toy family
    motion_module: str | None = None  # to start from (motion), or to adapt (motion_lora)
    motion_version: str | None = None
    motion_preset: str = "mm_sd_v15_v2"  # architecture of fresh motion modules (motion stage)
    adapter: str | None = None  # a domain adapter applied, frozen, while training motion (paper stage 2)
    adapter_scale: float = 1.0
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LogConfig = field(default_factory=LogConfig)
    distributed: Literal["ddp", "fsdp"] = "ddp"


def _build(cls, raw: dict, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            near = difflib.get_close_matches(key, list(known) + list(ALIASES), n=1)
            guess = ALIASES.get(near[0], near[0]) if near else None
            guess = guess if guess in known else None
            hint = f"; did you mean {guess!r}?" if guess else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"unknown key {key!r} in {where or 'the config'}{hint}")
        f = known[key]
        sub = _nested_type(f)
        if sub is not None and value is not None:
            value = _build(sub, value, f"{where}.{key}" if where else key)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING and n not in kwargs]
    if missing:
        raise ConfigError(f"{where or 'the config'} needs {', '.join(missing)}")
    return cls(**kwargs)


def _nested_type(f):
    cls = {"DataConfig": DataConfig, "TrainConfig": TrainConfig, "CheckpointConfig": CheckpointConfig,
           "ValidationConfig": ValidationConfig, "LogConfig": LogConfig}.get(str(f.type))  # fmt: skip
    return cls if cls is not None and is_dataclass(cls) else None


def load_config(path: str | Path) -> Config:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    try:
        cfg = _build(Config, raw or {}, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return validate(cfg, path)


def validate(cfg: Config, path: str | Path = "config") -> Config:
    """Refuse impossible settings before any model loads."""
    problems = []
    if cfg.stage not in STAGES:
        problems.append(f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    if cfg.stage == "motion_lora" and not cfg.motion_module:
        problems.append("stage motion_lora needs motion_module (the module the LoRA adapts)")
    d = cfg.data
    if not (d.videos or d.csv or d.shards or d.images):
        problems.append("data needs one of videos, csv (with videos), shards or images")
    if d.csv and not d.videos:
        problems.append("data.csv needs data.videos: the folder holding {videoid}.mp4")
    if d.images and cfg.stage in ("motion", "motion_lora"):
        problems.append(f"stage {cfg.stage} learns motion: it needs videos, not data.images")
    t = cfg.train
    if t.steps < 1 or t.batch_size < 1 or t.grad_accum < 1:
        problems.append("train.steps, batch_size and grad_accum must be at least 1")
    if t.batch_size % t.grad_accum:
        problems.append(f"train.batch_size {t.batch_size} is not divisible by grad_accum {t.grad_accum}")
    if t.prediction_type not in (None, "epsilon", "v_prediction"):
        problems.append(f"train.prediction_type must be epsilon or v_prediction, got {t.prediction_type!r}")
    if t.snr_gamma is not None and t.snr_gamma <= 0:
        problems.append(f"train.snr_gamma must be positive (5 is the paper's choice), got {t.snr_gamma}")
    if t.debias_beta is not None and (t.debias_beta <= 0 or cfg.stage not in ("motion", "motion_lora")):
        problems.append(f"train.debias_beta must be positive and is for the motion stages (1 is MotionDirector's "
                        f"choice), got {t.debias_beta} for stage {cfg.stage}")  # fmt: skip
    if not 0 <= t.min_timestep < t.max_timestep <= 1000:
        problems.append(f"train.min_timestep / max_timestep must satisfy 0 <= min < max <= 1000 (the training "
                        f"timesteps), got {t.min_timestep} / {t.max_timestep}")  # fmt: skip
    if d.size % 8 or d.frames < 1 or d.stride < 1:
        problems.append("data.size must be a multiple of 8; frames and stride at least 1")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return cfg
