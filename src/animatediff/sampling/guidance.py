"""Classifier-free guidance (Ho & Salimans 2022), with optional guidance rescale (Lin et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# (x_t [B, ...], timestep, context [B, ...]) -> model output [B, ...]
ConditionalModel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def guided(
    model: ConditionalModel,
    cond: torch.Tensor,
    uncond: torch.Tensor | None,
    scale: float,
    rescale: float = 0.0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`model(x, t)` with guidance: one batched call on [uncond, cond], combined on the model output.

    The combination is done on eps/v (not x0) because guidance rescale is not linear in the output.
    A scale of 1 (or no negative context) skips the unconditional half.
    """
    if uncond is None or scale == 1.0:
        return lambda x, t: model(x, t, cond)
    if uncond.shape != cond.shape:
        raise ValueError(f"negative context {tuple(uncond.shape)} differs from the prompt's {tuple(cond.shape)}")
    context = torch.cat([uncond, cond])

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out_uncond, out_cond = model(torch.cat([x, x]), t, context).chunk(2)
        out = out_uncond + scale * (out_cond - out_uncond)
        if rescale > 0:
            dims = list(range(1, out.dim()))
            ratio = out_cond.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
            out = rescale * (out * ratio) + (1 - rescale) * out
        return out

    return fn
