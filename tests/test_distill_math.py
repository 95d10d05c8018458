"""tcd_core.distill against exact answers: the grid draws, the teacher step, TCF(1) and the loss of Eq. 29.

The exact-teacher tests use Gaussian data, x0 ~ N(mu, sd^2) in every element, on the VP path
x_t = a_t x0 + s_t eps. Then x_t ~ N(a_t mu, v_t) with v_t = a_t^2 sd^2 + s_t^2, and in closed form

    E[x0 | x_t]           = mu + a_t sd^2 / v_t (x_t - a_t mu)           (the exact teacher)
    ODE map  t -> s       : x_s = a_s mu + sqrt(v_s / v_t) (x_t - a_t mu)   (probability flow: the only
                            monotone affine map carrying N(a_t mu, v_t) to N(a_s mu, v_s))
    teacher DDIM  t -> s  : x_s = a_s mu + (a_s a_t sd^2 + s_s s_t) / v_t (x_t - a_t mu)

By Cauchy-Schwarz the DDIM factor is below the ODE factor unless (a_s sd, s_s) and (a_t sd, s_t)
are parallel, so even an exact teacher has a one-step discretisation error on Gaussian data; it
vanishes only for a point mass (sd = 0), where E[x0 | x_t] = mu is constant along the trajectory.

The "exact trajectory map" student is an oracle that, given the per-sample target time s, outputs
the eps whose TCF(1) jump a_s x0 + s_s eps lands on the ODE map (a perfectly distilled TCD model).
Since the map composes (t_{n+k} -> t_n -> s), the two sides of Eq. 29 then differ by exactly the
teacher's one-step error at t_n carried to s by the ODE map: sqrt(v_s / v_{t_n}) * e. That is the
sharp form of "the exact map's loss equals the teacher's discretisation error": at s = t_n it is
the error itself, and for a point mass it is 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from comfyui_tcd_sampling import tcd_core
from comfyui_tcd_sampling.tcd_core import TCDInputError
from comfyui_tcd_sampling.tcd_core.distill import (
    EMA,
    DistillConfig,
    consistency_output,
    ddim_grid,
    distance,
    distill_loss,
    distill_terms,
    draw_training_points,
    lcm_boundary_scalings,
    split_prediction,
    teacher_ddim_step,
)
from torch import Tensor, nn

AC = tcd_core.scaled_linear_alphas_cumprod()  # float64


def a_(t: Tensor) -> Tensor:
    return AC[t].sqrt()


def s_(t: Tensor) -> Tensor:
    return (1.0 - AC[t]).sqrt()


def col(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


# ---------------------------------------------------------------- the schedule and the grid


def test_alphas_cumprod_is_sds_scaled_linear_schedule() -> None:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert AC.dtype == torch.float64 and AC.shape == (1000,)
    assert torch.allclose(AC[[0, 499, 999]], torch.stack([torch.prod(1 - betas[: i + 1]) for i in (0, 499, 999)]))
    assert abs(float(AC[0]) - (1 - 0.00085)) < 1e-15 and 0.0046 < float(AC[999]) < 0.0047


def test_grid_is_lcms_skipping_grid() -> None:
    grid = ddim_grid(50, 1000)
    assert grid.tolist() == list(range(19, 1000, 20))
    assert DistillConfig().skip == 20
    assert ddim_grid(8, 1000).tolist() == [124 * (i + 1) + i for i in range(8)]  # k = 125: 124, 249, ...


@pytest.mark.parametrize("n", [50, 8, 1])
def test_training_points_lie_on_the_grid(n: int) -> None:
    cfg = DistillConfig(num_ddim_timesteps=n, guidance_min=2.0, guidance_max=5.0)
    p = draw_training_points(cfg, 4096, torch.Generator().manual_seed(1))
    k = 1000 // n
    assert p.index.dtype == p.t_start.dtype == p.t_prev.dtype == p.s.dtype == torch.int64
    assert int(p.index.min()) >= 0 and int(p.index.max()) <= n - 1
    assert torch.equal(p.t_start, (p.index + 1) * k - 1)
    assert torch.equal(p.t_prev, (p.t_start - k).clamp(min=0))
    assert bool(((p.s >= 0) & (p.s <= p.t_prev)).all())
    on_grid = (p.s == 0) | ((p.s + 1) % k == 0)
    assert bool(on_grid.all())
    assert p.w.dtype == torch.float32 and float(p.w.min()) >= 2.0 and float(p.w.max()) < 5.0


def _zero_share(points: tcd_core.TrainingPoints) -> float:
    return float((points.s == 0).double().mean())


def _se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


BIG = 200_000
HARMONIC_50 = sum(1.0 / (i + 1) for i in range(50)) / 50  # E[1 / (i + 1)], i ~ U{0..49}


def test_uniform_rule_draws_j_uniformly_up_to_i() -> None:
    p = draw_training_points(DistillConfig(), BIG, torch.Generator().manual_seed(2))
    counts = torch.bincount(p.index, minlength=50).double()
    assert float((counts - BIG / 50).abs().max()) < 5 * math.sqrt(BIG / 50)
    j = torch.where(p.s == 0, torch.zeros_like(p.s), (p.s + 1) // 20)  # s = tau_j - k = 20 j - 1
    assert bool((j <= p.index).all())
    # j / (i + 1) is uniform on the i + 1 points {0, 1/(i+1), ...}: P(j = 0) = P(j = i) = E[1/(i+1)].
    for share in (float((j == 0).double().mean()), float((j == p.index).double().mean())):
        assert abs(share - HARMONIC_50) < 5 * _se(HARMONIC_50, BIG)
    frac = ((j.double() + 0.5) / (p.index + 1).double()).mean()
    assert abs(float(frac) - 0.5) < 0.005
    # s = t_n is drawn (the boundary case where TCF(1) is the identity), as is every grid point below it.
    top = p.index == 49
    assert set(torch.unique(p.s[top]).tolist()) == {0, *range(19, 980, 20)}


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_uniform_plus_zero_rule(share: float) -> None:
    cfg = DistillConfig(s_rule="uniform+zero", s_zero_share=share)
    p = draw_training_points(cfg, BIG, torch.Generator().manual_seed(3))
    expected = share + (1 - share) * HARMONIC_50
    assert abs(_zero_share(p) - expected) < 5 * _se(expected, BIG) + 1e-12


def test_uniform_plus_zero_ramp_rule() -> None:
    cfg = DistillConfig(s_rule="uniform+zero-ramp", s_zero_share=0.5)
    p = draw_training_points(cfg, BIG, torch.Generator().manual_seed(4))
    ramp = 0.5 * p.index.double() / 49
    expected = float((ramp + (1 - ramp) / (p.index + 1).double()).mean())
    assert abs(_zero_share(p) - expected) < 5 * _se(expected, BIG)
    top, low = p.index == 49, p.index == 1
    assert abs(float((p.s[top] == 0).double().mean()) - (0.5 + 0.5 / 50)) < 0.03
    assert abs(float((p.s[low] == 0).double().mean()) - (0.5 / 49 + (1 - 0.5 / 49) / 2)) < 0.03


def test_lcm_mode_targets_s_zero_and_w_is_uniform() -> None:
    p = draw_training_points(DistillConfig(method="lcm"), BIG, torch.Generator().manual_seed(5))
    assert bool((p.s == 0).all())
    assert abs(float(p.w.double().mean()) - 9.0) < 5 * 12 / math.sqrt(12 * BIG)


def test_points_are_reproducible_and_move_to_device() -> None:
    cfg = DistillConfig(s_rule="uniform+zero")
    p1 = draw_training_points(cfg, 64, torch.Generator().manual_seed(7), device="cpu")
    p2 = draw_training_points(cfg, 64, torch.Generator().manual_seed(7), device=torch.device("cpu"))
    p3 = draw_training_points(cfg, 64, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert not torch.equal(p1.index, p3.index)


# ---------------------------------------------------------------- TCF(1) and the conversions


def test_v_prediction_converts_to_the_same_x0_and_eps() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 19, 250, 500, 900, 999])
    xt = col(a_(t), x0) * x0 + col(s_(t), x0) * eps
    v = col(a_(t), x0) * eps - col(s_(t), x0) * x0
    for out, pred in ((eps, "eps"), (v, "v")):
        x0_hat, eps_hat = split_prediction(out, xt, t, AC, pred)
        assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)


@pytest.mark.parametrize("bad", ["sample", "epsilon", "v_prediction", "velocity", ""])
def test_other_prediction_types_are_refused_by_name(bad: str) -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(TCDInputError, match=r"prediction_type must be one of 'eps', 'v', 'flow', 'x0', got"):
        split_prediction(x, x, torch.tensor([5]), AC, bad)
    with pytest.raises(TCDInputError, match="prediction_type"):
        DistillConfig(prediction_type=bad)


def test_flow_output_on_a_vp_schedule_is_refused_naming_the_path() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(TCDInputError, match=r"prediction_type must be one of 'eps', 'v', 'x0' on a VP schedule"):
        split_prediction(x, x, torch.tensor([5]), AC, "flow")


def test_tcf1_is_the_ddim_jump_and_the_identity_at_s_equal_t() -> None:
    g = torch.Generator().manual_seed(1)
    xt, out = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 519, 39, 0])
    cfg = DistillConfig()
    assert torch.allclose(consistency_output(cfg, AC, out, xt, t, t), xt, atol=1e-12)
    s = torch.tensor([0, 259, 19, 0])
    x0 = (xt - col(s_(t), xt) * out) / col(a_(t), xt)
    expected = col(a_(s), xt) * x0 + col(s_(s), xt) * out
    assert torch.allclose(consistency_output(cfg, AC, out, xt, t, s), expected, atol=1e-12)


def test_lcm_boundary_scalings() -> None:
    t = torch.tensor([0, 1, 19, 999])
    c_skip, c_out = lcm_boundary_scalings(t)
    t = t.double()
    assert c_skip[0] == 1.0 and c_out[0] == 0.0
    assert torch.allclose(c_skip, 0.25 / ((10.0 * t) ** 2 + 0.25))
    assert torch.allclose(c_out, 10.0 * t / ((10.0 * t) ** 2 + 0.25).sqrt())
    assert float(c_skip[3]) < 1e-6 and float(c_out[3]) > 0.99999  # far from 0: f ~ the x0 prediction
    c_skip_2, c_out_2 = lcm_boundary_scalings(t, timestep_scaling=2.0, sigma_data=0.25)
    assert torch.allclose(c_skip_2, 0.0625 / ((2.0 * t) ** 2 + 0.0625))
    assert torch.allclose(c_out_2, 2.0 * t / ((2.0 * t) ** 2 + 0.0625).sqrt())


def test_distance_matches_lcms_pseudo_huber_and_mse() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    huber = distance(DistillConfig(loss="huber", huber_c=0.001), a, b)
    assert torch.allclose(huber, torch.mean(torch.sqrt((a - b) ** 2 + 0.001**2) - 0.001), rtol=1e-6)
    assert torch.allclose(distance(DistillConfig(loss="l2"), a, b), nn.functional.mse_loss(a, b), rtol=1e-6)
    assert distance(DistillConfig(loss="huber"), a, a) == 0.0 == distance(DistillConfig(), a, a)
    per_sample = distance(DistillConfig(loss="l2"), a, b, reduction="none")
    assert per_sample.shape == (3,) and torch.allclose(per_sample, ((a - b) ** 2).mean(dim=(1, 2)))
    with pytest.raises(TCDInputError, match="reduction must be one of 'mean', 'none'"):
        distance(DistillConfig(), a, b, reduction="sum")


# ---------------------------------------------------------------- the exact teacher on Gaussian data


class GaussianData:
    """x0 ~ N(mean, sd^2) per element; ``mean`` may differ per condition (a tensor indexed by cond)."""

    def __init__(self, sd: float) -> None:
        self.sd = sd

    def v(self, t: Tensor) -> Tensor:
        return a_(t) ** 2 * self.sd**2 + s_(t) ** 2

    def posterior_mean(self, x: Tensor, t: Tensor, mu: float) -> Tensor:
        a, v = col(a_(t), x), col(self.v(t), x)
        return mu + a * self.sd**2 / v * (x - a * mu)

    def ode_map(self, x: Tensor, t: Tensor, s: Tensor, mu: float) -> Tensor:
        return col(a_(s), x) * mu + col((self.v(s) / self.v(t)).sqrt(), x) * (x - col(a_(t), x) * mu)

    def ddim_factor(self, t: Tensor, s: Tensor) -> Tensor:
        return (a_(s) * a_(t) * self.sd**2 + s_(s) * s_(t)) / self.v(t)

    def teacher(self, prediction: str = "eps") -> Callable[[Tensor, Tensor, float], Tensor]:
        """The exact denoiser as a network output; cond is the data mean."""

        def model(x: Tensor, t: Tensor, mu: float) -> Tensor:
            x0 = self.posterior_mean(x, t, mu)
            return _as_output(x, t, x0, prediction)

        return model

    def trajectory_oracle(self, s: Tensor, prediction: str = "eps") -> Callable[[Tensor, Tensor, float], Tensor]:
        """The perfect TCD student for target times ``s``: its TCF(1) jump t -> s is the ODE map."""

        def model(x: Tensor, t: Tensor, mu: float) -> Tensor:
            a_t, s_t, a_s, s_s = (col(f(u), x) for f, u in ((a_, t), (s_, t), (a_, s), (s_, s)))
            lands = self.ode_map(x, t, s, mu)
            denom = a_s - s_s * a_t / s_t
            same = col((t == s).double(), x) > 0  # s = t: TCF(1) is the identity whatever x0 is
            x0 = torch.where(same, self.posterior_mean(x, t, mu), (lands - s_s / s_t * x) / denom.where(~same, 1.0))
            return _as_output(x, t, x0, prediction)

        return model


def _as_output(x: Tensor, t: Tensor, x0: Tensor, prediction: str) -> Tensor:
    a, s = col(a_(t), x), col(s_(t), x)
    eps = (x - a * x0) / s
    return eps if prediction == "eps" else a * eps - s * x0


def test_closed_form_ode_map_solves_the_probability_flow_ode() -> None:
    """In DDIM's variables y = x / a, sigma = s / a the PF-ODE is dy/dsigma = eps_hat(x) (exact teacher)."""
    data, c = GaussianData(0.8), torch.tensor([[0.7, -1.9]], dtype=torch.float64)
    sig = torch.tensor([0.05, 0.4, 2.0, 9.0], dtype=torch.float64)

    def y_of(sigma: Tensor) -> Tensor:  # the closed-form trajectory through x = a mu + sqrt(v) c
        return MU + (data.sd**2 + sigma[:, None] ** 2).sqrt() * c

    h = 1e-5
    dy = (y_of(sig + h) - y_of(sig - h)) / (2 * h)
    a = 1 / (1 + sig[:, None] ** 2).sqrt()
    s, x = sig[:, None] * a, y_of(sig) * a
    x0 = MU + a * data.sd**2 / (a**2 * data.sd**2 + s**2) * (x - a * MU)
    assert torch.allclose(dy, (x - a * x0) / s, atol=1e-8)
    # and the map of the test is that trajectory: x_s - a_s mu = sqrt(v_s / v_t) (x_t - a_t mu)
    t, u = torch.tensor([999, 500]), torch.tensor([19, 0])
    x_t = a_(t)[:, None] * MU + data.v(t).sqrt()[:, None] * c
    assert torch.allclose(data.ode_map(x_t, t, u, MU), a_(u)[:, None] * MU + data.v(u).sqrt()[:, None] * c)


UNGUIDED = dict(guidance_min=0.0, guidance_max=0.0)
MU = 0.3


def _gaussian_batch(batch: int, elements: int, sd: float, seed: int, cfg: DistillConfig):
    g = torch.Generator().manual_seed(seed)
    points = draw_training_points(cfg, batch, g)
    x0 = MU + sd * torch.randn(batch, elements, generator=g, dtype=torch.float64)
    noise = torch.randn(batch, elements, generator=g, dtype=torch.float64)
    return points, x0, noise


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sd", [0.0, 0.5, 1.3])
def test_exact_trajectory_map_loss_is_the_teachers_one_step_error(sd: float, prediction: str) -> None:
    data = GaussianData(sd)
    cfg = DistillConfig(prediction_type=prediction, loss="l2", **UNGUIDED)
    points, x0, noise = _gaussian_batch(64, 2048, sd, seed=11, cfg=cfg)
    oracle = data.trajectory_oracle(points.s, prediction)
    terms = distill_terms(cfg, AC, x0, noise, points, oracle, data.teacher(prediction), oracle, MU)

    # Independently, in closed form: start, the teacher's DDIM step and the exact ODE point at t_n.
    x_start = col(a_(points.t_start), x0) * x0 + col(s_(points.t_start), x0) * noise
    centred = x_start - col(a_(points.t_start), x0) * MU
    teacher_prev = col(a_(points.t_prev), x0) * MU + col(data.ddim_factor(points.t_start, points.t_prev), x0) * centred
    exact_prev = data.ode_map(x_start, points.t_start, points.t_prev, MU)
    one_step_error = exact_prev - teacher_prev
    carried = col((data.v(points.s) / data.v(points.t_prev)).sqrt(), x0) * one_step_error

    assert torch.allclose(terms.x_prev, teacher_prev, atol=1e-10)
    assert torch.allclose(terms.student, data.ode_map(x_start, points.t_start, points.s, MU), atol=1e-9)
    assert torch.allclose(terms.student - terms.target, carried, atol=1e-9)
    loss = distill_loss(cfg, AC, x0, noise, points, oracle, data.teacher(prediction), oracle, MU)
    expected = (carried**2).mean()
    assert torch.allclose(loss, expected, rtol=1e-8, atol=1e-18)
    at_tn = points.s == points.t_prev  # there the loss is the one-step error itself
    assert int(at_tn.sum()) > 0
    assert torch.allclose((terms.student - terms.target)[at_tn], one_step_error[at_tn], atol=1e-9)
    if sd == 0.0:
        assert float(loss) < 1e-20  # a point mass: DDIM is exact, so is the distilled map
    else:
        # Not vacuous: the teacher's one-step error is far above the tolerances used here.
        assert float(one_step_error.abs().max()) > 1e-2 and float(expected) > 1e-7


def test_perturbed_student_has_more_loss() -> None:
    data = GaussianData(0.5)
    cfg = DistillConfig(loss="huber", **UNGUIDED)
    points, x0, noise = _gaussian_batch(64, 2048, 0.5, seed=12, cfg=cfg)
    oracle = data.trajectory_oracle(points.s)
    exact = distill_terms(cfg, AC, x0, noise, points, oracle, data.teacher(), oracle, MU)
    base = distance(cfg, exact.student, exact.target)
    for bias, scale in ((0.05, 1.0), (0.0, 1.05), (-0.02, 0.97)):

        def perturbed(x: Tensor, t: Tensor, mu: float, bias: float = bias, scale: float = scale) -> Tensor:
            return scale * oracle(x, t, mu) + bias

        terms = distill_terms(cfg, AC, x0, noise, points, perturbed, data.teacher(), perturbed, MU)
        assert distance(cfg, terms.student, terms.target) > 1.2 * base


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guided_teacher_step_is_lcms_cfg_form(prediction: str) -> None:
    data = GaussianData(0.7)
    cfg = DistillConfig(prediction_type=prediction, guidance_min=1.0, guidance_max=8.0)
    points, x0, noise = _gaussian_batch(16, 64, 0.7, seed=13, cfg=cfg)
    x_start = col(a_(points.t_start), x0) * x0 + col(s_(points.t_start), x0) * noise
    calls: list[float] = []

    def teacher(x: Tensor, t: Tensor, mu: float) -> Tensor:
        calls.append(mu)
        assert not torch.is_grad_enabled()
        return data.teacher(prediction)(x, t, mu)

    got = teacher_ddim_step(cfg, AC, x_start, points, teacher, 0.3, -0.4)
    assert sorted(calls) == [-0.4, 0.3]
    w = col(points.w.double(), x0)
    a, s = col(a_(points.t_start), x0), col(s_(points.t_start), x0)
    x0_c, x0_u = data.posterior_mean(x_start, points.t_start, 0.3), data.posterior_mean(x_start, points.t_start, -0.4)
    x0_w = (1 + w) * x0_c - w * x0_u
    eps_w = (1 + w) * (x_start - a * x0_c) / s - w * (x_start - a * x0_u) / s
    expected = col(a_(points.t_prev), x0) * x0_w + col(s_(points.t_prev), x0) * eps_w
    assert torch.allclose(got, expected, atol=1e-10)

    calls.clear()  # Algorithm 1: range 0..0, or no uncond -> one forward, the plain DDIM step
    unguided = DistillConfig(prediction_type=prediction, **UNGUIDED)
    plain = teacher_ddim_step(unguided, AC, x_start, points, teacher, 0.3, -0.4)
    assert calls == [0.3]
    no_uncond = teacher_ddim_step(cfg, AC, x_start, points, teacher, 0.3, None)
    ddim = col(a_(points.t_prev), x0) * x0_c + col(s_(points.t_prev), x0) * (x_start - a * x0_c) / s
    assert torch.allclose(plain, ddim, atol=1e-10) and torch.allclose(no_uncond, ddim, atol=1e-10)


def test_target_at_s_equal_t_n_is_the_teacher_point() -> None:
    """TCF(1)'s boundary condition: f(x, t_n, t_n) = x, so the target there is x̂_{t_n} itself."""
    net = TinyEps().double()
    cfg = DistillConfig()
    points, x0, noise, cond, uncond = _net_batch(cfg, seed=3, batch=64)
    terms = distill_terms(cfg, AC, x0, noise, points, net, net, net, cond, uncond)
    same = points.s == points.t_prev
    assert int(same.sum()) > 0
    assert torch.allclose(terms.target[same], terms.x_prev[same], atol=1e-12)


# ---------------------------------------------------------------- a tiny network: gradients, weights, seeds


class TinyEps(nn.Module):
    """A tiny conditional eps network: conv, timestep and cond embedding, conv; plus a LoRA-style adapter."""

    def __init__(self, channels: int = 4, width: int = 16, cond_dim: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.time = nn.Linear(16, width)
        self.cond = nn.Linear(cond_dim, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.lora_down = nn.Parameter(torch.zeros(2, width))
        self.lora_up = nn.Parameter(torch.zeros(width, 2))
        self.adapter_on = True

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, dtype=x.dtype) / 8)
        emb = t.to(x.dtype)[:, None] * freqs[None]
        emb = torch.cat([emb.sin(), emb.cos()], dim=1)
        h = self.inp(x) + (self.time(emb) + self.cond(cond))[:, :, None, None]
        h = torch.nn.functional.silu(h)
        if self.adapter_on:
            h = h + torch.einsum("bchw,rc,dr->bdhw", h, self.lora_down, self.lora_up)
        return self.out(h)


def _lora_net(seed: int = 0) -> TinyEps:
    torch.manual_seed(seed)
    net = TinyEps().double()
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("lora"))
    with torch.no_grad():
        net.lora_down.normal_(0, 0.3)
        net.lora_up.normal_(0, 0.3)
    return net


def _adapters(net: TinyEps, on: bool) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def model(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        net.adapter_on = on
        try:
            return net(x, t, cond)
        finally:
            net.adapter_on = True

    return model


def _net_batch(cfg: DistillConfig, seed: int, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    points = draw_training_points(cfg, batch, g)
    x0 = torch.randn(batch, 4, 6, 6, generator=g, dtype=torch.float64)
    noise = torch.randn(batch, 4, 6, 6, generator=g, dtype=torch.float64)
    cond = torch.randn(batch, 8, generator=g, dtype=torch.float64)
    return points, x0, noise, cond, torch.zeros_like(cond)


@pytest.mark.parametrize("method", ["tcd", "lcm"])
def test_gradient_reaches_only_the_students_trainable_weights(method: str) -> None:
    net = _lora_net()
    separate_teacher = copy.deepcopy(net).requires_grad_(True)  # even a grad-enabled teacher gets none
    cfg = DistillConfig(method=method)
    points, x0, noise, cond, uncond = _net_batch(cfg, seed=1)
    student, target = _adapters(net, True), _adapters(net, True)
    loss = distill_loss(cfg, AC, x0, noise, points, student, separate_teacher, target, cond, uncond)
    loss.backward()
    assert loss.requires_grad and loss.item() > 0
    assert all(p.grad is None for p in separate_teacher.parameters())
    for name, p in net.named_parameters():
        if name.startswith("lora"):
            assert p.grad is not None and float(p.grad.abs().max()) > 0, name
        else:
            assert p.grad is None, name
    # Stop-grad: the gradient is that of d(f_student, constant target); the target's dependence on the
    # adapter (same weights) contributes nothing.
    grads = [net.lora_down.grad.clone(), net.lora_up.grad.clone()]
    net.zero_grad(set_to_none=True)
    terms = distill_terms(cfg, AC, x0, noise, points, student, separate_teacher, target, cond, uncond)
    assert not terms.target.requires_grad and not terms.x_prev.requires_grad
    distance(cfg, terms.student, terms.target.clone()).backward()
    assert torch.allclose(net.lora_down.grad, grads[0]) and torch.allclose(net.lora_up.grad, grads[1])


def test_teacher_weights_are_bit_identical_after_an_optimizer_step() -> None:
    net = _lora_net()
    frozen_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("lora")}
    lora_before = net.lora_up.detach().clone()
    cfg = DistillConfig()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    for step in range(2):
        points, x0, noise, cond, uncond = _net_batch(cfg, seed=10 + step)
        teacher = _adapters(net, False)  # the same network with the adapter off: one copy of the weights
        loss = distill_loss(
            cfg, AC, x0, noise, points, _adapters(net, True), teacher, _adapters(net, True), cond, uncond
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())
    assert not torch.equal(net.lora_up.detach(), lora_before)


@pytest.mark.parametrize("method", ["tcd", "lcm"])
def test_same_seed_same_loss(method: str) -> None:
    cfg = DistillConfig(method=method, s_rule="uniform+zero")
    net = _lora_net()
    losses = []
    for seed in (21, 21, 22):
        points, x0, noise, cond, uncond = _net_batch(cfg, seed=seed)
        losses.append(distill_loss(cfg, AC, x0, noise, points, net, _adapters(net, False), net, cond, uncond).item())
    assert losses[0] == losses[1] and losses[0] != losses[2]


def _as_v(model: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The same denoiser expressed as v = a_t eps - s_t x0."""

    def v_model(x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        eps = model(x, t, cond)
        a, s = col(a_(t), x), col(s_(t), x)
        return a * eps - s * (x - s * eps) / a

    return v_model


@pytest.mark.parametrize("method", ["tcd", "lcm"])
@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_v_prediction_parity_with_eps(method: str, loss: str) -> None:
    net = _lora_net()
    losses = {}
    for prediction in ("eps", "v"):
        cfg = DistillConfig(method=method, loss=loss, prediction_type=prediction, s_rule="uniform+zero-ramp")
        points, x0, noise, cond, uncond = _net_batch(cfg, seed=31)
        student, teacher = _adapters(net, True), _adapters(net, False)
        if prediction == "v":
            student, teacher = _as_v(student), _as_v(teacher)
        losses[prediction] = distill_loss(cfg, AC, x0, noise, points, student, teacher, student, cond, uncond)
    assert losses["eps"].item() > 0
    assert torch.allclose(losses["eps"], losses["v"], rtol=1e-9, atol=0)


def test_float32_inputs_stay_float32() -> None:
    net = _lora_net().float()
    cfg = DistillConfig()
    points, x0, noise, cond, uncond = _net_batch(cfg, seed=41)
    terms = distill_terms(
        cfg, AC.float(), x0.float(), noise.float(), points, net, net, net, cond.float(), uncond.float()
    )
    assert terms.student.dtype == terms.target.dtype == torch.float32
    assert distance(cfg, terms.student, terms.target).dtype == torch.float32


# ---------------------------------------------------------------- EMA target


def test_ema_update_rule_and_swap() -> None:
    net = _lora_net()
    params = [net.lora_down, net.lora_up]
    ema = EMA(params, decay=0.9)
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    ema.update(params)
    for shadow, p0 in zip(ema.shadow, start, strict=True):
        assert torch.allclose(shadow, p0 + 0.1, atol=1e-12)
    current = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="inside"):
        with ema.swapped_in(params):
            assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow, strict=True))
            raise RuntimeError("inside")
    assert all(torch.equal(p, c) for p, c in zip(params, current, strict=True))

    tracking = EMA(params, decay=0.0)
    with torch.no_grad():
        params[0].mul_(2.0)
    tracking.update(params)
    assert torch.equal(tracking.shadow[0], params[0].detach())


def test_ema_on_a_state_dict_and_round_trip() -> None:
    state = {"b": torch.ones(3, dtype=torch.float64), "a": torch.zeros(2, dtype=torch.float64)}
    ema = EMA(state, decay=0.5)
    ema.update({"a": torch.full((2,), 2.0, dtype=torch.float64), "b": torch.full((3,), 3.0, dtype=torch.float64)})
    target = {"a": torch.empty(2, dtype=torch.float64), "b": torch.empty(3, dtype=torch.float64)}
    ema.copy_to(target)
    assert target["a"].tolist() == [1.0, 1.0] and target["b"].tolist() == [2.0, 2.0, 2.0]
    other = EMA(state, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.5 and all(torch.equal(x, y) for x, y in zip(other.shadow, ema.shadow, strict=True))
    with pytest.raises(TCDInputError, match="EMA holds 2 tensors, got 1"):
        ema.update([torch.zeros(2)])
    with pytest.raises(TCDInputError, match="ema_decay"):
        EMA(state, decay=1.0)


def test_ema_target_equals_a_separate_copy_with_the_averaged_weights() -> None:
    net = _lora_net()
    params = [net.lora_down, net.lora_up]
    ema = EMA(params, decay=0.95)
    with torch.no_grad():
        for p in params:
            p.mul_(1.5)  # the trained weights moved away from their average
    cfg = DistillConfig(ema_decay=0.95)
    points, x0, noise, cond, uncond = _net_batch(cfg, seed=51)

    def ema_target(x: Tensor, t: Tensor, c: Tensor) -> Tensor:
        with ema.swapped_in(params):
            return net(x, t, c)

    loss = distill_loss(cfg, AC, x0, noise, points, net, _adapters(net, False), ema_target, cond, uncond)
    loss.backward()
    grads = [p.grad.clone() for p in params]

    twin = copy.deepcopy(net)
    ema.copy_to([twin.lora_down, twin.lora_up])
    net.zero_grad(set_to_none=True)
    ref = distill_loss(cfg, AC, x0, noise, points, net, _adapters(net, False), twin, cond, uncond)
    ref.backward()
    assert loss.item() == ref.item()
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads, strict=True))
    stop_grad = distill_loss(cfg, AC, x0, noise, points, net, _adapters(net, False), net, cond, uncond)
    assert stop_grad.item() != loss.item()


# ---------------------------------------------------------------- bad configuration


BAD_CONFIGS = [
    ("method", "consistency", "method must be one of 'tcd', 'lcm'"),
    ("prediction_type", "sample", "prediction_type must be one of 'eps', 'v', 'flow', 'x0'"),
    ("num_ddim_timesteps", 0, "num_ddim_timesteps must be a whole number in 1..1000"),
    ("num_ddim_timesteps", 1001, "num_ddim_timesteps must be a whole number in 1..1000"),
    ("num_ddim_timesteps", 50.0, "num_ddim_timesteps must be a whole number"),
    ("num_train_timesteps", 1, "num_train_timesteps must be a whole number in 2..100000"),
    ("guidance_min", -1.0, r"guidance_min must be a number in \[0.0, 100.0\]"),
    ("guidance_max", float("nan"), "guidance_max must be a number"),
    ("guidance_min", 16.0, "guidance_min must be <= guidance_max"),
    ("loss", "l1", "loss must be one of 'huber', 'l2'"),
    ("huber_c", 0.0, r"huber_c must be a number in \[1e-06, 10.0\]"),
    ("s_rule", "random", "s_rule must be one of 'uniform', 'uniform\\+zero', 'uniform\\+zero-ramp'"),
    ("s_zero_share", 1.5, r"s_zero_share must be a number in \[0.0, 1.0\]"),
    ("ema_decay", 1.0, r"ema_decay must be a number in \[0.0, 0.9999\]"),
    ("ema_decay", -0.1, "ema_decay"),
    ("timestep_scaling", -1.0, "timestep_scaling"),
    ("sigma_data", 0.0, r"sigma_data must be a number in \[1e-06, "),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_CONFIGS)
def test_bad_config_values_are_refused_naming_the_field(field: str, value: object, message: str) -> None:
    """Refused on construction, so before any work (drawing, the loss); the error carries the field as data."""
    with pytest.raises(TCDInputError, match=message) as error:
        DistillConfig(**{field: value})
    assert error.value.field == field


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(TCDInputError, match="batch_size must be a whole number"):
        draw_training_points(DistillConfig(), 0)


def test_default_config_is_valid_and_follows_the_lcm_lora_script_and_the_benchmark() -> None:
    """The LCM-LoRA script's grid, guidance, Huber c and boundary scalings; the benchmark's choices (BENCHMARKS.md)
    of the EMA target (0.95) instead of the script's stop-grad and of Huber (as LCM-LoRA was trained) instead of the
    script's --loss_type default l2; the paper's s."""
    cfg = DistillConfig()
    assert (cfg.num_ddim_timesteps, cfg.guidance_min, cfg.guidance_max, cfg.huber_c) == (50, 3.0, 15.0, 0.001)
    assert (cfg.timestep_scaling, cfg.sigma_data, cfg.s_rule, cfg.loss) == (10.0, 0.5, "uniform", "huber")
    assert cfg.ema_decay == 0.95
    assert cfg.guided and not DistillConfig(**UNGUIDED).guided
