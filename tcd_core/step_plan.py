"""The per-step numbers of Strategic Stochastic Sampling, worked out once from the sigmas given.

For step ``i`` (sigma_i -> sigma_next), with denoised estimate ``d`` (docs/math.md, sections 3-6):

    s       = (1 - gamma_i) * t_next                        # in the model's timestep space
    x_s     = alpha_s * d + sigma_s * (x - alpha_i * d) / sigma_i              # TCF(1), Eq. 9
    x_next  = (alpha_next / alpha_s) * x_s + noise_scale * z                    # SSS, Eq. 12

In both forms the move to s is ``lerp(d, x, sigma_s / sigma_i)``, so every step is
``x_next = scale * lerp(d, x, weight) + noise_scale * z`` with scalars found here.
Planning reads the sigmas actually passed (never a schedule computed elsewhere), touches the
device once, and is cached, so the sampling loop itself never synchronises.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import TCDInputError
from .gamma import GammaSchedule
from .noise_space import LatentForm, NoiseSpace

__all__ = ["TCDStep", "plan_steps", "validate_sigmas"]


@dataclass(frozen=True)
class Move:
    """``scale * lerp(d, x, weight)``: a move along the trajectory from ``x`` given its denoised estimate."""

    weight: float
    scale: float = 1.0

    def apply(self, x: Tensor, denoised: Tensor) -> Tensor:
        out = torch.lerp(denoised, x, self.weight)
        return out if self.scale == 1.0 else out.mul_(self.scale)


@dataclass(frozen=True)
class TCDStep:
    sigma: float
    sigma_next: float
    sigma_s: float
    gamma: float
    update: Move  # x -> x_next without the noise term (denoise to s, scale back to sigma_next)
    noise_scale: float | None  # None: no noise is drawn on this step
    sigma_u: float | None = None  # order 2: the extra model call's sigma
    to_u: Move | None = None  # order 2: x -> x_u


def validate_sigmas(sigmas: Tensor) -> list[float]:
    """The sigmas as Python floats, or a TCDInputError saying what is wrong with them."""
    if not isinstance(sigmas, Tensor) or sigmas.dim() != 1:
        raise TCDInputError("sigmas must be a 1-D tensor of noise levels")
    if len(sigmas) < 2:
        raise TCDInputError(f"sigmas must hold at least 2 values (a start and an end), got {len(sigmas)}")
    values = sigmas.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise TCDInputError(f"sigmas must be finite and >= 0, got {values}")
    for i in range(len(values) - 1):
        if values[i + 1] >= values[i]:
            raise TCDInputError(
                f"sigmas must be strictly descending, but sigma[{i + 1}]={values[i + 1]:.6g} "
                f"does not fall below sigma[{i}]={values[i]:.6g}"
            )
    return values


def _denoise_targets(sig: list[float], gammas: list[float], space: NoiseSpace) -> list[float]:
    """sigma_s for each step: s = (1 - gamma) * t_next in the model's timestep space."""
    n = len(sig) - 1
    # 1. t_next in the model's timestep space; the reference takes t_next = 0 on the last step.
    t_next = space.timestep(torch.tensor(sig[1:], dtype=torch.float64))
    t_next = torch.where(torch.tensor([s == 0.0 for s in sig[1:]]), torch.zeros_like(t_next), t_next)
    # 2. s = (1 - gamma) * t_next; floored on a discrete grid in float32, as diffusers computes it.
    one_minus_gamma = torch.tensor([1.0 - g for g in gammas], dtype=torch.float64)
    if space.discrete:
        s = torch.floor(one_minus_gamma.float() * t_next.float()).long()
    else:
        s = one_minus_gamma * t_next.to(torch.float64)
    sigma_s = space.sigma(s).to(torch.float64).tolist()
    # 3. Never above sigma_next: off-grid schedules can round up (docs/math.md, section 5). gamma = 0 lands on it.
    targets = []
    for i in range(n):
        if sig[i + 1] == 0.0:
            targets.append(min(sigma_s[i], sig[i]))
        elif gammas[i] == 0.0:
            targets.append(sig[i + 1])
        else:
            targets.append(min(sigma_s[i], sig[i + 1]))
    return targets


def _move(sigma: float, target: float, scale: float = 1.0) -> Move:
    """First-order (DDIM / TCF(1)) move from ``sigma`` to ``target``.

    ``alpha_t d + sigma_t (x - alpha d) / sigma`` equals ``lerp(d, x, target / sigma)`` for alpha = 1
    (VE) and for alpha = 1 - sigma (flow) alike.
    """
    return Move(target / sigma, scale)


def _midpoint(form: LatentForm, sigma: float, sigma_s: float) -> float:
    """sigma at the midpoint of [sigma, sigma_s] in lambda = log(alpha / sigma) (DPM-Solver-2, r = 1/2).

    Where alpha(sigma) = 0 (a flow model at pure noise) lambda is -inf; the geometric mean stands in.
    """
    lam, lam_s = form.log_snr(sigma), form.log_snr(sigma_s)
    if math.isinf(lam):
        return math.sqrt(sigma * sigma_s)
    return form.sigma_at_log_snr(0.5 * (lam + lam_s))


def plan_steps(sigmas: Tensor, gamma: GammaSchedule, space: NoiseSpace, order: int = 1) -> tuple[TCDStep, ...]:
    """Work out every step of an SSS run over ``sigmas``; raises TCDInputError on bad input."""
    if order not in (1, 2):
        raise TCDInputError(f"order must be 1 or 2, got {order!r}")
    return _plan(tuple(validate_sigmas(sigmas)), gamma, space, order)


@functools.lru_cache(maxsize=64)
def _plan(sig: tuple[float, ...], gamma: GammaSchedule, space: NoiseSpace, order: int) -> tuple[TCDStep, ...]:
    gammas = gamma.per_step(len(sig) - 1)
    form = space.form
    steps = []
    for i, sigma_s in enumerate(_denoise_targets(list(sig), gammas, space)):
        sigma, sigma_next = sig[i], sig[i + 1]
        scale = 1.0
        noise_scale = None
        if sigma_next == 0.0:
            # Last step: the reference returns the VP latent at s (docs/math.md, section 4).
            scale = form.reference_scale(sigma_s)
        elif gammas[i] > 0.0:
            # Diffuse back from s to sigma_next (Eq. 12), keeping the marginal at sigma_next exact.
            scale = form.alpha(sigma_next) / form.alpha(sigma_s)
            noise_scale = math.sqrt(max(sigma_next**2 - (scale * sigma_s) ** 2, 0.0))
        sigma_u = to_u = None
        if order == 2 and sigma_s > 0.0:
            sigma_u = _midpoint(form, sigma, sigma_s)
            to_u = _move(sigma, sigma_u)
        steps.append(
            TCDStep(sigma, sigma_next, sigma_s, gammas[i], _move(sigma, sigma_s, scale), noise_scale, sigma_u, to_u)
        )
    return tuple(steps)
