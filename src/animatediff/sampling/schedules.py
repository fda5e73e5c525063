"""Noise schedules and the step schedules each sampler walks.

Everything is expressed in sigma space (Karras et al. 2022): a latent x_t of the variance-preserving
process corresponds to x = x_t / sqrt(alphas_cumprod[t]), with sigma_t = sqrt((1 - a_t) / a_t).
A `Schedule` lists the sigmas a sampler steps through, the model timestep at each sigma, and the
standard deviation of the starting noise. The builders reproduce diffusers' schedulers' choices
(spacing, Karras sigmas, final sigma, initial noise) so results can be compared number for number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch

Spacing = Literal["leading", "linspace", "trailing"]


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule a model expects."""

    beta_start: float = 0.00085
    beta_end: float = 0.012
    # AnimateDiff trained and samples with *linear* betas (the paper: less flicker, better saturation
    # than SD's "scaled_linear").
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    num_train_timesteps: int = 1000
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    steps_offset: int = 1
    # DDIM/LCM's last step goes to alpha = 1 (a clean sample), as in the original's DDIMScheduler.
    set_alpha_to_one: bool = True

    PRESETS: ClassVar[dict[str, NoiseSchedule]]

    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        else:
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float32) ** 2
        return torch.cumprod(1.0 - betas, dim=0)

    def sigma_table(self) -> np.ndarray:
        """sigma for every training timestep 0..n-1, ascending."""
        a = self.alphas_cumprod()
        return np.array(((1 - a) / a) ** 0.5)


NoiseSchedule.PRESETS = {
    "animatediff": NoiseSchedule(),
    "sd15": NoiseSchedule(beta_schedule="scaled_linear", set_alpha_to_one=False),
}


@dataclass
class Schedule:
    """What a sampler walks: model calls at (sigmas[i], timesteps[i]), stepping to sigmas[i+1]."""

    sigmas: torch.Tensor  # [n + 1] float32, descending; the last is the final sigma (0 = clean)
    timesteps: torch.Tensor  # [n] float32 timesteps given to the model
    init_sigma: float  # x_T = noise * init_sigma

    def __len__(self) -> int:
        return len(self.timesteps)


def spaced_timesteps(ns: NoiseSchedule, steps: int, spacing: Spacing, extra: int = 0) -> np.ndarray:
    """Descending timesteps. `extra=1` gives DPM-Solver's variant (n+1 points, the last dropped)."""
    n = ns.num_train_timesteps
    if spacing == "linspace":
        if extra:
            return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy()
        return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = n // (steps + extra)
        t = (np.arange(0, steps + extra) * ratio).round()[::-1]
        return (t[:-1] if extra else t).copy().astype(np.float32) + ns.steps_offset
    if spacing == "trailing":
        return np.arange(n, 0, -n / steps).round().astype(np.float32) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}: use leading, linspace or trailing")


def sigma_to_t(sigma: np.ndarray, sigma_table: np.ndarray) -> np.ndarray:
    """Fractional timestep of each sigma, interpolating log-sigma linearly (k-diffusion, diffusers)."""
    log_table = np.log(sigma_table)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_table[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_table) - 2)
    w = np.clip((log_table[low] - log_sigma) / (log_table[low] - log_table[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(np.shape(sigma))


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _pack(sigmas: np.ndarray, timesteps: np.ndarray, final: float, init_sigma: float) -> Schedule:
    return Schedule(
        sigmas=torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32)),
        timesteps=torch.from_numpy(np.asarray(timesteps, dtype=np.float32)),
        init_sigma=float(init_sigma),
    )


def ddim_schedule(ns: NoiseSchedule, steps: int, spacing: Spacing = "leading") -> Schedule:
    """DDIM: integer timesteps, their exact sigmas, then the final alpha (1, or alphas_cumprod[0])."""
    table = ns.sigma_table()
    t = spaced_timesteps(ns, steps, spacing).round().astype(np.int64)
    final = 0.0 if ns.set_alpha_to_one else table[0]
    return _pack(table[t], t, final, (table[t[0]] ** 2 + 1) ** 0.5)


def euler_schedule(ns: NoiseSchedule, steps: int, spacing: Spacing = "linspace", karras: bool = False) -> Schedule:
    """diffusers' EulerDiscrete / EulerAncestral: sigmas interpolated at (fractional) timesteps."""
    table = ns.sigma_table()
    t = spaced_timesteps(ns, steps, spacing)
    sigmas = np.interp(t, np.arange(len(table)), table)
    if karras:
        sigmas = karras_sigmas(sigmas[-1], sigmas[0], steps)
        t = sigma_to_t(sigmas, table)
    # diffusers starts linspace/trailing schedules at sigma_max, leading ones at sqrt(sigma_max^2 + 1).
    init = sigmas[0] if spacing in ("linspace", "trailing") else (sigmas[0] ** 2 + 1) ** 0.5
    return _pack(sigmas, t, 0.0, init)


def dpm_schedule(ns: NoiseSchedule, steps: int, spacing: Spacing = "linspace", karras: bool = False) -> Schedule:
    """diffusers' DPMSolverMultistep: integer timesteps; Karras sigmas span the whole training range."""
    table = ns.sigma_table()
    t = spaced_timesteps(ns, steps, spacing, extra=0 if spacing == "trailing" else 1).astype(np.int64)
    if karras:
        sigmas = karras_sigmas(table[0], table[-1], steps)
        t = sigma_to_t(sigmas, table).round()
    else:
        sigmas = np.interp(t, np.arange(len(table)), table)
    return _pack(sigmas, t, 0.0, (sigmas[0] ** 2 + 1) ** 0.5)


def lcm_schedule(ns: NoiseSchedule, steps: int, original_steps: int = 50) -> Schedule:
    """Latent Consistency Models: `steps` evenly chosen from the distillation schedule's timesteps."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"LCM takes 1 to {original_steps} steps, got {steps}")
    table = ns.sigma_table()
    k = ns.num_train_timesteps // original_steps
    origin = (np.arange(1, original_steps + 1) * k - 1)[::-1]
    t = origin[np.floor(np.linspace(0, len(origin), num=steps, endpoint=False)).astype(np.int64)]
    final = 0.0 if ns.set_alpha_to_one else table[0]
    return _pack(table[t], t, final, (table[t[0]] ** 2 + 1) ** 0.5)
