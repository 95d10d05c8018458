"""A 1-D Gaussian mixture with its exact denoiser, for testing samplers against known statistics.

Data x0 ~ sum_k w_k N(mu_k, s_k^2), observed on the Gaussian path x = alpha * x0 + sigma * eps
(alpha = 1 for ComfyUI's VE form, alpha = 1 - sigma for the flow form). Then

    x | k            ~ N(alpha mu_k, v_k),   v_k = alpha^2 s_k^2 + sigma^2
    P(k | x)         ∝ w_k N(x; alpha mu_k, v_k)
    E[x0 | x, k]     = mu_k + alpha s_k^2 / v_k * (x - alpha mu_k)
    E[x0 | x]        = sum_k P(k | x) E[x0 | x, k]         (the exact, MSE-optimal denoiser)

and the law of alpha * x0 + sigma * eps is again a mixture, so its mean, variance and CDF are closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Alpha = Callable[[Tensor], Tensor]


def ve_alpha(sigma: Tensor) -> Tensor:
    """alpha(sigma) = 1: ComfyUI's VE latent x = x0 + sigma * eps."""
    return torch.ones_like(sigma)


def flow_alpha(sigma: Tensor) -> Tensor:
    """alpha(sigma) = 1 - sigma: the rectified-flow latent x = (1 - sigma) x0 + sigma * eps."""
    return 1.0 - sigma


@dataclass(frozen=True)
class GaussianMixture:
    """sum_k weights[k] * N(means[k], stds[k]^2), applied i.i.d. to every tensor element."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def _noisy(self, alpha: float, sigma: float) -> tuple[list[float], list[float]]:
        """Component means and standard deviations of alpha * x0 + sigma * eps."""
        means = [alpha * m for m in self.means]
        stds = [math.sqrt((alpha * s) ** 2 + sigma**2) for s in self.stds]
        return means, stds

    def mean(self, alpha: float = 1.0, sigma: float = 0.0) -> float:
        means, _ = self._noisy(alpha, sigma)
        return sum(w * m for w, m in zip(self.weights, means, strict=True))

    def var(self, alpha: float = 1.0, sigma: float = 0.0) -> float:
        """Law of total variance: E[Var(x | k)] + Var(E[x | k])."""
        means, stds = self._noisy(alpha, sigma)
        mu = self.mean(alpha, sigma)
        return sum(w * (s**2 + (m - mu) ** 2) for w, m, s in zip(self.weights, means, stds, strict=True))

    def cdf(self, x: float, alpha: float = 1.0, sigma: float = 0.0) -> float:
        """P(alpha * x0 + sigma * eps <= x) = sum_k w_k Phi((x - alpha mu_k) / v_k^(1/2))."""
        means, stds = self._noisy(alpha, sigma)
        return sum(
            w * 0.5 * math.erfc(-(x - m) / (s * math.sqrt(2.0)))
            for w, m, s in zip(self.weights, means, stds, strict=True)
        )

    def denoiser(self, alpha_of: Alpha) -> Callable[..., Tensor]:
        """The exact E[x0 | x] as a ComfyUI-style model ``model(x, sigma[batch]) -> denoised``.

        Per batch row, log P(k | x) is quadratic and E[x0 | x, k] linear in x, so the per-row
        coefficients are worked out once and each element costs a handful of operations.
        """
        log_w = torch.tensor(self.weights, dtype=torch.float64)[:, None].log()
        mu = torch.tensor(self.means, dtype=torch.float64)[:, None]
        var0 = torch.tensor(self.stds, dtype=torch.float64)[:, None] ** 2

        def model(x: Tensor, sigma: Tensor, **extra_args: object) -> Tensor:
            assert not extra_args, f"unexpected extra_args {extra_args}"
            assert sigma.shape == (x.shape[0],), "sigma must be given per batch element"
            s = sigma.to(torch.float64)[None, :]  # [component, batch row]
            a = alpha_of(s)
            v = a**2 * var0 + s**2  # Var(x | k)
            m = a * mu  # E[x | k]
            # log w_k N(x; m_k, v_k) = c0 + c1 x + c2 x^2;  E[x0 | x, k] = mu_k + g (x - m_k) = e0 + e1 x
            c0 = log_w - 0.5 * v.log() - 0.5 * m**2 / v
            c1, c2 = m / v, -0.5 / v
            e1 = a * var0 / v
            e0 = mu - e1 * m
            xf = x.to(torch.float64).reshape(x.shape[0], -1)
            cols = [t[..., None] for t in (c0, c1, c2, e0, e1)]  # [component, row, 1]
            if len(self.weights) == 2:  # P(k = 1 | x) = sigmoid(logit difference)
                d0, d1, d2, f0, f1 = (t[1] - t[0] for t in cols)
                p1 = torch.sigmoid(d0 + xf * (d1 + d2 * xf))
                denoised = cols[3][0] + cols[4][0] * xf + p1 * (f0 + f1 * xf)
            else:
                post = torch.softmax(cols[0] + xf * (cols[1] + cols[2] * xf), dim=0)
                denoised = (post * (cols[3] + cols[4] * xf)).sum(0)
            return denoised.reshape(x.shape).to(x.dtype)

        return model


def ode_map(model: Callable[..., Tensor], x: Tensor, sigma_from: Tensor, sigma_to: Tensor, nodes: int = 100) -> Tensor:
    """Solve the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma, row b of ``x`` from
    ``sigma_from[b]`` to ``sigma_to[b]``.

    The same ODE holds for both forms (VE: x = x0 + sigma eps; flow: x = (1 - sigma) x0 + sigma eps, whose
    velocity E[eps - x0 | x] is (x - D) / sigma). Classic RK4 on nodes geometric in sigma, where the
    dynamics are uniform; a target of 0 is reached by one last Euler step from 1e-6 (error O(1e-12)).
    Against the closed-form map of a single Gaussian, 100 nodes are exact to ~1e-7.
    """
    start = sigma_from.to(torch.float64)
    end = sigma_to.to(torch.float64).clamp(min=1e-6)
    fractions = torch.linspace(0.0, 1.0, nodes + 1, dtype=torch.float64)[:, None]
    grid = torch.exp(start.log() + (end.log() - start.log()) * fractions)  # [nodes + 1, rows]
    grid[0], grid[-1] = start, end
    y = x.to(torch.float64)

    def velocity(y: Tensor, sigma: Tensor) -> Tensor:
        return (y - model(y, sigma)) / sigma[:, None]

    for s0, s1 in zip(grid[:-1], grid[1:], strict=True):
        h = (s1 - s0)[:, None]
        k1 = velocity(y, s0)
        k2 = velocity(y + 0.5 * h * k1, s0 + 0.5 * h[:, 0])
        k3 = velocity(y + 0.5 * h * k2, s0 + 0.5 * h[:, 0])
        k4 = velocity(y + h * k3, s1)
        y = y + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y + (sigma_to.to(torch.float64) - end)[:, None] * velocity(y, end)


def interp(x: Tensor, lo: float, hi: float, values: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``values`` given on ``linspace(lo, hi, len(values))`` (linear beyond)."""
    n = len(values) - 1
    pos = (x.to(torch.float64) - lo) * (n / (hi - lo))
    idx = pos.floor().clamp(0, n - 1)
    frac = pos - idx
    idx = idx.long()
    return (values[idx] * (1.0 - frac) + values[idx + 1] * frac).to(x.dtype)
