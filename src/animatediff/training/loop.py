"""The training loop: one process or many (torchrun), one stage of the paper at a time.

    animatediff train config.yaml                               # one process
    torchrun --nproc_per_node 8 -m animatediff.train config.yaml  # DDP (or FSDP) on one or many nodes

Each optimizer step takes `train.batch_size` samples over all processes and accumulation steps.
Every random draw of a sample (posterior noise, timestep, diffusion noise, caption dropout) is seeded
from (seed, step, the sample's position in the global batch), and the data order from (seed, epoch):
results do not depend on the number of processes, and a resumed run replays the uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..prompts import encode_ids, prompt_ids
from ..sampling import NoiseSchedule
from . import checkpoint
from .cache import LatentCache, collate_cached
from .config import Config, ConfigError, load_config
from .data import ClipDataset, DataError, collate, make_source, run_loader
from .stages import StageModels, build_stage, check_output_dir, export


class TrainingError(RuntimeError):
    """A run that cannot go on, said in one line with what to do."""


class TrainModule(nn.Module):
    """What DDP wraps: the UNet, and the text encoder when it learns too."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, context)


def sample_seed(seed: int, step: int, position: int) -> int:
    """A stable seed per (run seed, optimizer step, position of the sample in the global batch)."""
    return ((seed * 1_000_003 + step) * 1_000_033 + position) & (2**62 - 1)


def loss_weights(alpha_bar: torch.Tensor, snr_gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights: 1, or Min-SNR-gamma's min(SNR, gamma) / SNR for an epsilon target and
    min(SNR, gamma) / (SNR + 1) for a v target (both equal to weighting the x0 error by min(SNR, gamma))."""
    if snr_gamma is None:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)


def debiased(err: torch.Tensor, anchors: torch.Tensor, beta: float) -> torch.Tensor:
    """MotionDirector's appearance debiasing of an error [B, C, F, h, w]: sqrt(beta^2 + 1) e - beta e[anchor],
    the anchor a frame per sample. An error every frame shares shrinks (to 0.41x at beta 1); one that
    differs between frames does not."""
    anchor = err[torch.arange(err.shape[0]), :, anchors.to(err.device)].unsqueeze(2)  # [B, C, 1, h, w]
    return (beta**2 + 1) ** 0.5 * err - beta * anchor


class Trainer:
    def __init__(self, cfg: Config, resume: str = "auto"):
        self.cfg = cfg
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        t = cfg.train
        per_micro = t.batch_size // t.grad_accum
        if per_micro % self.world:
            raise ConfigError(
                f"train.batch_size {t.batch_size} / grad_accum {t.grad_accum} = {per_micro} samples per "
                f"micro-step cannot be split over {self.world} processes"
            )
        self.micro_global = per_micro
        self.out = Path(cfg.output_dir)
        if self.is_main:
            check_output_dir(self.out)

        d = cfg.data
        self.data = ClipDataset(make_source(d), frames=1 if self.image_stage else d.frames, stride=d.stride,
                                size=d.size, seed=t.seed, image=self.image_stage)  # fmt: skip
        if len(self.data) < self.micro_global:
            raise DataError(f"{len(self.data)} samples are fewer than one batch of {self.micro_global}")
        torch.manual_seed(t.seed)  # fresh motion modules and LoRA layers start from the same weights every run
        self.models: StageModels = build_stage(cfg, self.device)
        self.models.unet.gradient_checkpointing = t.gradient_checkpointing
        self.models.unet.train()  # no dropout anywhere: this only enables activation checkpointing
        self.prediction_type = self.models.prediction_type
        self.noise_schedule = NoiseSchedule(beta_schedule=t.beta_schedule, prediction_type=self.prediction_type)
        self.alphas = self.noise_schedule.alphas_cumprod().to(self.device)

        self.samples, self.collate, self.empty_text = self.data, collate, None
        if d.cache_dir:  # with a text encoder that learns, only the latents are used (captions encoded live)
            source = os.path.abspath(d.shards or d.csv or d.images or d.videos)
            cache = LatentCache(d.cache_dir, self.data, source)
            bar = (lambda xs: tqdm(xs, desc="caching latents", disable=not self.is_main)) if self.is_main else None
            m = self.models
            cache.build(m.vae, m.text_encoder, m.tokenizer, self.rank, self.world, bar, need_text=not m.trains_text)
            if self.world > 1:
                dist.barrier()
            self.samples, self.collate, self.empty_text = cache, collate_cached, cache.empty_text().to(self.device)

        module = TrainModule(self.models.unet, self.models.text_encoder if self.models.trains_text else None)
        self.module = self._distribute(module)
        self.params = [p for p in self.models.trainable.values()]
        self.opt = torch.optim.AdamW(self.params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.ema = {n: p.detach().clone() for n, p in self.models.trainable.items()} if t.ema_decay else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.skipped = 0
        if resume != "none":
            self._resume(resume)

    # -- setup ------------------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def image_stage(self) -> bool:
        return self.cfg.stage in ("image", "image_lora", "adapter")

    def _distribute(self, module: nn.Module) -> nn.Module:
        if self.world == 1:
            return module
        if self.cfg.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in [*module.unet.down_blocks, module.unet.mid_block, *module.unet.up_blocks]:
                fully_shard(block)  # one all-gather per level keeps the peak at one level's weights
            fully_shard(module)
            # sharding replaced the parameters: collect the trainable ones again, by name
            named = dict(module.named_parameters())
            self.models.trainable = {n: named[n] for n in self.models.trainable}
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def _lr_factor(self, step: int) -> float:
        t = self.cfg.train
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _resume(self, resume: str) -> None:
        found = checkpoint.complete(self.out) if resume == "auto" else [Path(resume)]
        if not found:
            return
        info, weights, ema, states = checkpoint.load(found[-1])
        with torch.no_grad():
            for name, p in self.models.trainable.items():
                full = weights[name].to(p.device)
                p.copy_(self._shard_like(full, p))
        if self.ema is not None and ema is not None:
            self.ema = {n: self._shard_like(v.to(self.device), self.ema[n]) for n, v in ema.items()}
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.module, self.opt, states["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))  # fmt: skip
        else:
            self.opt.load_state_dict(states["optimizer"])
        self.sched.load_state_dict(states["schedule"])
        self.scaler.load_state_dict(states["scaler"])
        self.step, self.epoch, self.batch_in_epoch = info["step"], info["epoch"], info["batch_in_epoch"]
        self.skipped = info.get("skipped", 0)
        if self.is_main:
            tqdm.write(f"resumed from {found[-1]} at step {self.step}")

    @staticmethod
    def _shard_like(full: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if hasattr(p, "device_mesh"):  # an FSDP-sharded parameter
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(full, p.device_mesh, p.placements)
        return full

    # -- one step ---------------------------------------------------------------------------------------

    def micro_batches(self):
        """This process's micro-batches from the current position on, keeping (epoch, batch index in
        epoch) up to date for checkpoints."""
        per_epoch = len(self.data) // self.micro_global
        if self.batch_in_epoch >= per_epoch:  # a checkpoint taken at an epoch's end (as earlier versions wrote)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        t = self.cfg.train
        loader = run_loader(self.samples, self.collate, t.seed, self.epoch, self.batch_in_epoch, self.micro_global,
                            self.rank, self.world, self.cfg.data.workers)  # fmt: skip
        for batch in loader:
            self.batch_in_epoch += 1  # counted as consumed before use: a checkpoint resumes after it
            if self.batch_in_epoch >= per_epoch:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            yield batch

    def loss(self, batch: dict, micro: int) -> torch.Tensor:
        """The diffusion loss of one micro-batch (epsilon or v target, MSE)."""
        m, t = self.models, self.cfg.train
        b = len(batch["caption"])
        first = micro * self.micro_global + self.rank * (self.micro_global // self.world)
        gens = [torch.Generator().manual_seed(sample_seed(t.seed, self.step, first + i)) for i in range(b)]
        with torch.no_grad():
            if "mean" in batch:  # cached posteriors [B, F, 4, h, w]
                mean, std = batch["mean"].to(self.device).flatten(0, 1), batch["std"].to(self.device).flatten(0, 1)
            else:
                post = m.vae.encode(batch["pixels"].to(self.device).flatten(0, 1), chunk=8)
                mean, std = post.mean, post.std
            frames = mean.shape[0] // b
            eps = torch.stack([torch.randn(frames, *mean.shape[1:], generator=g) for g in gens]).flatten(0, 1)
            x0 = (mean + std * eps.to(self.device)) * m.vae.config.scaling_factor
            x0 = x0.unflatten(0, (b, frames)).transpose(1, 2).contiguous()  # [B, 4, F, h, w]
        lo, hi = t.min_timestep, min(t.max_timestep, len(self.alphas))
        steps = torch.tensor([int(torch.randint(lo, hi, (), generator=g)) for g in gens])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(self.device)
        drop = [float(torch.rand((), generator=g)) < self.cfg.data.caption_dropout for g in gens]
        captions = ["" if d else c for c, d in zip(batch["caption"], drop)]

        text_grad = torch.enable_grad() if m.trains_text else torch.no_grad()
        a = self.alphas[steps.to(self.device)].view(b, 1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if self.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        amp = torch.autocast(self.device.type, self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with amp:
            with text_grad:
                context = self.context(batch, captions, drop)
            pred = self.module(x_t, steps.to(self.device), context)
        err = pred.float() - target.float()  # [B, 4, F, h, w]
        per_sample = err.square().mean(dim=(1, 2, 3, 4))
        if t.debias_beta is not None:  # added to the plain loss, as MotionDirector's temporal path does
            anchors = torch.tensor([int(torch.randint(err.shape[2], (), generator=g)) for g in gens])
            per_sample = per_sample + debiased(err, anchors, t.debias_beta).square().mean(dim=(1, 2, 3, 4))
        return (per_sample * loss_weights(a.flatten(), t.snr_gamma, self.prediction_type)).mean()

    def context(self, batch: dict, captions: list[str], drop: list[bool]) -> torch.Tensor:
        """Text hidden states [B, 77 * chunks, D]: from the cache, or from the text encoder."""
        if "text" not in batch or self.models.trains_text:
            ids, _ = prompt_ids(self.models.tokenizer, captions)
            return encode_ids(self.models.text_encoder, ids, len(captions))
        texts = [self.empty_text if d else t.to(self.device) for t, d in zip(batch["text"], drop)]
        longest = max(t.shape[0] for t in texts)  # pad with empty chunks, as prompt encoding does
        return torch.stack([torch.cat([t, *[self.empty_text] * ((longest - t.shape[0]) // 77)]) for t in texts])

    def optimizer_step(self, batches) -> float:
        t = self.cfg.train
        total = 0.0
        for micro in range(t.grad_accum):
            batch = next(batches)
            self.skipped += int(batch["skipped"])
            sync = micro == t.grad_accum - 1 or self.world == 1 or not hasattr(self.module, "no_sync")
            with nullcontext() if sync else self.module.no_sync():
                loss = self.loss(batch, micro) / t.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.item()
        self.scaler.unscale_(self.opt)
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.ema is not None:
            with torch.no_grad():
                for name, p in self.models.trainable.items():
                    self.ema[name].lerp_(p.detach(), 1 - t.ema_decay)
        self.step += 1
        return total

    # -- the run ----------------------------------------------------------------------------------------

    def run(self) -> Path | None:
        cfg, t = self.cfg, self.cfg.train
        log = MetricsLog(self.out, cfg.logging.tensorboard) if self.is_main else None
        bar = tqdm(total=t.steps, initial=self.step, desc=cfg.stage, disable=not self.is_main, dynamic_ncols=True)
        batches = self.micro_batches()
        smooth = None
        try:
            while self.step < t.steps:
                t0 = time.perf_counter()
                loss = self._mean_over_ranks(self.optimizer_step(batches))
                dt = time.perf_counter() - t0
                smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
                bar.update(1)
                bar.set_postfix(loss=f"{smooth:.4f}", s_per_step=f"{dt:.2f}")
                if log and (self.step % cfg.logging.every == 0 or self.step == t.steps):
                    log.write(self.step, loss=loss, lr=self.sched.get_last_lr()[0], step_s=dt,
                              clips_per_s=t.batch_size / dt, skipped=self.skipped)  # fmt: skip
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                if cfg.validation.every and self.step % cfg.validation.every == 0:
                    self.validate(log)
        except torch.OutOfMemoryError as e:
            raise TrainingError(
                f"out of memory with {self.micro_global // self.world} samples per process: lower train.batch_size "
                "(raise grad_accum to keep the global batch), set train.gradient_checkpointing: true, "
                "or precision: bf16"
            ) from e
        finally:
            bar.close()
        result = self.finish()
        if log:
            log.close()
        return result

    def _mean_over_ranks(self, value: float) -> float:
        if self.world == 1:
            return value
        v = torch.tensor([value], device=self.device)
        dist.all_reduce(v)
        return v.item() / self.world

    def _full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors on every process (gathers FSDP shards; a no-op otherwise)."""
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach() for n, p in tensors.items()}

    @property
    def fsdp(self) -> bool:
        return self.world > 1 and self.cfg.distributed == "fsdp"

    def optimizer_state(self) -> dict:
        """Whole optimizer state (FSDP: gathered, keyed by parameter name, on the CPU)."""
        if not self.fsdp:
            return self.opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(self.module, self.opt, options=options)

    def save_checkpoint(self) -> None:
        weights = self._full(self.models.trainable)
        ema = self._full(self.ema) if self.ema is not None else None
        states = {"optimizer": self.optimizer_state(), "schedule": self.sched.state_dict(),
                  "scaler": self.scaler.state_dict()}  # fmt: skip
        if self.is_main:
            info = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "skipped": self.skipped,
                    "stage": self.cfg.stage, "world": self.world}  # fmt: skip
            checkpoint.save(self.out, self.step, weights, ema, states, info, self.cfg.checkpoint.keep)
        if self.world > 1:
            dist.barrier()

    def _unshard_for_export(self) -> None:
        """After FSDP training: gather every parameter and put plain tensors back into the models."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return
        with torch.no_grad():
            for name, value in full.items():
                owner, _, attr = name.rpartition(".")
                module = self.module.get_submodule(owner)
                if attr in module._parameters:
                    module._parameters[attr] = nn.Parameter(value.to(self.device), requires_grad=False)
        named = dict(self.module.named_parameters())
        self.models.trainable = {n: named[n] for n in self.models.trainable}

    def validate(self, log: MetricsLog | None) -> None:
        v = self.cfg.validation
        if self.is_main and v.prompts:
            from ..pipeline import AnimateDiff

            m = self.models
            m.unet.eval()
            pipe = AnimateDiff(m.unet, m.vae, m.text_encoder, m.tokenizer, noise_schedule=self.noise_schedule,
                               device=self.device, default_size=v.size)  # fmt: skip
            folder = self.out / "validation" / f"step-{self.step:07d}"
            folder.mkdir(parents=True, exist_ok=True)
            frames = 1 if self.image_stage else v.frames
            for i, prompt in enumerate(v.prompts):
                for seed in v.seeds:
                    video = pipe(prompt, v.negative, frames=frames, steps=v.steps, guidance=v.guidance, seed=seed,
                                 progress=False)  # fmt: skip
                    video.save(folder / f"{i:02d}-seed{seed}.gif")
                    if log:
                        log.video(f"validation/{i:02d}", video, self.step)
            m.unet.train()
        if self.world > 1:
            dist.barrier()

    def finish(self) -> Path | None:
        ema = self._full(self.ema) if self.ema is not None else None
        if self.fsdp:
            self._unshard_for_export()
        path = None
        if self.is_main:
            path = export(self.cfg, self.models, self.out, ema)
            tqdm.write(f"saved {path}")
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return path


class MetricsLog:
    """metrics.csv always; TensorBoard too when it is installed (`pip install animatediff[train]`)."""

    def __init__(self, out: Path, tensorboard: bool):
        self.path = out / "metrics.csv"
        new = not self.path.exists()
        self.file = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the run
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(["step", "loss", "lr", "step_s", "clips_per_s", "skipped"])
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                tqdm.write("note: TensorBoard is not installed; metrics go to metrics.csv only")

    def write(self, step: int, **values: float) -> None:
        self.writer.writerow([step, *(f"{values[k]:.6g}" for k in ("loss", "lr", "step_s", "clips_per_s", "skipped"))])
        self.file.flush()
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, step)

    def video(self, tag: str, video, step: int) -> None:
        if self.tb:
            frames = torch.from_numpy(video.frames).permute(0, 3, 1, 2)[None]  # [1, F, 3, H, W]
            self.tb.add_video(tag, frames, step, fps=int(video.fps))

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()


def train(config: Config | str | Path, resume: str = "auto") -> Path | None:
    cfg = config if isinstance(config, Config) else load_config(config)
    return Trainer(cfg, resume).run()


def main(argv: list[str] | None = None) -> int:
    """`python -m animatediff.train CONFIG [--resume auto|none|PATH]` (what torchrun launches)."""
    import argparse
    import sys

    from ..checkpoints import CheckpointError

    ap = argparse.ArgumentParser(prog="animatediff train", description="Train a motion module, MotionLoRA, "
                                 "domain adapter, image LoRA or image model (see docs/training.md).")  # fmt: skip
    ap.add_argument("config", type=Path)
    ap.add_argument("--resume", default="auto", help="auto (latest checkpoint in output_dir), none, or a path")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    try:
        train(args.config, args.resume)
    except KeyboardInterrupt:
        print("interrupted (the last checkpoint is kept; run again to resume)", file=sys.stderr)
        return 130
    except (ConfigError, DataError, TrainingError, CheckpointError, OSError, ValueError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
