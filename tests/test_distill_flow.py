"""tcd_core.distill on a flow schedule against exact answers, as test_distill_math does for eps / v.

The flow path is x_sigma = (1 - sigma) x0 + sigma eps with the velocity u = eps - x0 (ComfyUI's CONST,
diffusers' FlowMatchEulerDiscreteScheduler); the model is called with sigma. It is the Gaussian path
alpha x0 + sigma eps with alpha = 1 - sigma, so for Gaussian data x0 ~ N(mu, sd^2) (every element), with
m_sigma = (1 - sigma) mu and V_sigma = (1 - sigma)^2 sd^2 + sigma^2:

    E[x0 | x]        = mu + (1 - sigma) sd^2 / V_sigma (x - m_sigma)
    E[u | x]         = (x - E[x0 | x]) / sigma                               (the exact teacher's velocity)
    flow ODE map t->s: x_s = m_s + sqrt(V_s / V_t) (x_t - m_t)
    Euler step t->s  : x_s = x_t + (s - t) E[u | x_t] = m_s + ((1 - s)(1 - t) sd^2 + s t) / V_t (x_t - m_t)

and the Euler (= DDIM) factor is below the ODE factor by Cauchy-Schwarz unless sd = 0 (a point mass, whose
flow paths are straight) or s = t: the exact teacher has a one-step error, and the perfectly distilled TCD
student (an oracle whose TCF(1) jump lands on the ODE map) has exactly the loss that error carried to s,
sqrt(V_s / V_{t_n}) (x_{t_n}^ODE - x̂_{t_n}), elementwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from comfyui_tcd_sampling.tcd_core import TCDInputError
from comfyui_tcd_sampling.tcd_core.distill import (
    DistillConfig,
    FlowSchedule,
    TrainingPoints,
    VPSchedule,
    consistency_output,
    distance,
    distill_loss,
    distill_terms,
    draw_training_points,
    scaled_linear_alphas_cumprod,
    shifted_flow_sigmas,
    split_prediction,
    teacher_ddim_step,
)
from comfyui_tcd_sampling.tcd_core.distiller import DistillBatch, Distiller
from test_distill_math import MU, _adapters, _gaussian_batch, _lora_net
from torch import Tensor

SIGMAS = shifted_flow_sigmas(3.0)  # SD3's table (ComfyUI's ModelSamplingDiscreteFlow, shift 3), float64
FLOW = FlowSchedule(SIGMAS)
UNGUIDED = dict(guidance_min=0.0, guidance_max=0.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def col(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def flow_config(**fields: object) -> DistillConfig:
    return DistillConfig(prediction_type="flow", **fields)


# ---------------------------------------------------------------- the schedule


def test_the_table_is_comfyuis_and_diffusers_shifted_flow_schedule() -> None:
    """FlowSchedule takes a model's own model_sampling.sigmas (SD3's shift 3, Flux's 10000-step table)."""
    from devkit.comfy_import import import_comfyui

    import_comfyui(cpu=True)
    from types import SimpleNamespace

    import comfy.model_sampling
    from diffusers import FlowMatchEulerDiscreteScheduler

    sd3 = comfy.model_sampling.ModelSamplingDiscreteFlow(
        SimpleNamespace(sampling_settings={"shift": 3.0, "multiplier": 1000})
    )
    assert torch.allclose(FlowSchedule(sd3.sigmas).sigmas, SIGMAS, rtol=0, atol=1e-6)  # ComfyUI's float32 table
    diffusers_sigmas = FlowMatchEulerDiscreteScheduler(shift=3.0).sigmas.double().flip(0)
    assert torch.allclose(SIGMAS, diffusers_sigmas, rtol=0, atol=1e-6)  # float32 as well
    assert float(SIGMAS[-1]) == 1.0 and 0.0029 < float(SIGMAS[0]) < 0.0031
    # the 50-point skipping grid is ComfyUI's ``simple`` scheduler's 50 sigmas, noisiest first
    grid = SIGMAS[torch.arange(50) * 20 + 19].flip(0)
    simple = sd3.sigmas.double()[[-(1 + int(x * 20)) for x in range(50)]]
    assert torch.allclose(grid, simple, rtol=0, atol=1e-6)

    flux = comfy.model_sampling.ModelSamplingFlux(SimpleNamespace(sampling_settings={"shift": 1.15}))
    schedule = FlowSchedule(flux.sigmas)
    assert schedule.num_timesteps == 10000  # Flux: sigma = e^1.15 u / (e^1.15 u + 1 - u), u = (t + 1) / 10000
    assert torch.allclose(schedule.sigmas, shifted_flow_sigmas(math.exp(1.15), 10000), rtol=0, atol=1e-6)
    by_fn = FlowSchedule.from_sigma_fn(lambda u: 3.0 * u / (1.0 + 2.0 * u))
    assert torch.equal(by_fn.sigmas, SIGMAS)


def test_flow_output_converts_to_x0_and_eps_and_tcf1_is_the_euler_step() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0, 19, 250, 500, 900, 999])
    sig = col(SIGMAS[t], x0)
    xt = (1 - sig) * x0 + sig * eps
    for out, pred in ((eps - x0, "flow"), (x0, "x0")):
        x0_hat, eps_hat = split_prediction(out, xt, t, FLOW, pred)
        assert torch.allclose(x0_hat, x0, atol=1e-12) and torch.allclose(eps_hat, eps, atol=1e-12)

    cfg = flow_config()
    u = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert torch.allclose(consistency_output(cfg, FLOW, u, xt, t, t), xt, atol=1e-12)  # f(x, t, t) = x
    s = torch.tensor([0, 0, 19, 259, 879, 0])
    sig_s = col(SIGMAS[s], x0)
    x0_net = xt - sig * u
    exponential_integrator = sig_s / sig * xt + (1 - sig_s / sig) * x0_net  # the x_s = (s/t) x_t + ...
    euler = xt + (sig_s - sig) * u
    got = consistency_output(cfg, FLOW, u, xt, t, s)
    assert torch.allclose(got, exponential_integrator, atol=1e-12) and torch.allclose(got, euler, atol=1e-12)


# ---------------------------------------------------------------- the exact teacher on Gaussian data


class FlowGaussian:
    """x0 ~ N(mean, sd^2) per element on the flow path; a model is called with sigma, cond is the data mean."""

    def __init__(self, sd: float) -> None:
        self.sd = sd

    def var(self, sig: Tensor) -> Tensor:
        return (1 - sig) ** 2 * self.sd**2 + sig**2

    def posterior_mean(self, x: Tensor, sig: Tensor, mu: float | Tensor) -> Tensor:
        a, v = col(1 - sig, x), col(self.var(sig), x)
        return mu + a * self.sd**2 / v * (x - a * mu)

    def ode_map(self, x: Tensor, sig_t: Tensor, sig_s: Tensor, mu: float | Tensor) -> Tensor:
        ratio = col((self.var(sig_s) / self.var(sig_t)).sqrt(), x)
        return col(1 - sig_s, x) * mu + ratio * (x - col(1 - sig_t, x) * mu)

    def euler_factor(self, sig_t: Tensor, sig_s: Tensor) -> Tensor:
        return ((1 - sig_s) * (1 - sig_t) * self.sd**2 + sig_s * sig_t) / self.var(sig_t)

    def teacher(self, prediction: str = "flow") -> Callable[[Tensor, Tensor, float], Tensor]:
        def model(x: Tensor, sig: Tensor, mu: float) -> Tensor:
            return as_output(x, sig, self.posterior_mean(x, sig, mu), prediction)

        return model

    def trajectory_oracle(self, sig_s: Tensor, prediction: str = "flow") -> Callable[[Tensor, Tensor, float], Tensor]:
        """The perfect TCD student for target sigmas ``sig_s``: its jump (s/t) x + (1 - s/t) x0 is the ODE map."""

        def model(x: Tensor, sig: Tensor, mu: float) -> Tensor:
            same = col((sig == sig_s).double(), x) > 0  # s = t: TCF(1) is the identity whatever x0 is
            r = col(sig_s / sig, x)
            x0 = (self.ode_map(x, sig, sig_s, mu) - r * x) / torch.where(same, 1.0, 1 - r)
            return as_output(x, sig, torch.where(same, self.posterior_mean(x, sig, mu), x0), prediction)

        return model


def as_output(x: Tensor, sig: Tensor, x0: Tensor, prediction: str) -> Tensor:
    return (x - x0) / col(sig, x) if prediction == "flow" else x0


def test_closed_form_map_solves_the_flow_ode() -> None:
    """dx/dsigma = E[u | x] along x(sigma) = m_sigma + sqrt(V_sigma) c, the exact teacher's velocity."""
    data, c = FlowGaussian(0.8), torch.tensor([[0.7, -1.9]], dtype=torch.float64)
    sig = torch.tensor([0.01, 0.3, 0.6, 0.97], dtype=torch.float64)

    def x_of(sigma: Tensor) -> Tensor:
        return (1 - sigma[:, None]) * MU + data.var(sigma).sqrt()[:, None] * c

    h = 1e-6
    dx = (x_of(sig + h) - x_of(sig - h)) / (2 * h)
    assert torch.allclose(dx, data.teacher()(x_of(sig), sig, MU), atol=1e-7)
    assert torch.allclose(data.ode_map(x_of(sig), sig, sig.flip(0), MU), x_of(sig.flip(0)), atol=1e-12)


@pytest.mark.parametrize("prediction", ["flow", "x0"])
@pytest.mark.parametrize("sd", [0.0, 0.5, 1.3])
def test_exact_trajectory_map_loss_is_the_teachers_one_step_error(sd: float, prediction: str) -> None:
    data = FlowGaussian(sd)
    cfg = DistillConfig(prediction_type=prediction, loss="l2", **UNGUIDED)
    points, x0, noise = _gaussian_batch(64, 2048, sd, seed=11, cfg=cfg)
    sig_t, sig_n, sig_s = SIGMAS[points.t_start], SIGMAS[points.t_prev], SIGMAS[points.s]
    oracle = data.trajectory_oracle(sig_s, prediction)
    terms = distill_terms(cfg, FLOW, x0, noise, points, oracle, data.teacher(prediction), oracle, MU)

    # Independently, in closed form: the start, the teacher's Euler step and the exact ODE point at t_n.
    x_start = col(1 - sig_t, x0) * x0 + col(sig_t, x0) * noise
    teacher_prev = col(1 - sig_n, x0) * MU + col(data.euler_factor(sig_t, sig_n), x0) * (
        x_start - col(1 - sig_t, x0) * MU
    )
    one_step_error = data.ode_map(x_start, sig_t, sig_n, MU) - teacher_prev
    carried = col((data.var(sig_s) / data.var(sig_n)).sqrt(), x0) * one_step_error

    assert torch.allclose(terms.x_start, x_start, atol=1e-12)
    assert torch.allclose(terms.x_prev, teacher_prev, atol=1e-10)
    assert torch.allclose(terms.student, data.ode_map(x_start, sig_t, sig_s, MU), atol=1e-9)
    assert torch.allclose(terms.student - terms.target, carried, atol=1e-9)
    loss = distill_loss(cfg, FLOW, x0, noise, points, oracle, data.teacher(prediction), oracle, MU)
    expected = (carried**2).mean()
    assert torch.allclose(loss, expected, rtol=1e-8, atol=1e-18)
    at_tn = points.s == points.t_prev  # there the loss is the one-step error itself
    assert int(at_tn.sum()) > 0
    assert torch.allclose((terms.student - terms.target)[at_tn], one_step_error[at_tn], atol=1e-9)
    if sd == 0.0:
        assert float(loss) < 1e-20  # a point mass: straight flow paths, the Euler step is exact
    else:
        assert float(one_step_error.abs().max()) > 1e-3 and float(expected) > 1e-8  # far above the tolerances


def test_perturbed_flow_student_has_more_loss() -> None:
    data = FlowGaussian(0.5)
    cfg = flow_config(loss="huber", **UNGUIDED)
    points, x0, noise = _gaussian_batch(64, 2048, 0.5, seed=12, cfg=cfg)
    oracle = data.trajectory_oracle(SIGMAS[points.s])
    exact = distill_terms(cfg, FLOW, x0, noise, points, oracle, data.teacher(), oracle, MU)
    base = distance(cfg, exact.student, exact.target)
    for bias, scale in ((0.05, 1.0), (0.0, 1.05), (-0.02, 0.97)):

        def perturbed(x: Tensor, sig: Tensor, mu: float, bias: float = bias, scale: float = scale) -> Tensor:
            return scale * oracle(x, sig, mu) + bias

        terms = distill_terms(cfg, FLOW, x0, noise, points, perturbed, data.teacher(), perturbed, MU)
        assert distance(cfg, terms.student, terms.target) > 1.2 * base


# ---------------------------------------------------------------- guidance as each family does it


def test_true_cfg_teacher_step_is_the_euler_step_of_the_guided_velocity() -> None:
    """SD3.5 / Qwen-Image / Z-Image base: the negative prompt's second forward, u_w = u_c + w (u_c - u_u)."""
    data = FlowGaussian(0.7)
    cfg = flow_config(guidance_min=1.0, guidance_max=8.0)
    points, x0, noise = _gaussian_batch(16, 64, 0.7, seed=13, cfg=cfg)
    sig_t, sig_n = SIGMAS[points.t_start], SIGMAS[points.t_prev]
    x_start = col(1 - sig_t, x0) * x0 + col(sig_t, x0) * noise
    calls: list[float] = []

    def teacher(x: Tensor, sig: Tensor, mu: float) -> Tensor:
        calls.append(mu)
        assert not torch.is_grad_enabled() and torch.equal(sig, sig_t)  # called with the model's own sigma
        return data.teacher()(x, sig, mu)

    got = teacher_ddim_step(cfg, FLOW, x_start, points, teacher, 0.3, -0.4)
    assert sorted(calls) == [-0.4, 0.3]
    w = col(points.w.double(), x0)
    u_c, u_u = data.teacher()(x_start, sig_t, 0.3), data.teacher()(x_start, sig_t, -0.4)
    step = col(sig_n - sig_t, x0)
    assert torch.allclose(got, x_start + step * (u_c + w * (u_c - u_u)), atol=1e-10)

    calls.clear()  # Algorithm 1: range 0..0, or no uncond -> one forward, the plain Euler step
    plain = teacher_ddim_step(flow_config(**UNGUIDED), FLOW, x_start, points, teacher, 0.3, -0.4)
    assert calls == [0.3]
    no_uncond = teacher_ddim_step(cfg, FLOW, x_start, points, teacher, 0.3, None)
    assert torch.allclose(plain, x_start + step * u_c, atol=1e-10)
    assert torch.allclose(no_uncond, x_start + step * u_c, atol=1e-10)


EMBEDDED = dict(embedded_guidance_input=True, embedded_guidance_min=2.0, embedded_guidance_max=5.0)


def test_embedded_guidance_is_drawn_per_sample_after_the_other_draws() -> None:
    cfg = flow_config(**EMBEDDED, **UNGUIDED)
    p = draw_training_points(cfg, 4096, torch.Generator().manual_seed(3))
    plain = draw_training_points(flow_config(**UNGUIDED), 4096, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(p[:5], plain[:5], strict=True))  # index, s, w do not move
    assert p.g.dtype == torch.float32 and float(p.g.min()) >= 2.0 and float(p.g.max()) < 5.0
    assert abs(float(p.g.double().mean()) - 3.5) < 5 * 3 / math.sqrt(12 * 4096)
    assert torch.equal(plain.g, torch.zeros(4096))  # unused without the input
    fixed = draw_training_points(
        flow_config(embedded_guidance_input=True, embedded_guidance_min=3.5, embedded_guidance_max=3.5), 8
    )
    assert torch.equal(fixed.g, torch.full((8,), 3.5))


@pytest.mark.parametrize("method", ["tcd", "lcm"])
def test_embedded_guidance_is_a_model_input_given_to_teacher_target_and_student(method: str) -> None:
    """Flux.1-dev: one teacher forward with g (no second pass), and the student and the target get the same g."""
    data = FlowGaussian(0.6)
    cfg = flow_config(method=method, **EMBEDDED, **UNGUIDED)
    points, x0, noise = _gaussian_batch(16, 64, 0.6, seed=14, cfg=cfg)
    seen: list[tuple[str, Tensor]] = []

    def model(role: str) -> Callable[..., Tensor]:
        def call(x: Tensor, sig: Tensor, mu: float, guidance: Tensor) -> Tensor:
            seen.append((role, guidance))
            return data.teacher()(x, sig, mu + 0.1 * guidance.double()[:, None])  # the data mean depends on g

        return call

    terms = distill_terms(cfg, FLOW, x0, noise, points, model("student"), model("teacher"), model("target"), MU)
    assert [role for role, _ in seen] == ["teacher", "target", "student"]
    assert all(torch.equal(g, points.g) for _, g in seen) and len(set(points.g.tolist())) == 16
    sig_t, sig_n = SIGMAS[points.t_start], SIGMAS[points.t_prev]
    mean = MU + 0.1 * col(points.g.double(), x0)
    expected = terms.x_start + col(sig_n - sig_t, x0) * data.teacher()(terms.x_start, sig_t, mean)
    assert torch.allclose(terms.x_prev, expected, atol=1e-10)
    # with a negative prompt as well (true CFG on top): two teacher forwards, both with g
    seen.clear()
    distill_terms(
        flow_config(method=method, **EMBEDDED), FLOW, x0, noise, points, model("s"), model("t"), model("e"), MU, -MU
    )
    assert [role for role, _ in seen] == ["t", "t", "e", "s"] and all(torch.equal(g, points.g) for _, g in seen)


# ---------------------------------------------------------------- bad input, refused before any work


def never_called(*args: object, **kwargs: object) -> Tensor:
    raise AssertionError("a model was called before the input was checked")


BAD_EMBEDDED = [
    (dict(embedded_guidance_min=3.5, embedded_guidance_max=3.5), "embedded_guidance_min", "must be left unset"),
    (dict(embedded_guidance_max=3.5), "embedded_guidance_max", "without an embedded guidance input"),
    (dict(embedded_guidance_input=True), "embedded_guidance_min", r"must be given \(a number in \[0.0, 100.0\]"),
    (dict(embedded_guidance_input=True, embedded_guidance_max=4.0), "embedded_guidance_min", "other end"),
    (dict(embedded_guidance_input=True, embedded_guidance_min=4.0), "embedded_guidance_max", "other end"),
    (dict(EMBEDDED, embedded_guidance_min=6.0), "embedded_guidance_min", "must be <= embedded_guidance_max"),
    (dict(EMBEDDED, embedded_guidance_max=101.0), "embedded_guidance_max", r"in \[0.0, 100.0\]"),
    (dict(EMBEDDED, embedded_guidance_min=-1.0), "embedded_guidance_min", r"in \[0.0, 100.0\]"),
]


@pytest.mark.parametrize(("fields", "field", "message"), BAD_EMBEDDED)
def test_bad_embedded_guidance_is_refused_naming_the_field(fields: dict, field: str, message: str) -> None:
    with pytest.raises(TCDInputError, match=message) as error:
        flow_config(**fields)
    assert error.value.field == field and str(error.value).startswith(field)


def test_points_without_g_are_refused_for_a_model_with_the_input() -> None:
    cfg = flow_config(**EMBEDDED)
    points, x0, noise = _gaussian_batch(2, 4, 0.5, seed=1, cfg=cfg)
    bare = TrainingPoints(*points[:5])
    with pytest.raises(TCDInputError, match="points.g must hold the per-sample embedded guidance") as error:
        distill_loss(cfg, FLOW, x0, noise, bare, never_called, never_called, never_called, MU)
    assert error.value.field == "points.g"


BAD_SIGMAS = [
    (SIGMAS.flip(0), r"must rise strictly with the timestep .* sigmas\[1\]=0.99"),  # a sampler's descending list
    (torch.cat([SIGMAS[:10], SIGMAS[9:]]), r"sigmas\[10\]=.* is not above sigmas\[9\]"),
    (torch.cat([torch.zeros(1, dtype=torch.float64), SIGMAS[1:]]), r"must lie in \(0, 1\].*got values in \[0, 1\]"),
    (SIGMAS * 1000, r"must lie in \(0, 1\]"),  # SD3's timesteps, not sigmas
    (torch.cat([SIGMAS[:-1], torch.tensor([float("nan")], dtype=torch.float64)]), r"must lie in \(0, 1\]"),
    (SIGMAS[None], "must be a 1-D float tensor of at least 2 noise levels"),
    (SIGMAS[:1], "must be a 1-D float tensor of at least 2 noise levels"),
    (torch.arange(1, 1001), "must be a 1-D float tensor"),
    ([0.5, 1.0], "must be a 1-D float tensor"),
]


@pytest.mark.parametrize(("sigmas", "message"), BAD_SIGMAS)
def test_bad_sigma_tables_are_refused_naming_sigmas(sigmas: object, message: str) -> None:
    with pytest.raises(TCDInputError, match=message) as error:
        FlowSchedule(sigmas)  # type: ignore[arg-type]
    assert error.value.field == "sigmas"


@pytest.mark.parametrize(
    ("config", "schedule", "field", "message"),
    [
        (DistillConfig(), FLOW, "prediction_type", "must be one of 'flow', 'x0' on a flow schedule"),
        (DistillConfig(prediction_type="v"), FLOW, "prediction_type", "got 'v'"),
        (flow_config(), scaled_linear_alphas_cumprod(), "prediction_type", "'eps', 'v', 'x0' on a VP schedule"),
        (flow_config(), FlowSchedule(shifted_flow_sigmas(3.16, 10000)), "num_train_timesteps", r"table \(10000\)"),
        (flow_config(), "sigmas", "schedule", "must be a VPSchedule, a FlowSchedule or alphas_cumprod, got str"),
    ],
)
def test_a_schedule_that_does_not_fit_the_config_is_refused_before_any_work(
    config: DistillConfig, schedule: object, field: str, message: str
) -> None:
    points, x0, noise = _gaussian_batch(2, 4, 0.5, seed=1, cfg=config)
    with pytest.raises(TCDInputError, match=message) as error:
        distill_loss(config, schedule, x0, noise, points, never_called, never_called, never_called, MU)  # type: ignore[arg-type]
    assert error.value.field == field
    with pytest.raises(TCDInputError, match=message):
        Distiller(config, schedule, never_called, never_called, [], torch.optim.SGD([torch.zeros(1)], lr=0.1))  # type: ignore[arg-type]


# ---------------------------------------------------------------- a tiny network: gradients, weights, seeds


def _flow_net_fn(model: Callable[[Tensor, Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    """The tiny conv net as a flow model: SD3's timestep sigma * 1000, and g (if any) added to the condition."""

    def call(x: Tensor, sig: Tensor, cond: Tensor, guidance: Tensor | None = None) -> Tensor:
        assert sig.is_floating_point() and float(sig.min()) > 0 and float(sig.max()) <= 1
        if guidance is not None:
            cond = cond + 0.1 * guidance.to(cond.dtype)[:, None]
        return model(x, sig * 1000, cond)

    return call


def _batch(cfg: DistillConfig, seed: int, batch: int = 8):
    g = torch.Generator().manual_seed(seed)
    points = draw_training_points(cfg, batch, g)
    x0, noise = (torch.randn(batch, 4, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    cond = torch.randn(batch, 8, generator=g, dtype=torch.float64)
    return points, x0, noise, cond, torch.zeros_like(cond)


@pytest.mark.parametrize("embedded", [False, True], ids=["cfg", "embedded"])
@pytest.mark.parametrize("method", ["tcd", "lcm"])
def test_gradient_reaches_only_the_students_trainable_weights(method: str, embedded: bool) -> None:
    net = _lora_net()
    separate_teacher = copy.deepcopy(net).requires_grad_(True)  # even a grad-enabled teacher gets none
    cfg = flow_config(method=method, **(EMBEDDED if embedded else {}))
    points, x0, noise, cond, uncond = _batch(cfg, seed=1)
    student = _flow_net_fn(_adapters(net, True))
    loss = distill_loss(cfg, FLOW, x0, noise, points, student, _flow_net_fn(separate_teacher), student, cond, uncond)
    loss.backward()
    assert loss.requires_grad and loss.item() > 0
    assert all(p.grad is None for p in separate_teacher.parameters())
    for name, p in net.named_parameters():
        if name.startswith("lora"):
            assert p.grad is not None and float(p.grad.abs().max()) > 0, name
        else:
            assert p.grad is None, name


def test_teacher_weights_are_bit_identical_after_an_optimizer_step_and_same_seed_same_loss() -> None:
    net = _lora_net()
    frozen = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("lora")}
    lora_before = net.lora_up.detach().clone()
    cfg = flow_config(**EMBEDDED)
    student, teacher = _flow_net_fn(_adapters(net, True)), _flow_net_fn(_adapters(net, False))
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    for step in range(2):
        points, x0, noise, cond, uncond = _batch(cfg, seed=10 + step)
        loss = distill_loss(cfg, FLOW, x0, noise, points, student, teacher, student, cond, uncond)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert not torch.equal(net.lora_up.detach(), lora_before)
    losses = []
    for seed in (21, 21, 22):
        points, x0, noise, cond, uncond = _batch(cfg, seed)
        losses.append(distill_loss(cfg, FLOW, x0, noise, points, student, teacher, student, cond, uncond).item())
    assert losses[0] == losses[1] and losses[0] != losses[2]


@pytest.mark.parametrize("method", ["tcd", "lcm"])
def test_the_same_denoiser_as_x0_gives_the_velocity_loss(method: str) -> None:
    """The x0-predicting call (ComfyUI's apply_model) and the velocity call are one model to the engine."""
    net = _lora_net()
    losses = {}
    for prediction in ("flow", "x0"):
        cfg = DistillConfig(method=method, prediction_type=prediction, s_rule="uniform+zero-ramp")
        points, x0, noise, cond, uncond = _batch(cfg, seed=31)
        student, teacher = _flow_net_fn(_adapters(net, True)), _flow_net_fn(_adapters(net, False))
        if prediction == "x0":
            student, teacher = (
                (lambda x, sig, c, m=m: x - col(sig, x) * m(x, sig, c)) for m in (student, teacher)
            )  # fmt: skip
        losses[prediction] = distill_loss(cfg, FLOW, x0, noise, points, student, teacher, student, cond, uncond)
    assert losses["flow"].item() > 0
    assert torch.allclose(losses["flow"], losses["x0"], rtol=1e-9, atol=0)


def test_low_precision_latents_get_float32_sigmas() -> None:
    cfg = flow_config()
    points, x0, noise, cond, uncond = _batch(cfg, seed=41)
    seen: list[Tensor] = []

    def model(x: Tensor, sig: Tensor, c: Tensor) -> Tensor:
        seen.append(sig)
        return torch.zeros_like(x)

    terms = distill_terms(cfg, FLOW, x0.bfloat16(), noise.bfloat16(), points, model, model, model, cond, uncond)
    assert terms.student.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in seen)
    assert torch.equal(seen[0], SIGMAS[points.t_start].float())


# ---------------------------------------------------------------- the engine on a flow schedule


def test_the_engine_steps_a_flux_like_model_on_its_own_sigmas() -> None:
    """Distiller.step with Flux.1-dev's shape of problem: a 10000-step table, embedded guidance 3.5, no CFG."""
    flux = FlowSchedule(shifted_flow_sigmas(math.exp(1.15), 10000))
    cfg = flow_config(num_train_timesteps=10000, ema_decay=0.0, **UNGUIDED, embedded_guidance_input=True,
                      embedded_guidance_min=3.5, embedded_guidance_max=3.5)  # fmt: skip
    net = _lora_net()
    twin = copy.deepcopy(net)
    student, teacher = _flow_net_fn(_adapters(net, True)), _flow_net_fn(_adapters(net, False))
    params = [p for p in net.parameters() if p.requires_grad]
    distiller = Distiller(cfg, flux, student, teacher, params, torch.optim.SGD(params, lr=0.1),
                          generator=torch.Generator().manual_seed(5))  # fmt: skip
    points, x0, noise, cond, _ = _batch(cfg, seed=6)
    assert bool(((points.t_start + 1) % 200 == 0).all())  # k = 10000 // 50
    loss = distiller.step([[DistillBatch(x0, cond, None, noise=noise, points=points)]])

    twin_student = _flow_net_fn(_adapters(twin, True))
    by_hand = distill_loss(cfg, flux, x0, noise, points, twin_student, _flow_net_fn(_adapters(twin, False)),
                           twin_student, cond)  # fmt: skip
    by_hand.backward()
    assert loss == pytest.approx(by_hand.item(), rel=1e-12)
    torch.testing.assert_close(net.lora_up.detach(), twin.lora_up.detach() - 0.1 * twin.lora_up.grad)


def test_a_vp_schedule_object_is_the_bare_table() -> None:
    """VPSchedule(alphas_cumprod) and the bare tensor give the same loss, bit for bit."""
    net = _lora_net()
    cfg = DistillConfig()
    points, x0, noise, cond, uncond = _batch(cfg, seed=51)
    table = scaled_linear_alphas_cumprod()
    losses = [
        distill_loss(cfg, schedule, x0, noise, points, net, _adapters(net, False), net, cond, uncond).item()
        for schedule in (table, VPSchedule(table))
    ]
    assert losses[0] == losses[1] > 0
