"""Trainable low-rank adapters (LoRA, Hu et al. 2021) on the Linear and Conv2d layers a stage adapts.

`inject` wraps matching layers so that y = W x + up(down(x)); `up` starts at zero, so training starts
exactly from the frozen model. On a convolution (LoCon, as kohya's and LyCORIS' trainers make them)
`down` has the layer's kernel and stride and `up` is 1x1: the update is a kernel of rank r. `extract`
turns the trained pairs into `LoraWeight`s, which checkpoints/export.py writes in the community's
layouts (processor keys for MotionLoRA and the domain adapter, kohya keys for image LoRAs) and
checkpoints/lora.py reads back.
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
# The ResNets' 3x3 convolutions (with IMAGE_ATTENTION: a LoCon). Attention sits at the coarser levels
# only, so a style of thin strokes needs the convolutions of the finest one.
IMAGE_RESNET_CONV = r"^(?!.*motion_modules).*resnets\.\d+\.conv[12]$"


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


class LoRAConv2d(nn.Module):
    def __init__(self, base: nn.Conv2d, rank: int):
        super().__init__()
        if base.groups != 1:
            raise ValueError("a LoRA on a grouped convolution is not supported")
        self.base = base
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation,
                              bias=False, padding_mode=base.padding_mode, device=base.weight.device)  # fmt: skip
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False, device=base.weight.device)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


_WRAPPERS = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def inject(model: nn.Module, patterns: list[str], rank: int) -> dict[str, LoRALinear | LoRAConv2d]:
    """Wrap every Linear or Conv2d whose name matches a pattern; returns {module name: wrapper}."""
    rx = [re.compile(p) for p in patterns]
    targets = [n for n, m in model.named_modules() if type(m) in _WRAPPERS and any(r.search(n) for r in rx)]
    if not targets:
        raise ValueError(f"no layer matches the LoRA targets {patterns}")
    wrapped = {}
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, attr) if not attr.isdigit() else parent[int(attr)]
        lora = _WRAPPERS[type(base)](base, rank)
        if attr.isdigit():
            parent[int(attr)] = lora
        else:
            setattr(parent, attr, lora)
        wrapped[name] = lora
    return wrapped


def extract(wrapped: dict[str, LoRALinear | LoRAConv2d], component: str = "unet") -> list[LoraWeight]:
    return [
        LoraWeight(component, name, w.down.weight.detach().float().cpu(), w.up.weight.detach().float().cpu())
        for name, w in wrapped.items()
    ]


def remove(model: nn.Module, wrapped: dict[str, LoRALinear | LoRAConv2d]) -> None:
    """Put the plain layers back (the LoRA is then applied by merging, e.g. with LoraSet)."""
    for name, lora in wrapped.items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        if attr.isdigit():
            parent[int(attr)] = lora.base
        else:
            setattr(parent, attr, lora.base)
