"""LoRA-like files, resolved against our models.

Formats (formats.md):
- kohya / civitai: `lora_unet_<module path, '.'->'_'>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  text encoder `lora_te_text_model_encoder_layers_N_...`. UNet paths come in diffusers names
  (`down_blocks_0_attentions_0_...`) or LDM names (`input_blocks_1_1_...`); conv LoRAs (LoCon) are 4-D.
  Scale: multiplier * alpha / rank, the convention every UI follows.
- diffusers / peft: `unet.<module>.lora_A.weight` / `lora_B.weight` (older: `lora.down` / `lora.up`).
- MotionLoRA and the v3 domain adapter: `<module>.processor.to_q_lora.down.weight` / `.up.weight`
  (also to_k, to_v, to_out -> `to_out.0`); no alpha: W += scale * up @ down.

Underscores in kohya names are ambiguous, so names are matched against a lookup built from the
model's own modules, never split apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from .io import CheckpointError, CheckpointFile
from .keymap import translate


@dataclass
class LoraWeight:
    """One low-rank update `factor * up @ down` of the weight of module `module` in `component`."""

    component: str  # "unet" or "text_encoder"
    module: str  # our module path, e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q
    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    factor: float = 1.0  # alpha / rank where the format has an alpha

    def delta(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        up = self.up.to(device=device, dtype=dtype).flatten(1)
        down = self.down.to(device=device, dtype=dtype)
        d = up @ down.flatten(1)
        return (self.factor * d).reshape(self.up.shape[0], *down.shape[1:])


@dataclass
class LoraFile:
    path: str
    format: str
    weights: list[LoraWeight]
    unused: list[str] = field(default_factory=list)


_KOHYA = re.compile(r"^(lora_unet|lora_te)_(.+?)\.(lora_down\.weight|lora_up\.weight|alpha)$")
_PROCESSOR = re.compile(r"^(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_PEFT = re.compile(
    r"^(?:(unet|text_encoder)\.)?(.+?)\.(lora_A|lora_B|lora\.down|lora\.up|lora_linear_layer\.down|lora_linear_layer\.up)"
    r"\.weight$"
)
_PEFT_ALPHA = re.compile(r"^(unet|text_encoder)\.(.+?)\.alpha$")


def kohya_names(model: nn.Module, component: str, ldm_table: dict[str, str] | None = None) -> dict[str, str]:
    """{kohya name (without prefix): our module path} for every Linear/Conv2d of `model`."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if component == "text_encoder":
            out[("text_model." + name).replace(".", "_")] = name
            continue
        out[name.replace(".", "_")] = name
        if ldm_table is not None:
            out[translate(name, ldm_table).replace(".", "_")] = name
    return out


def read_lora(
    f: CheckpointFile, fmt: str, models: dict[str, nn.Module], ldm_table: dict[str, str] | None = None
) -> LoraFile:
    """Parse a LoRA-like file and resolve each pair to a module of `models` ({"unet": ..., ...})."""
    groups: dict[tuple[str, str], dict[str, str]] = {}  # (component, module) -> {"down": key, "up": key, "alpha": key}
    unused: list[str] = []
    lookups = {
        "lora_unet": kohya_names(models["unet"], "unet", ldm_table) if "unet" in models else {},
        "lora_te": kohya_names(models["text_encoder"], "text_encoder") if "text_encoder" in models else {},
    }
    motion_names = diffusers_motion_names(models.get("unet"))
    for key in f.keys():
        if fmt == "kohya" and (m := _KOHYA.match(key)):
            module = lookups[m[1]].get(m[2])
            component = "unet" if m[1] == "lora_unet" else "text_encoder"
            part = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}[m[3]]
        elif m := _PROCESSOR.match(key):
            component, part = "unet", m[3]
            module = f"{m[1]}.{'to_out.0' if m[2] == 'to_out' else m[2]}"
        elif m := _PEFT.match(key):
            component, module = m[1] or "unet", m[2]
            part = "down" if m[3] in ("lora_A", "lora.down", "lora_linear_layer.down") else "up"
            if component == "text_encoder":
                module = module.removeprefix("text_model.")
            module = motion_names.get(module, module)
        elif m := _PEFT_ALPHA.match(key):
            component, module, part = m[1], m[2], "alpha"
            if component == "text_encoder":
                module = module.removeprefix("text_model.")
        else:
            unused.append(key)
            continue
        if module is None:
            unused.append(key)
            continue
        groups.setdefault((component, module), {})[part] = key

    weights = []
    for (component, module), parts in groups.items():
        model = models.get(component)
        target = _get_module(model, module) if model is not None else None
        if target is None or "down" not in parts or "up" not in parts:
            unused += list(parts.values())
            continue
        down, up = f.get(parts["down"]), f.get(parts["up"])
        rank = down.shape[0]
        factor = float(f.get(parts["alpha"]).float().item()) / rank if "alpha" in parts else 1.0
        w = LoraWeight(component, module, down, up, factor)
        expected = tuple(target.weight.shape)
        if (up.shape[0], *down.shape[1:]) != expected and (up.shape[0], down.shape[1]) != expected[:2]:
            raise CheckpointError(
                f.path,
                f"LoRA for {module} has shape {(up.shape[0], *down.shape[1:])}, the layer is {expected}",
                "the LoRA was made for a different model",
            )
        weights.append(w)
    if not weights:
        raise CheckpointError(
            f.path,
            "this LoRA matches none of the model's layers",
            "was it made for another model family (SDXL, SD2)?",
        )
    return LoraFile(str(f.path), fmt, weights, unused)


def diffusers_motion_names(unet: nn.Module | None) -> dict[str, str]:
    """{diffusers MotionAdapter module path: ours} for the Linear layers of the UNet's motion modules."""
    if unet is None:
        return {}
    from .motion_modules import diffusers_table

    linears = [n for n, m in unet.named_modules() if isinstance(m, nn.Linear) and ".motion_modules." in n]
    table = diffusers_table([f"{n}.weight" for n in linears])
    return {translate(n, table): n for n in linears}


def _get_module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    return module if isinstance(module, (nn.Linear, nn.Conv2d)) else None


class LoraSet:
    """LoRAs merged into a model's weights, with scales that can change without reloading.

    The original weight of every touched layer is kept (on the CPU), and each `apply()` recomputes
    W = W0 + sum(scale * delta) from it, so removing a LoRA or setting its scale to 0 gives back W0
    bit for bit, and merged inference costs nothing extra per step.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.entries: dict[str, tuple[list[LoraWeight], float]] = {}
        self.originals: dict[str, torch.Tensor] = {}

    def add(self, name: str, weights: list[LoraWeight], scale: float = 1.0) -> None:
        self.entries[name] = (weights, scale)
        self.apply()

    def set_scale(self, name: str, scale: float) -> None:
        weights, _ = self.entries[name]
        self.entries[name] = (weights, scale)
        self.apply()

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        self.apply()

    def clear(self, predicate=lambda w: True) -> None:
        """Drop entries whose weights all satisfy `predicate` (e.g. motion LoRAs when modules change)."""
        for name in [n for n, (ws, _) in self.entries.items() if all(predicate(w) for w in ws)]:
            del self.entries[name]
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        deltas: dict[str, list[tuple[LoraWeight, float]]] = {}
        for weights, scale in self.entries.values():
            for w in weights:
                deltas.setdefault(w.module, []).append((w, scale))
        for module in set(self.originals) | set(deltas):
            param = self.model.get_submodule(module).weight
            if module not in self.originals:
                self.originals[module] = param.detach().to("cpu", copy=True)
            base = self.originals[module]
            active = [(w, s) for w, s in deltas.get(module, []) if s != 0]
            if not active:
                param.copy_(base)
                continue
            merged = base.to(param.device, torch.float32, copy=True)  # never add into the kept original
            for w, s in active:
                merged += s * w.delta(torch.float32, param.device).reshape(merged.shape)
            param.copy_(merged.to(param.dtype))
        # Layers no LoRA touches any more are back to W0: forget their copies.
        for module in [m for m in self.originals if m not in deltas]:
            del self.originals[module]


LORA_KINDS = ("lora", "motion_lora", "domain_adapter")


def load_lora(path, models: dict[str, nn.Module]) -> tuple[LoraFile, str]:
    """Identify a LoRA-like file and resolve it against `models`; returns it and its kind."""
    from .ldm_sd15 import unet_table
    from .loading import load

    loaded = load(path)
    if loaded.kind not in LORA_KINDS:
        raise CheckpointError(path, f"this is a {loaded.label}, not a LoRA")
    unet = models.get("unet")
    ldm_table = unet_table(unet.config) if unet is not None else None
    return read_lora(loaded.file, loaded.format, models, ldm_table), loaded.kind
