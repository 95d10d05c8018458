"""Run diffusers' TCDScheduler (the reference) and tcd_core side by side on one toy model.

The toy model predicts eps or v from the VP latent and the integer timestep. tcd_core sees the
same model as a ComfyUI-style denoiser on VE latents (x_ve = x_vp / sqrt(alpha_bar)).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from comfyui_tcd_sampling import tcd_core
from diffusers import TCDScheduler
from torch import Tensor

SHAPE = (2, 4, 8, 8)


def toy_prediction(x_vp: Tensor, t: Tensor) -> Tensor:
    """A deterministic, nonlinear, element-mixing stand-in for a UNet's eps / v output."""
    t = t.to(torch.float32).reshape(-1, *([1] * (x_vp.dim() - 1)))
    mixed = 0.6 * x_vp + 0.3 * x_vp.roll(1, dims=-1) - 0.2 * x_vp.flip(1)
    return torch.tanh(mixed) * (0.5 + t / 1000) + 0.1 * torch.sin(x_vp + t / 100)


@dataclass
class Trajectory:
    latents: list[Tensor]  # the latent entering each step, VE form
    final: Tensor  # the sampler's output (the reference's VP latent at t = 0)


def reference_run(
    timesteps: list[int], prediction: str, gamma: float, original_steps: int, strength: float, seed: int
) -> Trajectory:
    """diffusers' loop; intermediate VP latents are converted to VE with tcd_core's own sigma table."""
    scheduler = TCDScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type=prediction,
        original_inference_steps=original_steps,
    )
    scheduler.set_timesteps(len(timesteps), strength=strength)
    assert scheduler.timesteps.tolist() == timesteps
    sigma_table = tcd_core.scaled_linear_sigmas()
    x = start_latent(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    latents = []
    for t in scheduler.timesteps:
        latents.append(x * (1 + sigma_table[t] ** 2).sqrt().float())
        x = scheduler.step(toy_prediction(x, t), t, x, eta=gamma, generator=generator).prev_sample
    return Trajectory(latents, x)


def start_latent(seed: int) -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def tcd_core_run(timesteps: list[int], prediction: str, gamma: float, seed: int) -> Trajectory:
    """tcd_core.sample_tcd on the same model, noise and start latent, in ComfyUI's VE form."""
    sigma_table = tcd_core.scaled_linear_sigmas()
    space = tcd_core.SD_SPACE
    sigmas = torch.cat([sigma_table[timesteps], sigma_table.new_zeros(1)]).float()

    def denoiser(x_ve: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.reshape(-1, 1, 1, 1).double()
        t = space.timestep(sigma.flatten())
        alpha_bar = 1 / (1 + sigma**2)
        x_vp = (x_ve * alpha_bar.sqrt()).float()
        out = toy_prediction(x_vp, t).double()
        if prediction == "epsilon":
            return (x_ve - sigma * out).float()
        return (alpha_bar.sqrt() * x_vp - (1 - alpha_bar).sqrt() * out).float()

    generator = torch.Generator().manual_seed(seed + 1)
    latents = []
    x = start_latent(seed) * (1 + sigmas[0].double() ** 2).sqrt().float()
    final = tcd_core.sample_tcd(
        denoiser,
        x,
        sigmas,
        callback=lambda info: latents.append(info["x"]),
        noise_sampler=lambda sigma, sigma_next: torch.randn(SHAPE, generator=generator),
        gamma=gamma,
        space=space,
        disable=True,
    )
    return Trajectory(latents, final)


def relative_error(ours: Tensor, reference: Tensor) -> float:
    """max |ours - reference| / max(1, max |reference|)."""
    return ((ours - reference).abs().max() / reference.abs().max().clamp(min=1)).item()


# The parity grid shared by tests/test_parity_diffusers.py and devkit/parity_report.py.
TOLERANCE = 1e-5
STEPS = [1, 2, 3, 4, 8, 16, 50]
GAMMAS = [0.0, tcd_core.DEFAULT_GAMMA, 0.7, 1.0]
PREDICTIONS = ["epsilon", "v_prediction"]
STRENGTHS = [1.0, 0.5]
ORIGINAL_STEPS = [tcd_core.DEFAULT_ORIGINAL_INFERENCE_STEPS, 100, 30]


def diffusers_timesteps(steps: int, original_steps: int, strength: float) -> list[int]:
    scheduler = TCDScheduler(original_inference_steps=original_steps)
    scheduler.set_timesteps(steps, strength=strength)
    return scheduler.timesteps.tolist()


def diffusers_refuses(steps: int, original_steps: int, strength: float) -> bool:
    try:
        diffusers_timesteps(steps, original_steps, strength)
    except (ValueError, ZeroDivisionError):
        return True
    return False


SAMPLING_GRID = [
    case
    for case in itertools.product(STEPS, GAMMAS, PREDICTIONS, STRENGTHS, ORIGINAL_STEPS[:2])
    if not diffusers_refuses(case[0], case[4], case[3])
]
