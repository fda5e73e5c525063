"""Text-to-video: encode the prompt -> draw noise -> sample the latents -> decode the frames.

    pipe = AnimateDiff.from_checkpoints(model="dreamshaper_8.safetensors", motion_module="mm_sd_v15_v2.ckpt")
    video = pipe("a corgi running on the beach", frames=16, steps=25, guidance=7.5, seed=42)
    video.save("corgi.mp4")

Latents are [batch, 4, frames, h, w]. Each video's starting noise comes from its own CPU generator
seeded with its seed, in float32, so a seed means the same video on every device and in any batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .checkpoints import CheckpointError, LoraSet, load_into, load_lora
from .components import (
    build_text_encoder,
    build_unet,
    build_vae,
    finalize_position_tables,
    load_model_file,
    noise_schedule_for,
    resolve_device,
    resolve_dtype,
)
from .models.clip import CLIPTextModel
from .models.tokenizer import CLIPTokenizer, load_tokenizer
from .models.unet import UNet3D
from .models.vae import AutoencoderKL
from .prompts import count_chunks, encode_prompts
from .sampling import SAMPLERS, Denoiser, NoiseSchedule, guided, make_schedule, run_sampler
from .video import Video

log = logging.getLogger("animatediff")
PathLike = str | os.PathLike


class AnimateDiff:
    def __init__(
        self,
        unet: UNet3D,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer | None = None,
        *,
        noise_schedule: NoiseSchedule | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        default_size: int | None = None,
        default_guidance: float = 7.5,
        offload: bool = False,
        notes: Sequence[str] = (),
    ):
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer = tokenizer or load_tokenizer()
        self.noise_schedule = noise_schedule or NoiseSchedule.PRESETS["animatediff"]
        self.device, self.dtype = torch.device(device), dtype
        # Unless told, the size the UNet was trained at (512 for SD1.5, 64 for the toy family).
        self.default_size = default_size or unet.config.sample_size * self.vae_downscale
        # The CFG scale a call gets unless told: SD1.5's usual 7.5; a family tuned otherwise says so.
        self.default_guidance = default_guidance
        self.offload = offload
        self.notes = list(notes)
        self.loras = {"unet": LoraSet(unet), "text_encoder": LoraSet(text_encoder)}
        self.lora_kinds: dict[str, str] = {}
        # Set for models with a closed vocabulary (the embedded toy family): prompt -> unknown words.
        self.vocabulary_check: Callable[[str], list[str]] | None = None
        home = "cpu" if offload else self.device
        for m in (unet, vae, text_encoder):
            m.to(home)
        # The VAE is all convolutions at full resolution: channels-last suits the conv kernels (mkldnn
        # on CPUs, tensor cores on GPUs) and saves layout reorders (docs/performance.md).
        vae.to(memory_format=torch.channels_last)

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_checkpoints(
        cls,
        model: PathLike | None = None,
        motion_module: PathLike | None = None,
        *,
        vae: PathLike | None = None,
        loras: Sequence[tuple[PathLike, float]] = (),
        motion_loras: Sequence[tuple[PathLike, float]] = (),
        adapter: tuple[PathLike, float] | None = None,
        motion_version: str | None = None,
        prediction_type: str | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        offload: bool = False,
    ) -> AnimateDiff:
        """Build from files: an SD1.5 model (single file or diffusers folder), a motion module, LoRAs.
        `prediction_type` (epsilon, v_prediction) overrides what the model file says it predicts."""
        if model is None:
            pipe = cls.default(device=device, dtype=dtype, prediction_type=prediction_type)
            if motion_module is not None:
                pipe.set_motion_module(motion_module, motion_version=motion_version)
        else:
            dev = resolve_device(device)
            dt = resolve_dtype(dtype, dev)
            base = load_model_file(model, "--model", ("sd15",))
            motion = (
                load_model_file(motion_module, "--motion-module", ("motion_module",), motion_version=motion_version)
                if motion_module is not None
                else None
            )
            vae_file = load_model_file(vae, "--vae", ("vae", "sd15")) if vae is not None else base
            unet, notes = build_unet(base, motion, dt)
            notes = list(base.notes) + (list(motion.notes) if motion else []) + notes
            if motion is None:
                notes.append("no motion module: every frame is generated on its own")
            pipe = cls(
                unet, build_vae(vae_file, dt), build_text_encoder(base, dt),
                noise_schedule=noise_schedule_for(base, prediction_type), device=dev, dtype=dt, offload=offload,
                notes=notes,
            )  # fmt: skip
        for path, scale in loras:
            pipe.load_lora(path, scale)
        for path, scale in motion_loras:
            pipe.load_lora(path, scale, expect="motion_lora")
        if adapter is not None:
            pipe.load_lora(adapter[0], adapter[1], expect="domain_adapter")
        return pipe

    @classmethod
    def default(
        cls, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto", prediction_type: str | None = None
    ) -> AnimateDiff:
        """The small model family embedded in the package (runs on a CPU in seconds)."""
        from .toy.models import load_default

        dev = resolve_device(device)
        return load_default(cls, dev, resolve_dtype(dtype, dev), prediction_type)

    # -- adapters: LoRAs, motion modules ------------------------------------------------------------

    def load_lora(self, path: PathLike, scale: float = 1.0, name: str | None = None, expect: str | None = None) -> str:
        """Merge an image LoRA, a MotionLoRA or a domain adapter (told apart by their keys)."""
        lora, kind = load_lora(path, {"unet": self.unet, "text_encoder": self.text_encoder})
        if expect is not None and kind != expect:
            raise CheckpointError(path, f"this is a {kind.replace('_', ' ')}, not a {expect.replace('_', ' ')}")
        if kind == "motion_lora" and self.unet.motion_config is None:
            raise CheckpointError(path, "a MotionLoRA needs a motion module", "pass one with --motion-module")
        name = name or os.path.basename(str(path))
        for component, lora_set in self.loras.items():
            weights = [w for w in lora.weights if w.component == component]
            if weights:
                lora_set.add(name, weights, scale)
        self.lora_kinds[name] = kind
        return name

    def set_lora_scale(self, name: str, scale: float) -> None:
        """Change a loaded LoRA's scale; the base weights are restored exactly first (no reload)."""
        if name not in self.lora_kinds:
            raise KeyError(f"no LoRA named {name!r}; loaded: {', '.join(self.lora_kinds) or 'none'}")
        for lora_set in self.loras.values():
            if name in lora_set.entries:
                lora_set.set_scale(name, scale)

    def remove_lora(self, name: str) -> None:
        for lora_set in self.loras.values():
            lora_set.remove(name)
        self.lora_kinds.pop(name, None)

    def set_motion_module(self, path: PathLike | None, motion_version: str | None = None) -> None:
        """Swap the motion modules (or remove them with None) without reloading the base model."""
        for name in [n for n, k in self.lora_kinds.items() if k == "motion_lora"]:
            self.remove_lora(name)
        if path is None:
            self.unet.set_motion_modules(None)
            return
        motion = load_model_file(path, "--motion-module", ("motion_module",), motion_version=motion_version)
        with torch.device("meta"):  # fresh modules cost nothing until their weights arrive
            self.unet.set_motion_modules(motion.components["motion_module"].config)
        for module in self.unet.motion_module_list():
            module.to(self.dtype)
        load_into(self.unet, motion.components["motion_module"], what="motion module")
        for module in self.unet.motion_module_list():
            module.to("cpu" if self.offload else self.device)
        self.notes += motion.notes + finalize_position_tables(self.unet)

    # -- generation -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module):
        """With offloading, a model visits the device only while it works."""
        if self.offload:
            module.to(self.device)
        try:
            yield module
        finally:
            if self.offload:
                module.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def encode_prompt(self, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1) -> torch.Tensor:
        with self._on_device(self.text_encoder):
            return encode_prompts(self.text_encoder, self.tokenizer, list(prompts), clip_skip, min_chunks)

    def __call__(
        self,
        prompt: str | Sequence[str] = "",
        negative_prompt: str | Sequence[str] = "",
        *,
        frames: int = 16,
        height: int | None = None,
        width: int | None = None,
        steps: int = 25,
        guidance: float | None = None,
        seed: int | Sequence[int] | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        guidance_rescale: float = 0.0,
        clip_skip: int = 1,
        fps: float = 8.0,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        decode_chunk: int = 8,
        vae_tile: int | None = None,
        progress: bool = True,
        callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
        output: str = "video",
    ) -> Video | list[Video] | torch.Tensor:
        """Generate one video per prompt (or per seed). Returns a Video, or a list for a batch;
        `output="latents"` returns the final latents [B, 4, F, h, w] instead (before the VAE).
        `guidance` defaults to the model's (`default_guidance`: 7.5, or the toy family's own)."""
        guidance = self.default_guidance if guidance is None else guidance
        single = isinstance(prompt, str) and (seed is None or isinstance(seed, int)) and prompt_embeds is None
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        seeds = self._seeds(seed, len(prompts) if prompt_embeds is None else prompt_embeds.shape[0])
        if len(prompts) == 1 and len(seeds) > 1:
            prompts = prompts * len(seeds)
        batch = len(seeds)
        negatives = [negative_prompt] * batch if isinstance(negative_prompt, str) else list(negative_prompt)
        height, width = height or self.default_size, width or self.default_size
        self.check_request(frames, height, width, steps, guidance, sampler, batch, len(negatives))

        if self.vocabulary_check is not None:
            unknown = sorted({w for p in prompts + negatives for w in self.vocabulary_check(p)})
            if unknown:
                warnings.warn(f"the embedded toy model does not know {', '.join(repr(w) for w in unknown)}; "
                              "pass --model for real checkpoints", stacklevel=2)  # fmt: skip
        cond, uncond = self._contexts(prompts, negatives, guidance, clip_skip, prompt_embeds, negative_prompt_embeds)
        down = self.vae_downscale
        shape = (4, frames, height // down, width // down)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if latents is None:
            latents = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
        elif tuple(latents.shape) != (batch, *shape):
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {(batch, *shape)}")

        def fresh_noise() -> torch.Tensor:  # ancestral samplers: each video keeps drawing from its own seed
            noise = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in generators])
            return noise.to(self.device)

        schedule = make_schedule(sampler, self.noise_schedule, steps)
        model = guided(self._unet_call, cond, uncond, guidance, guidance_rescale)
        denoise = Denoiser(model, self.noise_schedule.prediction_type)
        bar = tqdm(total=len(schedule), desc="sampling", disable=not progress, leave=False)

        def step(i: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            bar.update(1)
            if callback is not None:
                callback(i, x, x0)

        with torch.inference_mode(), self._on_device(self.unet):
            x = latents.to(self.device, torch.float32) * schedule.init_sigma
            x = run_sampler(sampler, denoise, x, schedule, fresh_noise, eta=eta, callback=step)
            x = x / (schedule.sigmas[-1].item() ** 2 + 1) ** 0.5
        bar.close()
        if output == "latents":
            return x

        videos = []
        for b in range(batch):
            pixels = self.decode(x[b], chunk=decode_chunk, tile=vae_tile, progress=progress)
            meta = {"seed": str(seeds[b]), "prompt": prompts[b] if b < len(prompts) else "", "sampler": sampler,
                    "steps": str(steps), "guidance": str(guidance)}  # fmt: skip
            videos.append(Video.from_tensor(pixels, fps=fps, metadata=meta))
        return videos[0] if single else videos

    # -- pieces -----------------------------------------------------------------------------------------

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def max_frames(self) -> int | None:
        cfg = self.unet.motion_config
        return cfg.max_frames if cfg is not None else None

    def check_request(
        self, frames: int, height: int, width: int, steps: int, guidance: float, sampler: str, batch: int,
        negatives: int,
    ) -> None:  # fmt: skip
        """Every impossible request is refused before any work, with what to do instead."""
        down = self.vae_downscale
        if height % down or width % down or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {down}, got {width}x{height}")
        if frames < 1:
            raise ValueError(f"frames must be at least 1, got {frames}")
        if self.max_frames is not None and frames > self.max_frames:
            version = self.unet.motion_config.version
            raise ValueError(
                f"{frames} frames exceed what this motion module ({version}) supports: {self.max_frames}; "
                f"use --frames {self.max_frames} or fewer"
            )
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if guidance < 0:
            raise ValueError(f"guidance must be 0 or more, got {guidance}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
        if negatives != batch:
            raise ValueError(f"{negatives} negative prompts for {batch} videos")

    @staticmethod
    def _seeds(seed: int | Sequence[int] | None, n: int) -> list[int]:
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        if isinstance(seed, int):
            return [seed + i for i in range(n)]  # video 0 is the single-video result of this seed
        return [int(s) for s in seed]

    def _contexts(self, prompts, negatives, guidance, clip_skip, prompt_embeds, negative_prompt_embeds):
        if prompt_embeds is not None:
            cond = prompt_embeds
            uncond = negative_prompt_embeds
            if uncond is None and guidance != 1.0:
                uncond = self.encode_prompt([""] * cond.shape[0], clip_skip, cond.shape[1] // 77)
        else:
            chunks = max(count_chunks(self.tokenizer, prompts), count_chunks(self.tokenizer, negatives))
            cond = self.encode_prompt(prompts, clip_skip, chunks)
            uncond = self.encode_prompt(negatives, clip_skip, chunks) if guidance != 1.0 else None
        dtype = next(self.unet.parameters()).dtype
        return cond.to(self.device, dtype), None if uncond is None else uncond.to(self.device, dtype)

    def _unet_call(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, context).float()

    @torch.inference_mode()
    def decode(
        self, latents: torch.Tensor, chunk: int = 8, tile: int | None = None, progress: bool = False
    ) -> torch.Tensor:
        """One video's latents [4, F, h, w] -> frames [F, 3, H, W] in [-1, 1], a few frames at a time.

        In half precision the VAE can overflow and decode black or grey frames; a chunk that comes out
        non-finite is decoded again in float32, so such a video never comes out silently.
        """
        z = latents.permute(1, 0, 2, 3) / self.vae.config.scaling_factor
        out = []
        with self._on_device(self.vae):
            dtype = next(self.vae.parameters()).dtype
            for part in tqdm(z.split(chunk), desc="decoding", disable=not progress, leave=False):
                part = part.to(self.device, dtype).contiguous(memory_format=torch.channels_last)
                pixels = self.vae.decode(part, tile=tile).float()
                if not torch.isfinite(pixels).all() and dtype != torch.float32:
                    warnings.warn("VAE overflowed in half precision; decoding again in float32", stacklevel=2)
                    self.vae.float()
                    pixels = self.vae.decode(part.to(self.device, torch.float32), tile=tile)
                    self.vae.to(dtype)
                out.append(pixels.clamp(-1, 1).cpu())
        return torch.cat(out)
