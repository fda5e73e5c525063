"""Samplers as plain functions (k-diffusion style) over a denoiser in sigma space.

    denoise(x, sigma, t) -> x0      x = x0 + sigma * noise; t is the model timestep for this sigma

Each sampler walks a `Schedule` (see schedules.py) and returns x at the schedule's last sigma.
Progress bars, `no_grad` and devices belong to the caller; `callback(i, x, x0)` sees every step.
Identities worth knowing: DDIM with eta=0 is the Euler step in sigma space, and DDIM with eta>0 is
the ancestral Euler step with the same eta, so DDIM is `sample_euler` / `sample_euler_ancestral`
walking DDIM's schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .schedules import Schedule

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None
Noise = Callable[[], torch.Tensor]  # fresh standard normal noise shaped like x


def _steps(schedule: Schedule):
    for i in range(len(schedule)):
        yield i, schedule.sigmas[i].item(), schedule.sigmas[i + 1].item(), schedule.timesteps[i]


def sample_euler(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: Callback = None) -> torch.Tensor:
    """Euler on the probability-flow ODE: x <- x0 + sigma_next * (x - x0) / sigma."""
    for i, sigma, sigma_next, t in _steps(schedule):
        x0 = denoise(x, torch.tensor(sigma), t)
        if callback:
            callback(i, x, x0)
        x = x0 + (x - x0) * (sigma_next / sigma)
    return x


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """Split the step to sigma_next into a deterministic part (down) and fresh noise (up)."""
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def sample_euler_ancestral(
    denoise: Denoise, x: torch.Tensor, schedule: Schedule, noise: Noise, eta: float = 1.0, callback: Callback = None
) -> torch.Tensor:
    for i, sigma, sigma_next, t in _steps(schedule):
        x0 = denoise(x, torch.tensor(sigma), t)
        if callback:
            callback(i, x, x0)
        down, up = ancestral_step(sigma, sigma_next, eta)
        x = x0 + (x - x0) * (down / sigma)
        if up > 0:
            x = x + noise() * up
    return x


def sample_dpmpp_2m(denoise: Denoise, x: torch.Tensor, schedule: Schedule, callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), identical to diffusers' multistep midpoint solver of order 2:
    first order on the first step, second order after, and the clean estimate at sigma 0."""
    old_x0, h_last = None, None
    for i, sigma, sigma_next, t in _steps(schedule):
        x0 = denoise(x, torch.tensor(sigma), t)
        if callback:
            callback(i, x, x0)
        if sigma_next == 0:
            x = x0
            continue
        h = math.log(sigma) - math.log(sigma_next)  # lambda = -log(sigma)
        if old_x0 is None:
            d = x0
        else:
            r = h_last / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * d
        old_x0, h_last = x0, h
    return x


def sample_lcm(
    denoise: Denoise,
    x: torch.Tensor,
    schedule: Schedule,
    noise: Noise,
    timestep_scaling: float = 10.0,
    callback: Callback = None,
) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023), as diffusers' LCMScheduler.

    The consistency boundary condition mixes the prediction with the input; then the next step
    re-noises the clean estimate to the next sigma with fresh noise.
    """
    last = len(schedule) - 1
    for i, sigma, sigma_next, t in _steps(schedule):
        x0 = denoise(x, torch.tensor(sigma), t)
        scaled = float(t) * timestep_scaling
        c_skip = 0.25 / (scaled**2 + 0.25)  # sigma_data = 0.5
        c_out = scaled / (scaled**2 + 0.25) ** 0.5
        x0 = c_out * x0 + c_skip * x / math.sqrt(sigma**2 + 1)  # the condition acts on the VP sample
        if callback:
            callback(i, x, x0)
        x = x0 + noise() * sigma_next if i < last and sigma_next > 0 else x0
    return x
