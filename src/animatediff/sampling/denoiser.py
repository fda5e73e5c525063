"""The adapter between a UNet and the samplers (k-diffusion's `external.py`), used by training too.

A diffusion UNet sees the variance-preserving latent x_t = sqrt(a) x0 + sqrt(1 - a) eps and predicts
eps (or v). Samplers work in sigma space, x = x0 + sigma * eps with sigma = sqrt((1 - a) / a). So
the model input is x * c_in with c_in = 1 / sqrt(sigma^2 + 1), and its output becomes x0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, timestep) -> eps or v


def to_x0(x: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Clean-sample estimate from a model output at sigma (x in sigma space)."""
    if prediction_type == "epsilon":
        return x - sigma * out
    if prediction_type == "v_prediction":  # x0 = sqrt(a) x_t - sqrt(1 - a) v
        return x / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
    raise ValueError(f"unknown prediction type {prediction_type!r}")


class Denoiser:
    """`denoise(x, sigma, t) -> x0` for the samplers, around `model(x_t, t) -> eps | v`."""

    def __init__(self, model: ModelFn, prediction_type: str = "epsilon"):
        self.model = model
        self.prediction_type = prediction_type

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(x.device, torch.float32)
        out = self.model(x * (sigma**2 + 1) ** -0.5, t.to(x.device))
        return to_x0(x, sigma, out.float(), self.prediction_type)
