"""Where the sampler lives: the latent's form and the model's timestep <-> sigma maps.

ComfyUI keeps discrete VP models (SD1.5, SD2.x, SDXL; eps or v) in the VE form
``x = x0 + sigma * eps`` and flow models (SD3, Flux) in the form
``x = (1 - sigma) * x0 + sigma * eps`` (docs/math.md, section 1). TCD picks the denoise
target ``s`` in the model's own timestep space, so a space also carries both maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

__all__ = [
    "LatentForm",
    "NoiseSpace",
    "discrete_space",
    "flow_space",
    "scaled_linear_sigmas",
    "SD_SPACE",
]


class LatentForm(Enum):
    """The Gaussian path ``x = alpha(sigma) * x0 + sigma * eps`` the latent follows."""

    VE = "ve"  # alpha = 1: ComfyUI's EPS / V_PREDICTION model sampling
    FLOW = "flow"  # alpha = 1 - sigma: ComfyUI's CONST (rectified flow) model sampling

    def alpha(self, sigma: float) -> float:
        return 1.0 if self is LatentForm.VE else 1.0 - sigma

    def log_snr(self, sigma: float) -> float:
        """lambda = log(alpha / sigma), the variable DPM-Solver steps in."""
        alpha = self.alpha(sigma)
        if alpha <= 0.0:
            return -math.inf
        return math.log(alpha / sigma)

    def sigma_at_log_snr(self, log_snr: float) -> float:
        if self is LatentForm.VE:
            return math.exp(-log_snr)
        return 1.0 / (1.0 + math.exp(log_snr))

    def reference_scale(self, sigma: float) -> float:
        """Factor taking a latent at ``sigma`` to the reference's VP latent (VE: sqrt(alpha_bar))."""
        return 1.0 / math.sqrt(1.0 + sigma * sigma) if self is LatentForm.VE else 1.0


@dataclass(frozen=True)
class NoiseSpace:
    """A latent form plus the model's maps between sigma and its own timestep.

    ``timestep`` and ``sigma`` take and return 1-D CPU float64 tensors. On a ``discrete``
    space timesteps are training indices and ``s`` is floored as the reference does.
    """

    form: LatentForm
    timestep: Callable[[Tensor], Tensor]
    sigma: Callable[[Tensor], Tensor]
    discrete: bool


def scaled_linear_sigmas(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """sigma[t] = sqrt((1 - alpha_bar[t]) / alpha_bar[t]) for SD's scaled-linear betas (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def discrete_space(sigma_table: Tensor) -> NoiseSpace:
    """A VE-form space over a table of per-timestep sigmas, ascending in t.

    timestep(): the nearest index in log sigma; sigma(): log-linear interpolation (exact at
    integer t). These are the conventions of ComfyUI's discrete model sampling.
    """
    log_table = sigma_table.detach().to("cpu", torch.float64).log()
    last = len(log_table) - 1

    def timestep(sigma: Tensor) -> Tensor:
        return (sigma.log()[:, None] - log_table[None, :]).abs().argmin(dim=1)

    def sigma(t: Tensor) -> Tensor:
        t = t.to(torch.float64).clamp(0, last)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1 - w) * log_table[low] + w * log_table[high]).exp()

    return NoiseSpace(LatentForm.VE, timestep, sigma, discrete=True)


def flow_space() -> NoiseSpace:
    """A flow-form space whose timestep is sigma itself (up to ComfyUI's constant multiplier).

    Flow models are conditioned on ``t = sigma * multiplier``, so ``s = (1 - gamma) * t_next``
    is ``sigma_s = (1 - gamma) * sigma_next`` whatever the multiplier or shift.
    """

    def identity(values: Tensor) -> Tensor:
        return values.to(torch.float64)

    return NoiseSpace(LatentForm.FLOW, identity, identity, discrete=False)


SD_SPACE = discrete_space(scaled_linear_sigmas())
"""The reference's own setting: 1000 scaled-linear timesteps (SD1.5, SD2.x, SDXL)."""
