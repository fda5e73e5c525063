"""Trainable low-rank adapters (LoRA, Hu et al. 2021) on the Linear layers a stage adapts.

`inject` wraps matching layers so that y = W x + up(down(x)); `up` starts at zero, so training starts
exactly from the frozen model. `extract` turns the trained pairs into `LoraWeight`s, which
checkpoints/export.py writes in the community's layouts (processor keys for MotionLoRA and the domain
adapter, kohya keys for image LoRAs) and checkpoints/lora.py reads back.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..checkpoints.lora import LoraWeight

# Default targets per stage: the attention projections, as the released files have them.
MOTION_ATTENTION = r"\.motion_modules\.\d+\..*attention_blocks\.\d+\.(to_q|to_k|to_v|to_out\.0)$"
IMAGE_ATTENTION = (
    r"^(?!.*motion_modules).*attentions\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.up = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.normal_(self.down.weight, std=1.0 / rank)  # as the original diffusers LoRA layers
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


def inject(model: nn.Module, patterns: list[str], rank: int) -> dict[str, LoRALinear]:
    """Wrap every Linear whose name matches a pattern; returns {module name: wrapper}."""
    rx = [re.compile(p) for p in patterns]
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and any(r.search(n) for r in rx)]
    if not targets:
        raise ValueError(f"no layer matches the LoRA targets {patterns}")
    wrapped = {}
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
        lora = LoRALinear(base, rank)
        if attr.isdigit():
            parent[int(attr)] = lora
        else:
            setattr(parent, attr, lora)
        wrapped[name] = lora
    return wrapped


def extract(wrapped: dict[str, LoRALinear], component: str = "unet") -> list[LoraWeight]:
    return [
        LoraWeight(component, name, w.down.weight.detach().float().cpu(), w.up.weight.detach().float().cpu())
        for name, w in wrapped.items()
    ]


def remove(model: nn.Module, wrapped: dict[str, LoRALinear]) -> None:
    """Put the plain layers back (the LoRA is then applied by merging, e.g. with LoraSet)."""
    for name, lora in wrapped.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if attr.isdigit():
            parent[int(attr)] = lora.base
        else:
            setattr(parent, attr, lora.base)
