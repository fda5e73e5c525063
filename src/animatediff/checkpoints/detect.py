"""What is this file? A table of sentinel key patterns, tried in order; shapes are read later.

Each kind lists regular expressions that must all match some key. The first kind whose patterns all
match wins. For an unknown file the kind matching the most patterns is named as the closest, with the
patterns it lacks, so the user learns what the file is not.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    kind: str  # sd15, vae, unet, text_encoder, motion_module, motion_lora, domain_adapter, lora
    format: str  # ldm, diffusers, transformers, animatediff, kohya, peft
    label: str  # for people
    patterns: tuple[str, ...]
    absent: tuple[str, ...] = ()  # patterns that must NOT match
    unsupported: str = ""  # known but not supported: why


KINDS: tuple[Kind, ...] = (
    Kind("sdxl", "ldm", "SDXL checkpoint", (r"^conditioner\.embedders\.",),
         unsupported="SDXL models are not supported yet (this release animates SD1.5 models)"),
    Kind("sd2", "ldm", "SD2.x checkpoint", (r"^model\.diffusion_model\.", r"^cond_stage_model\.model\."),
         unsupported="SD2.x models (OpenCLIP text encoder) are not supported; use an SD1.5 model"),
    Kind("sparsectrl", "animatediff", "SparseCtrl encoder", (r"^(controlnet\.)?controlnet_cond_embedding\.",),
         unsupported="SparseCtrl encoders are not supported yet"),
    Kind("controlnet", "ldm", "ControlNet", (r"^(control_model\.)?input_hint_block\.",),
         unsupported="ControlNet models are not supported yet"),
    Kind("sd15", "ldm", "Stable Diffusion 1.x model (single file)",
         (r"^model\.diffusion_model\.input_blocks\.0\.0\.weight$",)),
    Kind("motion_lora", "animatediff", "MotionLoRA",
         (r"motion_modules\.\d+\.", r"processor\.to_[qkv]_lora\.(down|up)\.weight$")),
    Kind("domain_adapter", "animatediff", "v3 domain adapter (image LoRA)",
         (r"attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.processor\.to_[qkv]_lora\.down\.weight$",),
         absent=(r"motion_modules\.",)),
    Kind("motion_module", "animatediff", "AnimateDiff motion module",
         (r"^(module\.)?down_blocks\.\d+\.motion_modules\.\d+\.temporal_transformer\.",
          r"attention_blocks\.\d+\.to_q\.weight$")),
    Kind("motion_module", "animatediff", "motion module (1D temporal convolutions, an ablation)",
         (r"^down_blocks\.\d+\.motion_modules\.\d+\.temporal_transformer\.",
          r"attention_blocks\.\d+\.conv\.weight$")),
    Kind("motion_module", "animatediff", "motion module (the conv1d ablation's first layout, 7 stacked convolutions)",
         (r"^down_blocks\.\d+\.motion_modules\.\d+\.temporal_conv\.convs\.0\.weight$",),
         unsupported="that layout was retired on 2026-12-06: remake it with `animatediff toy train --only conv1d`"),
    Kind("motion_module", "diffusers", "AnimateDiff motion module (diffusers MotionAdapter)",
         (r"^down_blocks\.\d+\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn1\.to_q\.weight$",)),
    Kind("motion_lora", "peft", "MotionLoRA (diffusers / peft)",
         (r"^(unet\.)?(down_blocks|up_blocks|mid_block).*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.",
          r"\.(lora_A|lora\.down)\.weight$")),
    Kind("lycoris", "kohya", "LyCORIS LoHa / LoKr", (r"\.(hada_w1_a|lokr_w1|lokr_w1_a)$",),
         unsupported="LyCORIS LoHa/LoKr files are not supported yet (plain LoRA and LoCon are)"),
    Kind("lora", "kohya", "LoRA (kohya / civitai)", (r"^lora_(unet|te\d?)_.*\.(lora_down|lora_up|alpha)",)),
    Kind("lora", "peft", "LoRA (diffusers / peft)",
         (r"^(unet|text_encoder)\..*\.(lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down)\.weight$",)),
    Kind("vae", "ldm", "VAE (LDM layout)", (r"^(first_stage_model\.)?encoder\.down\.0\.block\.0\.conv1\.weight$",
                                             r"^(first_stage_model\.)?decoder\.conv_out\.weight$")),
    Kind("vae", "diffusers", "VAE (diffusers layout)",
         (r"^encoder\.down_blocks\.0\.resnets\.0\.conv1\.weight$", r"^decoder\.conv_out\.weight$")),
    Kind("unet", "diffusers", "UNet (diffusers layout)",
         (r"^conv_in\.weight$", r"^down_blocks\.0\.resnets\.0\.conv1\.weight$", r"^time_embedding\.linear_1\.weight$")),
    Kind("text_encoder", "transformers", "CLIP text encoder",
         (r"^(text_model\.)?embeddings\.token_embedding\.weight$", r"^(text_model\.)?final_layer_norm\.weight$")),
)  # fmt: skip


def _matches(pattern: re.Pattern, keys: list[str]) -> bool:
    return any(pattern.search(k) for k in keys)


_COMPILED = {k: ([re.compile(p) for p in k.patterns], [re.compile(p) for p in k.absent]) for k in KINDS}


def identify(keys: list[str]) -> Kind | None:
    for kind in KINDS:
        required, absent = _COMPILED[kind]
        if all(_matches(p, keys) for p in required) and not any(_matches(p, keys) for p in absent):
            return kind
    return None


def closest(keys: list[str]) -> tuple[Kind, list[str]]:
    """The supported kind matching the most sentinel patterns, and the patterns it lacks."""
    best, best_score, best_missing = KINDS[0], -1.0, list(KINDS[0].patterns)
    for kind in KINDS:
        if kind.unsupported:
            continue
        required, _ = _COMPILED[kind]
        missing = [p.pattern for p in required if not _matches(p, keys)]
        score = 1 - len(missing) / len(required)
        if score > best_score:
            best, best_score, best_missing = kind, score, missing
    return best, best_missing


def top_level_summary(keys: list[str], n: int = 4) -> str:
    counts = Counter(k.split(".")[0] for k in keys)
    return ", ".join(f"{name}.* ({c})" for name, c in counts.most_common(n))
