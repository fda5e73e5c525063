"""Samplers against diffusers' schedulers (same model, same initial noise), plus analytic checks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from animatediff.sampling import Denoiser, NoiseSchedule, guided, make_schedule, run_sampler
from animatediff.sampling.schedules import sigma_to_t


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth, nonlinear stand-in for a UNet: output depends on the input and the timestep."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return torch.tanh(0.7 * x + 0.1) * (0.5 + t / 2000) + 0.05 * torch.sin(x * 3 + t / 100)


def diffusers_loop(scheduler, steps: int, noise: torch.Tensor, generator: torch.Generator | None = None):
    scheduler.set_timesteps(steps)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = toy_model(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(out, t, latents, generator=generator).prev_sample
    return latents


def our_loop(name: str, ns: NoiseSchedule, steps: int, noise: torch.Tensor, spacing=None, eta=0.0, generator=None):
    schedule = make_schedule(name, ns, steps, spacing)
    denoise = Denoiser(toy_model, ns.prediction_type)
    fresh = lambda: torch.randn(noise.shape, generator=generator)  # noqa: E731
    x = run_sampler(name, denoise, noise * schedule.init_sigma, schedule, fresh, eta=eta)
    return x / (schedule.sigmas[-1] ** 2 + 1) ** 0.5  # back to the variance-preserving latent


def common(ns: NoiseSchedule) -> dict:
    return dict(beta_start=ns.beta_start, beta_end=ns.beta_end, beta_schedule=ns.beta_schedule,
                prediction_type=ns.prediction_type, steps_offset=ns.steps_offset)  # fmt: skip


NOISE_SHAPE = (2, 4, 3, 8, 8)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("preset", ["animatediff", "sd15"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_matches_diffusers(spacing, preset, prediction):
    from diffusers import DDIMScheduler

    ns = NoiseSchedule.PRESETS[preset]
    ns = NoiseSchedule(**{**ns.__dict__, "prediction_type": prediction})
    noise = torch.randn(NOISE_SHAPE)
    ref = DDIMScheduler(**common(ns), clip_sample=False, set_alpha_to_one=ns.set_alpha_to_one,
                        timestep_spacing=spacing)  # fmt: skip
    a = our_loop("ddim", ns, 25, noise, spacing)
    b = diffusers_loop(ref, 25, noise)
    assert (a - b).abs().max() < 1e-4


def test_ddim_eta_matches_diffusers():
    from diffusers import DDIMScheduler

    ns = NoiseSchedule()
    noise = torch.randn(NOISE_SHAPE)
    ref = DDIMScheduler(**common(ns), clip_sample=False, set_alpha_to_one=True)
    a = our_loop("ddim", ns, 20, noise, eta=0.6, generator=torch.Generator().manual_seed(5))
    scheduler_loop = _with_eta(ref, 0.6)
    b = scheduler_loop(20, noise, torch.Generator().manual_seed(5))
    assert (a - b).abs().max() < 1e-4


def _with_eta(scheduler, eta):
    def loop(steps, noise, generator):
        scheduler.set_timesteps(steps)
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            out = toy_model(latents, t)
            latents = scheduler.step(out, t, latents, eta=eta, generator=generator).prev_sample
        return latents

    return loop


@pytest.mark.parametrize(("spacing", "karras"), [("linspace", False), ("leading", False), ("trailing", False),
                                                 ("linspace", True)])  # fmt: skip
def test_euler_matches_diffusers(spacing, karras):
    from diffusers import EulerDiscreteScheduler

    ns = NoiseSchedule()
    noise = torch.randn(NOISE_SHAPE)
    ref = EulerDiscreteScheduler(**common(ns), timestep_spacing=spacing, use_karras_sigmas=karras)
    a = our_loop("euler_karras" if karras else "euler", ns, 25, noise, spacing)
    b = diffusers_loop(ref, 25, noise)
    assert (a - b).abs().max() < 1e-4


def test_euler_ancestral_matches_diffusers():
    from diffusers import EulerAncestralDiscreteScheduler

    ns = NoiseSchedule()
    noise = torch.randn(NOISE_SHAPE)
    ref = EulerAncestralDiscreteScheduler(**common(ns))
    a = our_loop("euler_a", ns, 25, noise, generator=torch.Generator().manual_seed(3))
    b = diffusers_loop(ref, 25, noise, generator=torch.Generator().manual_seed(3))
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [8, 25])
@pytest.mark.parametrize("karras", [False, True])
def test_dpmpp_2m_matches_diffusers(steps, karras):
    from diffusers import DPMSolverMultistepScheduler

    ns = NoiseSchedule()
    noise = torch.randn(NOISE_SHAPE)
    ref = DPMSolverMultistepScheduler(**common(ns), algorithm_type="dpmsolver++", solver_order=2,
                                      use_karras_sigmas=karras)  # fmt: skip
    a = our_loop("dpmpp_2m_karras" if karras else "dpmpp_2m", ns, steps, noise)
    b = diffusers_loop(ref, steps, noise)
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_matches_diffusers(steps):
    from diffusers import LCMScheduler

    ns = NoiseSchedule()
    noise = torch.randn(NOISE_SHAPE)
    ref = LCMScheduler(**common(ns))
    a = our_loop("lcm", ns, steps, noise, generator=torch.Generator().manual_seed(9))
    b = diffusers_loop(ref, steps, noise, generator=torch.Generator().manual_seed(9))
    assert (a - b).abs().max() < 1e-4


def test_ddim_default_timesteps_are_the_originals():
    """AnimateDiff's inference: 25 DDIM steps, leading spacing, offset 1 -> 961, 921, ..., 1."""
    schedule = make_schedule("ddim", NoiseSchedule(), 25)
    assert schedule.timesteps.tolist() == list(range(961, 0, -40))
    assert schedule.sigmas[-1] == 0


def test_sampler_recovers_a_known_point_exactly():
    """If the data distribution is one point, a perfect denoiser always returns it: every sampler,
    from any noise, must end exactly there (an analytic answer, no reference needed)."""
    target = torch.randn(1, 4, 2, 4, 4)
    fresh = lambda: torch.randn_like(target)  # noqa: E731
    for name in ("ddim", "euler", "euler_a", "euler_karras", "dpmpp_2m", "dpmpp_2m_karras", "lcm"):
        schedule = make_schedule(name, NoiseSchedule(), 4 if name == "lcm" else 12)
        x = run_sampler(name, lambda x, s, t: target, fresh() * schedule.init_sigma, schedule, fresh)
        assert torch.allclose(x / (schedule.sigmas[-1] ** 2 + 1) ** 0.5, target, atol=1e-5), name


def ode_error(name: str, steps: int, noise: torch.Tensor, s: float = 0.5) -> float:
    """Gaussian data N(0, s^2) has the exact denoiser x s^2 / (s^2 + sigma^2), and the probability-flow
    ODE then has the closed form x(sigma) = x(sigma_0) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2)."""
    schedule = make_schedule(name, NoiseSchedule(), steps)
    x_start = noise * schedule.init_sigma
    x = run_sampler(name, lambda x, sigma, t: x * s**2 / (s**2 + sigma**2), x_start, schedule, None)
    exact = x_start * s / (s**2 + schedule.sigmas[0] ** 2) ** 0.5
    return (x - exact).abs().max().item()


def test_ode_samplers_converge_at_their_order():
    noise = torch.randn(10000)
    for name in ("ddim", "euler"):  # first order: doubling the steps halves the error
        errors = [ode_error(name, n, noise) for n in (20, 40, 80)]
        assert all(0.45 < b / a < 0.6 for a, b in itertools.pairwise(errors)), (name, errors)
    assert ode_error("dpmpp_2m_karras", 40, noise) < ode_error("euler", 40, noise) / 10


def test_sigma_to_t_inverts_the_table():
    ns = NoiseSchedule()
    table = ns.sigma_table()
    t = torch.tensor([0, 1, 250, 999])
    assert torch.allclose(torch.from_numpy(sigma_to_t(table[t.numpy()], table)).float(), t.float(), atol=1e-3)


def test_guidance_combines_outputs_and_rescales():
    def model(x, t, ctx):
        return x * ctx.mean(dim=(1, 2)).view(-1, *[1] * (x.dim() - 1))

    x = torch.randn(2, 4, 3, 2, 2)
    cond, uncond = torch.full((2, 5, 8), 2.0), torch.full((2, 5, 8), 1.0)
    out = guided(model, cond, uncond, scale=7.5)(x, torch.tensor(10))
    assert torch.allclose(out, x * (1 + 7.5 * (2 - 1)))
    assert torch.allclose(guided(model, cond, None, scale=7.5)(x, torch.tensor(10)), x * 2)
    rescaled = guided(model, cond, uncond, scale=7.5, rescale=1.0)(x, torch.tensor(10))
    assert torch.allclose(rescaled.std(dim=(1, 2, 3, 4)), (x * 2).std(dim=(1, 2, 3, 4)), rtol=1e-4)


def test_unknown_sampler_and_bad_steps():
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        make_schedule("plms", NoiseSchedule(), 10)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        make_schedule("ddim", NoiseSchedule(), 0)
    assert math.isfinite(make_schedule("euler", NoiseSchedule(), 1).init_sigma)
