"""Strategic Stochastic Sampling (TCD paper, Algorithm 4) as a k-diffusion-style sampler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .errors import TCDInputError
from .gamma import DEFAULT_GAMMA, GammaSchedule
from .noise_space import SD_SPACE, NoiseSpace
from .step_plan import plan_steps

try:
    from tqdm.auto import trange
except ImportError:  # tqdm only draws the console bar; ComfyUI's own bar uses the callback

    def trange(n: int, disable: bool | None = None) -> range:  # type: ignore[misc]
        return range(n)


__all__ = ["sample_tcd"]

NoiseSampler = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def sample_tcd(
    model: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    noise_sampler: NoiseSampler | None = None,
    *,
    gamma: float | GammaSchedule = DEFAULT_GAMMA,
    order: int = 1,
    space: NoiseSpace = SD_SPACE,
) -> Tensor:
    """Trajectory consistency sampling: denoise to s = (1 - gamma) * t_next, diffuse back to t_next.

    ``model(x, sigma, **extra_args)`` returns the denoised (x0) estimate, as in ComfyUI. ``order=2``
    makes the denoise sub-step a DPM-Solver-2 step (one more model call on steps with s above 0).
    All input is checked before the first model call; bad input raises TCDInputError.
    """
    extra_args = {} if extra_args is None else extra_args
    schedule = gamma if isinstance(gamma, GammaSchedule) else GammaSchedule.constant(gamma)
    plan = plan_steps(sigmas, schedule, space, order)
    if not torch.isfinite(torch.stack(torch.aminmax(x))).all():  # one pass; NaN and +-Inf reach min or max
        raise TCDInputError("the latent to sample holds NaN or infinite values; check the nodes that made it")
    if noise_sampler is None:
        noise_sampler = lambda sigma, sigma_next: torch.randn_like(x)  # noqa: E731
    s_in = x.new_ones([x.shape[0]])
    if order == 2:
        sigma_u = sigmas.new_tensor([step.sigma_u or 0.0 for step in plan])

    for i in trange(len(plan), disable=disable):
        step = plan[i]
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if step.to_u is not None:
            # 1. Second order: re-estimate x0 at the lambda-midpoint u before moving to s.
            denoised = model(step.to_u.apply(x, denoised), sigma_u[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        # 2. Denoise to s (TCF) and scale to sigma_next; 3. add the fresh noise that reaches sigma_next.
        x = step.update.apply(x, denoised)
        if step.noise_scale is not None:
            x = x.add_(noise_sampler(sigmas[i], sigmas[i + 1]), alpha=step.noise_scale)
    return x
