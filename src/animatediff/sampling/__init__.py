"""Samplers by name: each pairs a schedule builder with a sampling function."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .denoiser import Denoiser
from .guidance import guided
from .samplers import sample_dpmpp_2m, sample_euler, sample_euler_ancestral, sample_lcm
from .schedules import (
    NoiseSchedule,
    Schedule,
    ddim_schedule,
    dpm_schedule,
    euler_schedule,
    lcm_schedule,
)

SAMPLERS = ("ddim", "euler", "euler_a", "euler_karras", "dpmpp_2m", "dpmpp_2m_karras", "lcm")


def make_schedule(name: str, ns: NoiseSchedule, steps: int, spacing: str | None = None) -> Schedule:
    """The step schedule of sampler `name` (spacing defaults to what diffusers uses for it)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if name == "ddim":
        return ddim_schedule(ns, steps, spacing or "leading")
    if name in ("euler", "euler_a", "euler_karras"):
        return euler_schedule(ns, steps, spacing or "linspace", karras=name == "euler_karras")
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return dpm_schedule(ns, steps, spacing or "linspace", karras=name.endswith("karras"))
    if name == "lcm":
        return lcm_schedule(ns, steps)
    raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def run_sampler(
    name: str,
    denoise: Callable,
    x: torch.Tensor,
    schedule: Schedule,
    noise: Callable[[], torch.Tensor],
    eta: float = 0.0,
    callback=None,
) -> torch.Tensor:
    """Run sampler `name`; `eta` > 0 makes DDIM stochastic (ancestral)."""
    if name == "ddim":
        if eta > 0:
            return sample_euler_ancestral(denoise, x, schedule, noise, eta=eta, callback=callback)
        return sample_euler(denoise, x, schedule, callback=callback)
    if name in ("euler", "euler_karras"):
        return sample_euler(denoise, x, schedule, callback=callback)
    if name == "euler_a":
        return sample_euler_ancestral(denoise, x, schedule, noise, eta=1.0 if eta == 0 else eta, callback=callback)
    if name in ("dpmpp_2m", "dpmpp_2m_karras"):
        return sample_dpmpp_2m(denoise, x, schedule, callback=callback)
    if name == "lcm":
        return sample_lcm(denoise, x, schedule, noise, callback=callback)
    raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


__all__ = ["SAMPLERS", "Denoiser", "NoiseSchedule", "Schedule", "guided", "make_schedule", "run_sampler"]
