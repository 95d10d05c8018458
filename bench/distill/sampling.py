"""The samplers compared: teacher DDIM, TCD's SSS (tcd_core.sample_tcd) and LCM's multistep sampling.

Every sampler runs on the same timesteps, ``tcd_core.tcd_timesteps(steps, original_inference_steps
= num_ddim_timesteps)`` (LCM's scheduler picks the same evenly index-spaced points of the
skipping grid), starting from the same noise ``x_T ~ N(0, I)`` in diffusers' VP form.

- SSS and DDIM: ``tcd_core.sample_tcd`` on ComfyUI's VE form (SD_SPACE, the 1000-step scaled_linear
  schedule), the eps network wrapped as a ComfyUI denoiser ``(x_ve, sigma) -> x0``; teacher DDIM is
  SSS with gamma 0 (the deterministic DDIM step on the grid).
- LCM multistep (diffusers' LCMScheduler, Luo et al. 2023 Algorithm 1): at each timestep the
  boundary-scaled consistency output ``c_skip x_t + c_out x0``, then fresh noise to the next timestep.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from tcd_core import SD_SPACE, sample_tcd, tcd_timesteps
from tcd_core.distill import lcm_boundary_scalings, scaled_linear_alphas_cumprod, split_prediction

ALPHAS_CUMPROD = scaled_linear_alphas_cumprod()
EpsNet = Callable[[Tensor, Tensor], Tensor]


def timesteps_for(steps: int, num_ddim_timesteps: int) -> list[int]:
    return tcd_timesteps(steps, original_inference_steps=num_ddim_timesteps)


def _ve_denoiser(net: EpsNet) -> Callable[..., Tensor]:
    """The eps network as a ComfyUI-style VE denoiser: x_ve = x_vp / a_t, sigma_t = s_t / a_t."""

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        sig = sigma.detach().to("cpu", torch.float64)
        t = SD_SPACE.timestep(sig)
        a = (1.0 / (1.0 + sig**2).sqrt()).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        eps = net(x * a, t)
        return x - sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) * eps

    return model


@torch.no_grad()
def sample_sss(net: EpsNet, noise: Tensor, steps: int, gamma: float, num_ddim_timesteps: int, seed: int) -> Tensor:
    """Strategic Stochastic Sampling (gamma 0 = DDIM) through tcd_core.sample_tcd; returns VP samples."""
    ts = torch.tensor(timesteps_for(steps, num_ddim_timesteps), dtype=torch.float64)
    sigmas = torch.cat([SD_SPACE.sigma(ts), torch.zeros(1, dtype=torch.float64)]).float()
    gen = torch.Generator().manual_seed(seed)
    x = noise * (1.0 + sigmas[0] ** 2).sqrt()  # VP x_T = noise -> VE x_T = noise / a_T
    sampler = lambda sigma, sigma_next: torch.randn(x.shape, generator=gen)  # noqa: E731
    return sample_tcd(_ve_denoiser(net), x, sigmas, disable=True, noise_sampler=sampler, gamma=gamma)


@torch.no_grad()
def sample_lcm(net: EpsNet, noise: Tensor, steps: int, num_ddim_timesteps: int, seed: int) -> Tensor:
    """LCM multistep sampling in the VP form with LCM's boundary scalings (timestep scaling 10)."""
    ts = timesteps_for(steps, num_ddim_timesteps)
    gen = torch.Generator().manual_seed(seed)
    x = noise
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.int64)
        x0, _ = split_prediction(net(x, tt), x, tt, ALPHAS_CUMPROD)
        c_skip, c_out = (float(c) for c in lcm_boundary_scalings(torch.tensor(t)))
        denoised = c_skip * x + c_out * x0
        if i + 1 == len(ts):
            return denoised
        a_bar = float(ALPHAS_CUMPROD[ts[i + 1]])
        x = a_bar**0.5 * denoised + (1.0 - a_bar) ** 0.5 * torch.randn(x.shape, generator=gen)
    raise AssertionError("unreachable")


def as_eps_net(module: nn.Module) -> EpsNet:
    return lambda x, t: module(x, t, None)
