"""sample_tcd against exact answers on a 1-D Gaussian mixture (every tensor element i.i.d.).

Two exact models, two kinds of reference:

* A trajectory-consistency oracle: on each step it returns the x0 estimate whose TCF(1) move
  ``alpha_s d + sigma_s (x - alpha_i d) / sigma_i`` lands exactly on the probability-flow ODE
  solution at the step's s (a perfectly distilled TCD model). SSS then keeps every marginal
  exact (move along the ODE to s, diffuse back to t_next), so for any gamma and step count the
  output must follow the data law: a test against the mixture itself.
* The exact posterior mean E[x0 | x]: a perfect diffusion model, but not a consistency model.
  Its one-step DDIM jump to s = (1 - gamma) t_next is not the ODE solution, and the jump does not
  get shorter with more steps, so SSS with it is biased towards low variance, and only slowly
  less so with more steps (gamma = 1, order 1: variance -0.43, -0.23, -0.17 at 8, 50, 200 steps;
  the algorithm, not a bug). Its output law is instead computed exactly by propagating the density
  of the (1-D, Markov) chain on a grid, written from docs/math.md independently of tcd_core, and
  the samples must match that law.

Each check allows K_SE standard errors estimated from the samples plus a small, measured
numerical allowance; negative controls (noise 1.3x or 1.05x too strong, gamma's noise removed) must fail it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
from comfyui_tcd_sampling import tcd_core
from torch import Tensor

from devkit.gaussian_mixture import GaussianMixture, flow_alpha, interp, ode_map, ve_alpha

# Asymmetric in weights, means and stds, with mean 0 and variance exactly 1 (0.4 * (0.35^2 + 1.05^2)
# + 0.6 * (0.6^2 + 0.7^2) = 1): ComfyUI's VE start sqrt(1 + sigma_max^2) * N(0, 1) then matches the
# true marginal at sigma_max in mean and variance, leaving only the mixture's higher cumulants as
# start error (skewness at sigma_max: 0.042 / 14.6^3 = 1.3e-5). The modes overlap at sigma ~ 0.5-1,
# where the sampler decides the mode weights (P(x0 < 0) = 0.4725 against 0.4 for the left mode).
MIX = GaussianMixture(weights=(0.4, 0.6), means=(-1.05, 0.7), stds=(0.35, 0.6))
TABLE = tcd_core.scaled_linear_sigmas()
BATCH, ELEMENTS = 256, 1024  # 262144 i.i.d. samples per run
K_SE = 4.0  # two-sided 6e-5 per check for a correct sampler

# The allowance added to K_SE standard errors, for (mean, variance, P(x < 0)). Neither reference
# has a discretisation error to allow for: the oracle makes SSS exact at any step count, and the
# propagated law includes the sampler's discretisation. What is left is numerical, measured:
# - the oracle's ODE map (RK4, 100 geometric nodes: 1e-7 against a Gaussian's closed form) and its
#   interpolation, plus the VE start's mismatch in the mixture's higher cumulants: the oracle's
#   propagated law is within 2.1e-5 of the data in every statistic (test_law_propagation_...);
# - the propagation grid: moments agree to 1e-15 and P(x < 0) to 2e-5 between 2001 and 4001 points;
# - 16 seeds x 262144 samples (4.2M) per case deviated by at most 1.8 SE (|delta| <= 6.7e-4) in
#   every case, float32 runs included: no bias is visible at 4e-4 resolution.
# 1e-4 covers the numerical part 5x and adds < 3% to the statistical part.
ALLOWANCE = (1e-4, 1e-4, 1e-4)

Model = Callable[..., Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """One intra-op thread: the same speed on an idle 2-core machine (~9 s for this file), and 4x
    faster than two spinning OpenMP threads when the cores are shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Form:
    """A latent form with its test schedule and the doc's rule for the denoise target sigma_s."""

    name: str
    space: tcd_core.NoiseSpace
    alpha_t: Callable[[Tensor], Tensor]
    sigmas: Tensor  # float64, strictly descending, ending in 0
    timesteps: tuple[int, ...] | None  # discrete form: the timestep of each nonzero sigma

    def alpha(self, sigma: float) -> float:
        return 1.0 if self.space.form is tcd_core.LatentForm.VE else 1.0 - sigma

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def start(self, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
        """VE: sqrt(1 + sigma_max^2) N(0, 1) (ComfyUI's max-denoise scaling); flow: N(0, 1) at sigma = 1."""
        z = torch.randn(BATCH, ELEMENTS, generator=generator, dtype=torch.float64)
        scale = math.sqrt(1.0 + self.sigmas[0].item() ** 2) if self.timesteps is not None else 1.0
        return (z * scale).to(dtype)

    def sigma_s(self, i: int, gamma: float) -> float:
        """docs/math.md 3 and 5: s = (1 - gamma) t_next, floored on the discrete grid (in float32, as
        diffusers computes it); t_next = 0 on the last step; never above sigma_next (nor sigma_i)."""
        sigma, sigma_next = self.sigmas[i].item(), self.sigmas[i + 1].item()
        if self.timesteps is None:
            return (1.0 - gamma) * sigma_next
        t_next = self.timesteps[i + 1] if i + 1 < self.steps else 0
        s = int(torch.floor(torch.tensor(1.0 - gamma, dtype=torch.float32) * t_next).item())
        return min(TABLE[s].item(), sigma_next if sigma_next > 0 else sigma)

    def final_scale(self, sigma_s: float) -> float:
        """The reference returns the VP latent at s = 0 on the last step: sqrt(alpha_bar) = (1 + sigma^2)^-1/2."""
        return 1.0 / math.sqrt(1.0 + sigma_s**2) if self.timesteps is not None else 1.0

    def target(self) -> tuple[float, float, float]:
        """Mean, variance and P(< 0) of the exact output: the data (flow); VE: the data at sigma_min, scaled."""
        if self.timesteps is None:
            return MIX.mean(), MIX.var(), MIX.cdf(0.0)
        sigma_min = TABLE[0].item()
        c = self.final_scale(sigma_min)
        return MIX.mean(c, c * sigma_min), MIX.var(c, c * sigma_min), MIX.cdf(0.0, c, c * sigma_min)


def _ve_form() -> Form:
    timesteps = tuple(tcd_core.tcd_timesteps(8))  # the reference's default grid: 999, 879, ..., 139
    sigmas = torch.cat([TABLE[list(timesteps)], TABLE.new_zeros(1)])
    return Form("ve", tcd_core.SD_SPACE, ve_alpha, sigmas, timesteps)


def _flow_form() -> Form:
    t = torch.linspace(1.0, 0.0, 9, dtype=torch.float64)
    sigmas = 3.0 * t / (1.0 + 2.0 * t)  # SD3's shift-3 schedule: denser steps at high noise
    return Form("flow", tcd_core.flow_space(), flow_alpha, sigmas, None)


FORMS = {"ve": _ve_form(), "flow": _flow_form()}


# --- running the sampler -----------------------------------------------------------------------


def seeded_noise(seed: int, factor: float = 1.0, dtype: torch.dtype = torch.float64) -> NoiseSampler:
    generator = torch.Generator().manual_seed(seed)

    def noise_sampler(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return (factor * torch.randn(BATCH, ELEMENTS, generator=generator, dtype=torch.float64)).to(dtype)

    return noise_sampler


def run(
    form: Form,
    model: Model,
    gamma: float,
    order: int = 1,
    noise_sampler: NoiseSampler | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    x = form.start(torch.Generator().manual_seed(seed), dtype)
    noise_sampler = seeded_noise(seed + 1, dtype=dtype) if noise_sampler is None else noise_sampler
    return tcd_core.sample_tcd(
        model,
        x,
        form.sigmas.to(dtype),
        disable=True,
        noise_sampler=noise_sampler,
        gamma=gamma,
        order=order,
        space=form.space,
    )


@dataclass(frozen=True)
class Deviation:
    """Sample statistic minus its reference, in absolute terms and against the tolerance."""

    name: str
    delta: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return abs(self.delta) <= self.tolerance

    def __str__(self) -> str:
        return f"{self.name}: {self.delta:+.5f} (tolerance {self.tolerance:.5f})"


def deviations(
    samples: Tensor, reference: tuple[float, float, float], allowance: tuple[float, float, float]
) -> list[Deviation]:
    """Mean, variance and P(x < 0) of the samples against the reference, each with tolerance
    K_SE * SE + allowance. SEs come from the samples: sqrt(var / N), sqrt((m4 - var^2) / N), sqrt(p (1 - p) / N).
    """
    y = samples.to(torch.float64).flatten()
    n = y.numel()
    mean = y.mean().item()
    centred = y - mean
    var = centred.square().mean().item()
    m4 = centred.pow(4).mean().item()
    below = (y < 0).to(torch.float64).mean().item()
    errors = (math.sqrt(var / n), math.sqrt((m4 - var * var) / n), math.sqrt(below * (1.0 - below) / n))
    values = (mean, var, below)
    names = ("mean", "variance", "P(x < 0)")
    return [
        Deviation(name, value - ref, K_SE * se + allow)
        for name, value, ref, se, allow in zip(names, values, reference, errors, allowance, strict=True)
    ]


def check(samples: Tensor, reference: tuple[float, float, float], allowance: tuple[float, float, float]) -> None:
    devs = deviations(samples, reference, allowance)
    assert torch.isfinite(samples).all()
    assert all(d.ok for d in devs), "; ".join(map(str, devs))


# --- the trajectory-consistency oracle ---------------------------------------------------------


@functools.cache
def consistency_oracle(form_name: str, gamma: float, points: int = 2001) -> Model:
    """A model whose TCF(1) move from each step's sigma_i lands on the exact ODE solution at sigma_s.

    The ODE flow map x_i -> x_s is precomputed on a grid of +-12 standard deviations of the marginal
    at sigma_i and interpolated; the returned d solves x_s = alpha_s d + sigma_s (x - alpha_i d) / sigma_i.
    It knows only the sigmas of the plan it was built for and fails on any other call.
    """
    form = FORMS[form_name]
    sigma = form.sigmas[:-1]
    sigma_s = torch.tensor([form.sigma_s(i, gamma) for i in range(form.steps)], dtype=torch.float64)
    half = torch.tensor([12.0 * math.sqrt(MIX.var(form.alpha(v), v)) for v in sigma.tolist()], dtype=torch.float64)
    grid = torch.linspace(-1.0, 1.0, points, dtype=torch.float64) * half[:, None]
    flows = ode_map(MIX.denoiser(form.alpha_t), grid, sigma, sigma_s)

    def model(x: Tensor, sigma_batch: Tensor, **extra_args: object) -> Tensor:
        assert not extra_args
        assert bool((sigma_batch == sigma_batch[0]).all())
        value = sigma_batch[0].item()
        matches = torch.nonzero((sigma - value).abs() <= 1e-6 * sigma).flatten().tolist()
        assert len(matches) == 1, f"the oracle was asked about sigma={value}, not a step of its plan"
        i = matches[0]
        x_s = interp(x, -half[i].item(), half[i].item(), flows[i])
        ratio = sigma_s[i].item() / sigma[i].item()
        return (x_s - ratio * x) / (form.alpha(sigma_s[i].item()) - form.alpha(sigma[i].item()) * ratio)

    return model


# --- the exact output law of SSS with the posterior-mean denoiser --------------------------------


def _midpoint(form: Form, sigma: float, sigma_s: float) -> float:
    """sigma at the midpoint in lambda = log(alpha / sigma) (docs/math.md 6; VE: sqrt(sigma sigma_s));
    a flow step from sigma = 1 (lambda = -inf) takes the geometric mean, as tcd_core does."""
    if form.alpha(sigma) <= 0.0:
        return math.sqrt(sigma * sigma_s)
    lam = 0.5 * (math.log(form.alpha(sigma) / sigma) + math.log(form.alpha(sigma_s) / sigma_s))
    return math.exp(-lam) if form.timesteps is not None else 1.0 / (1.0 + math.exp(lam))


def _move(form: Form, x: Tensor, d: Tensor, sigma: float, target: float) -> Tensor:
    """TCF(1) / DDIM: alpha_t d + sigma_t (x - alpha_i d) / sigma_i."""
    return form.alpha(target) * d + target * (x - form.alpha(sigma) * d) / sigma


def sss_law(form: Form, model: Model, gamma: float, order: int, points: int = 2001) -> tuple[float, float, float]:
    """Mean, variance and P(< 0) of SSS's output, by propagating its 1-D law on a grid.

    The law is held as weights w_j on a uniform grid y_j plus the deterministic map F applied since
    the last noise draw. A noise draw of scale n turns it into w'_k = sum_j w_j N(y'_k; F(y_j), n^2) on
    a fresh grid (trapezoid quadrature of a smooth integrand: spectrally accurate). The steps follow
    docs/math.md 3-6, not tcd_core.
    """
    sigmas = form.sigmas.tolist()
    start_std = math.sqrt(1.0 + sigmas[0] ** 2) if form.timesteps is not None else 1.0
    y = torch.linspace(-12.0 * start_std, 12.0 * start_std, points, dtype=torch.float64)
    w = torch.exp(-0.5 * (y / start_std) ** 2)
    f = y.clone()

    def denoise(x: Tensor, sigma: float) -> Tensor:
        return model(x[None, :], x.new_full((1,), sigma))[0]

    for i in range(form.steps):
        sigma, sigma_next, sigma_s = sigmas[i], sigmas[i + 1], form.sigma_s(i, gamma)
        d = denoise(f, sigma)
        if order == 2 and sigma_s > 0.0:
            sigma_u = _midpoint(form, sigma, sigma_s)
            d = denoise(_move(form, f, d, sigma, sigma_u), sigma_u)
        x_s = _move(form, f, d, sigma, sigma_s)
        if sigma_next == 0.0:
            f = x_s * form.final_scale(sigma_s)
            continue
        back = form.alpha(sigma_next) / form.alpha(sigma_s)
        f = back * x_s
        noise = math.sqrt(max(sigma_next**2 - (back * sigma_s) ** 2, 0.0)) if gamma > 0.0 else 0.0
        if noise > 0.0:
            live = w > 1e-16 * w.max()
            y = torch.linspace(
                f[live].min().item() - 10 * noise, f[live].max().item() + 10 * noise, points, dtype=torch.float64
            )
            w = (w[None, :] * torch.exp(-0.5 * ((y[:, None] - f[None, :]) / noise) ** 2)).sum(1)
            f, w = y, w / w.sum()
    w = w / w.sum()
    mean = (w * f).sum().item()
    var = (w * (f - mean) ** 2).sum().item()
    # P(F(Y) < 0): F is increasing (each step's map is), so cut the trapezoid CDF where F crosses 0.
    assert bool((f.diff() > 0).all()), "the sampler's deterministic map should be increasing"
    k = int((f < 0).sum().item())
    frac = (0.0 - f[k - 1]) / (f[k] - f[k - 1])
    below = (w[:k].sum() - 0.5 * w[k - 1] + frac * 0.5 * (w[k - 1] + w[k])).item()
    return mean, var, below


@functools.cache
def posterior_law(form_name: str, gamma: float, order: int) -> tuple[float, float, float]:
    form = FORMS[form_name]
    return sss_law(form, MIX.denoiser(form.alpha_t), gamma, order)


def zero_noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
    return torch.zeros(BATCH, ELEMENTS, dtype=torch.float64)


FAULTS: dict[str, Callable[[], NoiseSampler]] = {
    "noise-x1.3": lambda: seeded_noise(1, factor=1.3),
    "gamma-noise-removed": lambda: zero_noise,
    "noise-x1.05": lambda: seeded_noise(1, factor=1.05),  # variance off by 5-8x its tolerance
}


# --- tests: a perfect TCD model must reproduce the data ------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_consistency_oracle_samples_the_data(form_name: str, gamma: float) -> None:
    """Exact trajectory points + exact renoising keep every marginal exact: output ~ the mixture."""
    form = FORMS[form_name]
    check(run(form, consistency_oracle(form_name, gamma), gamma), form.target(), ALLOWANCE)


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("gamma", [0.3, 1.0])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_consistency_oracle_check_catches_wrong_noise(form_name: str, gamma: float, fault: str) -> None:
    """Negative control: the data check above must fail when the renoising is wrong."""
    form = FORMS[form_name]
    samples = run(form, consistency_oracle(form_name, gamma), gamma, noise_sampler=FAULTS[fault]())
    devs = deviations(samples, form.target(), ALLOWANCE)
    assert not all(d.ok for d in devs), "; ".join(map(str, devs))


@pytest.mark.parametrize("gamma", [0.3, 1.0])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_law_propagation_is_exact_for_the_oracle(form_name: str, gamma: float) -> None:
    """Self-test of sss_law: with the oracle as model it must give the data's statistics."""
    form = FORMS[form_name]
    law = sss_law(form, consistency_oracle(form_name, gamma), gamma, 1)
    for value, ref, allow in zip(law, form.target(), ALLOWANCE, strict=True):
        assert abs(value - ref) <= allow


# --- tests: with the exact posterior mean, samples follow SSS's exact law -------------------------


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_posterior_mean_samples_follow_the_exact_sss_law(form_name: str, gamma: float, order: int) -> None:
    """Every coefficient of the step (s, the TCF move, order 2's midpoint, renoise, final scale) shows."""
    form = FORMS[form_name]
    samples = run(form, MIX.denoiser(form.alpha_t), gamma, order)
    check(samples, posterior_law(form_name, gamma, order), ALLOWANCE)


@pytest.mark.parametrize("fault", list(FAULTS)[:2])
@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("gamma", [0.3, 1.0])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_posterior_mean_check_catches_wrong_noise(form_name: str, gamma: float, order: int, fault: str) -> None:
    """Negative control: the law check above must fail when the renoising is wrong."""
    form = FORMS[form_name]
    samples = run(form, MIX.denoiser(form.alpha_t), gamma, order, noise_sampler=FAULTS[fault]())
    devs = deviations(samples, posterior_law(form_name, gamma, order), ALLOWANCE)
    assert not all(d.ok for d in devs), "; ".join(map(str, devs))


# --- float32, and gamma = 0 ----------------------------------------------------------------------


@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_float32_runs_pass_the_same_checks(form_name: str) -> None:
    """Latents, sigmas, noise and model output all in float32 (statistics are taken in float64)."""
    form = FORMS[form_name]
    oracle_run = run(form, consistency_oracle(form_name, 0.3), 0.3, dtype=torch.float32)
    assert oracle_run.dtype == torch.float32
    check(oracle_run, form.target(), ALLOWANCE)
    posterior_run = run(form, MIX.denoiser(form.alpha_t), 0.3, 2, dtype=torch.float32)
    assert posterior_run.dtype == torch.float32
    check(posterior_run, posterior_law(form_name, 0.3, 2), ALLOWANCE)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("form_name", ["ve", "flow"])
def test_gamma_zero_never_draws_noise(form_name: str, order: int) -> None:
    """gamma = 0 is deterministic DDIM: bit-identical output whatever the noise sampler, which is
    never called (nor is the global RNG touched when none is given)."""
    form = FORMS[form_name]
    model = MIX.denoiser(form.alpha_t)
    x = form.start(torch.Generator().manual_seed(7))[:8]
    calls: list[tuple[float, float]] = []

    def counting(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        calls.append((float(sigma), float(sigma_next)))
        return torch.randn_like(x)

    def raising(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        raise AssertionError("gamma = 0 must not draw noise")

    other_seed = torch.Generator().manual_seed(123)
    samplers: list[NoiseSampler | None] = [
        lambda sigma, sigma_next: torch.zeros_like(x),
        lambda sigma, sigma_next: torch.randn(x.shape, generator=other_seed, dtype=x.dtype),
        raising,
        counting,
        None,
    ]
    rng_state = torch.random.get_rng_state()
    outputs = [
        tcd_core.sample_tcd(
            model, x, form.sigmas, disable=True, noise_sampler=sampler, gamma=0.0, order=order, space=form.space
        )
        for sampler in samplers
    ]
    assert calls == []
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])
