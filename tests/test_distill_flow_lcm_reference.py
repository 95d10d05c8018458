"""tcd_core.distill's LCM mode on a flow schedule against a reference written from SimpleTuner's LCM distiller.

The reference below restates, independently of tcd_core, the flow-matching branch of SimpleTuner's
``LCMDistiller`` (bghira/SimpleTuner, ``simpletuner/helpers/distillation/lcm/__init__.py``, formerly
``helpers/distillation/lcm/distiller.py``: ``FlowMatchingSolver``, ``extract_into_tensor``,
``scalings_for_boundary_conditions``, ``LCMDistiller.prepare_batch`` and ``compute_distill_loss``): the
``randint`` draw of the solver index, the interpolation ``sigma * noise + (1 - sigma) * latents``, the
boundary scalings at the integer solver timestep, the guidance scale ``(w_max - w_min) * rand + w_min`` and
CFG in its form ``uncond + w (cond - uncond)`` on the velocity, the solver's Euler step
``x + (sigma_prev - sigma) v``, the no-grad target ``c_skip x_prev + c_out f``, the student's
``c_skip_start x + c_out_start f`` and the L2 / pseudo-Huber loss. The consistency function at s = 0 is
diffusers' ``FlowMatchLCMScheduler.step``'s ``x0_pred = sample - sigma * model_output``
(``src/diffusers/schedulers/scheduling_flow_match_lcm.py``) under LCM's boundary scalings.

Where SimpleTuner's flow branch contradicts itself, the reference follows the consistent reading, as
tcd_core does (docs/distill.md, "LCM mode on a flow schedule"):

1. Grid and direction. SimpleTuner indexes diffusers' descending training sigmas with
   ``linspace(0, T - 1, N).long()`` and steps the teacher to ``sigmas_prev`` (the previous, noisier grid
   point; the same point at index 0) while it evaluates the target at ``timesteps[index + 1]`` (a cleaner
   one): the Euler step runs towards noise (``test_simpletuners_literal_flow_solver_steps_towards_noise``).
   The reference steps from the grid point to the next cleaner one and evaluates the target there, on the
   skipping grid of SimpleTuner's own ``DDIMSolver`` (``(1..N) * T // N - 1``) read on the ascending table.
2. Consistency function. SimpleTuner multiplies the raw velocity by ``c_out`` (``c_skip x + c_out v``);
   v is not a sample, so that is no consistency parameterisation (far from t = 0 it is v, not x0). The
   reference uses ``x0 = x - sigma v`` there, FlowMatchLCMScheduler's consistency function.
3. Model time. SimpleTuner passes the solver index as the model's timestep whatever the sigma it noised
   with; the reference calls the model with the sigma of the point (the model maps it to its timestep).
4. Target network. SimpleTuner's target is the teacher (the adapter switched off); the reference uses the
   student under no_grad, as diffusers' LCM-LoRA script (stop-grad, ``ema_decay = 0``) and tcd_core do.

SimpleTuner's ``w`` is the Imagen-form CFG scale, one more than LCM's (``uncond + W (cond - uncond) =
cond + (W - 1)(cond - uncond)``): the reference draws ``W`` in ``[w_min + 1, w_max + 1]``. Both sides see
the same tensors, seeds and networks (the tiny conv net of test_distill_lcm_reference and diffusers' own
SD3Transformer2DModel at a tiny size, called with timestep sigma * 1000), in float32. The TCD mode is
checked the same way against the issue's form of TCF(1), ``(s / t) x_t + (1 - s / t) x0``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from comfyui_tcd_sampling.tcd_core.distill import (
    DistillConfig,
    FlowSchedule,
    distill_loss,
    distill_terms,
    draw_training_points,
)
from diffusers import FlowMatchEulerDiscreteScheduler
from test_distill_lcm_reference import BATCH, DIM, TinyCondNet, gather, inputs, script_scalings
from torch import Tensor, nn

TOL = 1e-6
SHIFT = 3.0  # SD3's


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def training_sigmas() -> Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler training sigmas (float32, descending from 1), as SimpleTuner
    takes them (``noise_scheduler.sigmas``)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT).sigmas.cpu()


# ---------------------------------------------------------------- the distiller's helpers, restated


class ReferenceFlowSolver:
    """SimpleTuner's FlowMatchingSolver on the consistent grid (point 1): from each grid point to the next
    cleaner one. ``sigmas`` are diffusers' descending training sigmas; index t counts from the clean end."""

    def __init__(self, sigmas: Tensor, timesteps: int = 1000, euler_timesteps: int = 50) -> None:
        ratio = timesteps // euler_timesteps
        self.timesteps = torch.arange(1, euler_timesteps + 1) * ratio - 1
        self.timesteps_prev = (self.timesteps - ratio).clamp(min=0)
        ascending = sigmas.flip(0)
        self.sigmas = ascending[self.timesteps]
        self.sigmas_prev = ascending[self.timesteps_prev]

    def euler_step(self, x_t: Tensor, v_t: Tensor, index: Tensor) -> Tensor:
        sigma_t = gather(self.sigmas, index, x_t.shape)
        sigma_prev = gather(self.sigmas_prev, index, x_t.shape)
        return x_t + (sigma_prev - sigma_t) * v_t


@dataclasses.dataclass
class Config:
    method: str = "lcm"
    num_ddim_timesteps: int = 50
    w_min: float = 4.0  # Imagen form: LCM's w 3..15
    w_max: float = 16.0
    loss_type: str = "l2"
    huber_c: float = 0.001
    timestep_scaling_factor: float = 10.0


Model = Callable[[Tensor, Tensor, Any], Tensor]  # (x, sigma, cond) -> velocity


def reference_iteration(
    config: Config,
    sigmas: Tensor,
    student: Model,
    teacher: Model,
    latents: Tensor,
    noise: Tensor,
    cond: Any,
    uncond: Any,
    generator: torch.Generator,
    guided: bool,
    end_timesteps: Tensor | None = None,
) -> dict[str, Tensor]:
    """One iteration of SimpleTuner's LCM distiller, flow branch (method "lcm"), or TCD's TCF(1) on it ("tcd")."""
    solver = ReferenceFlowSolver(sigmas, 1000, config.num_ddim_timesteps)
    bsz = latents.shape[0]
    index = torch.randint(0, config.num_ddim_timesteps, (bsz,), generator=generator).long()
    start_timesteps = solver.timesteps[index]
    timesteps = solver.timesteps_prev[index]
    if config.method == "tcd":  # TCD draws its end index here; the test passes tcd_core's (same RNG use)
        torch.rand((bsz,), generator=generator, dtype=torch.float64)
    c_skip_start, c_out_start = (append(x, latents) for x in script_scalings(start_timesteps.double()))
    c_skip, c_out = (append(x, latents) for x in script_scalings(timesteps.double()))
    sigma = gather(solver.sigmas, index, latents.shape)
    sigma_prev = gather(solver.sigmas_prev, index, latents.shape)
    noisy_latents = sigma * noise + (1 - sigma) * latents
    w = (config.w_max - config.w_min) * torch.rand((bsz,), generator=generator) + config.w_min
    w = w.reshape(bsz, 1, 1, 1).to(dtype=latents.dtype)

    with torch.no_grad():
        noise_pred = teacher(noisy_latents, solver.sigmas[index], cond)
        if guided:
            noise_pred_uncond = teacher(noisy_latents, solver.sigmas[index], uncond)
            noise_pred = noise_pred_uncond + w * (noise_pred - noise_pred_uncond)
        x_prev = solver.euler_step(noisy_latents, noise_pred, index)
        target_v = student(x_prev, solver.sigmas_prev[index], cond)
        target = consistency(config, x_prev, target_v, sigma_prev, c_skip, c_out, end_timesteps, sigmas)

    student_pred = student(noisy_latents, solver.sigmas[index], cond)
    model_pred = consistency(
        config, noisy_latents, student_pred, sigma, c_skip_start, c_out_start, end_timesteps, sigmas
    )
    if config.loss_type == "l2":
        loss = nn.functional.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        diff = model_pred.float() - target.float()
        loss = torch.mean(torch.sqrt(diff**2 + config.huber_c**2) - config.huber_c)
    return {
        "loss": loss,
        "index": index,
        "w": w.flatten(),
        "model_pred": model_pred,
        "target": target,
        "x_prev": x_prev,
    }


def append(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def consistency(
    config: Config,
    x: Tensor,
    v: Tensor,
    sigma: Tensor,
    c_skip: Tensor,
    c_out: Tensor,
    end: Tensor | None,
    sigmas: Tensor,
) -> Tensor:
    """LCM: c_skip x + c_out x0 with FlowMatchLCMScheduler's x0 = x - sigma v (point 2). TCD: (s/t) x + (1 - s/t) x0."""
    x0 = x - sigma * v
    if config.method == "lcm":
        return c_skip * x + c_out * x0
    ratio = append(sigmas.flip(0)[end], x) / sigma
    return ratio * x + (1 - ratio) * x0


# ---------------------------------------------------------------- the networks


class SD3Net(nn.Module):
    """diffusers' SD3Transformer2DModel at a tiny size; cond = (prompt embeddings, pooled projections)."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers import SD3Transformer2DModel

        self.net = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
            joint_attention_dim=DIM, caption_projection_dim=16, pooled_projection_dim=16, out_channels=4,
            pos_embed_max_size=8,
        )  # fmt: skip

    def forward(self, x: Tensor, sigma: Tensor, cond: tuple[Tensor, Tensor]) -> Tensor:
        prompt, pooled = cond
        return self.net(
            hidden_states=x, encoder_hidden_states=prompt, pooled_projections=pooled, timestep=sigma * 1000
        ).sample


class TinyFlowNet(TinyCondNet):
    """The VP reference's tiny conditional conv net, conditioned on SD3's timestep sigma * 1000."""

    def forward(self, x: Tensor, sigma: Tensor, context: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, sigma * 1000, context)


_NETS: dict[str, tuple[nn.Module, nn.Module]] = {}


def teacher_and_student(kind: str) -> tuple[nn.Module, nn.Module]:
    """A random teacher, and a student = teacher plus a small perturbation (a 'partly trained LoRA')."""
    if kind not in _NETS:
        torch.manual_seed(0)
        teacher = TinyFlowNet() if kind == "tiny" else SD3Net()
        teacher.requires_grad_(False).eval()
        student = copy.deepcopy(teacher).requires_grad_(True).train()
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.02 * torch.randn_like(p))
        _NETS[kind] = (teacher, student)
    return _NETS[kind]


def conds(kind: str, seed: int) -> tuple[Tensor, Tensor, Any, Any]:
    latents, noise, prompt, uncond = inputs(seed)
    if kind == "tiny":
        return latents, noise, prompt, uncond
    g = torch.Generator().manual_seed(seed + 50)
    pooled, pooled_uncond = torch.randn(BATCH, 16, generator=g), torch.zeros(BATCH, 16)
    return latents, noise, (prompt, pooled), (uncond, pooled_uncond)


# ---------------------------------------------------------------- the parity tests


def _compare(kind: str, config: Config, seed: int, guided: bool, **ours_differ: object) -> dict[str, float]:
    teacher, student = teacher_and_student(kind)
    w_min, w_max = (config.w_min - 1, config.w_max - 1) if guided else (0.0, 0.0)
    cfg = DistillConfig(
        method=config.method, prediction_type="flow", loss=config.loss_type, huber_c=config.huber_c,
        guidance_min=w_min, guidance_max=w_max, num_ddim_timesteps=config.num_ddim_timesteps,
        timestep_scaling=config.timestep_scaling_factor,
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, **ours_differ)  # only the negative control changes anything here
    sigmas = training_sigmas()
    schedule = FlowSchedule(sigmas.flip(0))  # the engine takes the table in timestep order
    latents, noise, cond, uncond = conds(kind, seed)

    points = draw_training_points(cfg, BATCH, torch.Generator().manual_seed(seed + 100))
    student.zero_grad(set_to_none=True)
    ours = distill_loss(cfg, schedule, latents, noise, points, student, teacher, student, cond, uncond)
    ours.backward()
    our_grads = [p.grad.clone() for p in student.parameters()]
    terms = distill_terms(cfg, schedule, latents, noise, points, student, teacher, student, cond, uncond)

    student.zero_grad(set_to_none=True)
    end = points.s if config.method == "tcd" else None
    gen = torch.Generator().manual_seed(seed + 100)
    ref = reference_iteration(config, sigmas, student, teacher, latents, noise, cond, uncond, gen, guided, end)
    ref["loss"].backward()
    ref_grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)

    assert torch.equal(points.index, ref["index"])
    if guided:
        assert torch.allclose(points.w, ref["w"] - 1, rtol=0, atol=1e-6)  # LCM's w = SimpleTuner's - 1
    grad_scale = max(float(g.abs().max()) for g in ref_grads)
    return {
        "loss": abs(ours.item() - ref["loss"].item()),
        "loss_value": ref["loss"].item(),
        "prediction": float((terms.student - ref["model_pred"]).detach().abs().max()),
        "target": float((terms.target - ref["target"]).abs().max()),
        "x_prev": float((terms.x_prev - ref["x_prev"]).abs().max()),
        "grad": max(float((a - b).abs().max()) for a, b in zip(our_grads, ref_grads, strict=True)) / grad_scale,
    }


@pytest.mark.parametrize("guided", [True, False], ids=["guided", "unguided"])
@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_flow_lcm_mode_matches_simpletuners_lcm_distiller(loss: str, guided: bool) -> None:
    diffs = _compare("tiny", Config(loss_type=loss), 1, guided)
    assert diffs["loss_value"] > 1e-4  # the student differs from its target: a real comparison
    assert diffs["loss"] < TOL, diffs
    assert diffs["prediction"] < 1e-5 and diffs["target"] < 1e-5 and diffs["x_prev"] < 1e-5, diffs
    assert diffs["grad"] < 1e-4, diffs


@pytest.mark.parametrize("loss", ["huber", "l2"])
def test_flow_lcm_mode_matches_on_diffusers_sd3_transformer(loss: str) -> None:
    diffs = _compare("sd3", Config(loss_type=loss), 2, True)
    assert diffs["loss_value"] > 1e-5
    assert diffs["loss"] < TOL, diffs
    assert diffs["grad"] < 1e-4, diffs


@pytest.mark.parametrize("kind", ["tiny", "sd3"])
def test_flow_tcd_mode_matches_the_exponential_integrator_form(kind: str) -> None:
    diffs = _compare(kind, Config(method="tcd"), 3, True)
    assert diffs["loss_value"] > 1e-5
    assert diffs["loss"] < TOL, diffs
    assert diffs["grad"] < 1e-4, diffs


@pytest.mark.parametrize(
    "differ",
    [{"timestep_scaling": 0.01}, {"sigma_data": 500.0}, {"huber_c": 0.0011}, {"loss": "l2"}],
    ids=["timestep_scaling", "sigma_data", "huber_c", "loss"],
)
def test_the_comparison_detects_a_small_deviation(differ: dict[str, object]) -> None:
    """Negative control: the 1e-6 check fails when tcd_core runs with a slightly different setting.

    (The boundary scalings act on x - x0 = sigma (eps - x0), which is small where c_skip is not (the bottom of
    the grid), so their controls move the scalings a hundredfold, to be seen over the whole grid.)
    """
    diffs = _compare("tiny", Config(loss_type="huber"), 1, True, **differ)
    assert diffs["loss"] > 10 * TOL or max(diffs["prediction"], diffs["target"]) > 1e-3, diffs


def test_simpletuners_literal_flow_solver_steps_towards_noise() -> None:
    """Why the reference departs from SimpleTuner's grid (point 1): its FlowMatchingSolver, built as it builds
    it on diffusers' training sigmas, has ``sigmas_prev >= sigmas`` at every index (the Euler step goes to the
    noisier neighbour), while its target time ``timesteps[index + 1]`` is the cleaner one; and its literal
    consistency function ``c_skip x + c_out v`` is not x0 far from t = 0 (point 2)."""
    sigmas = training_sigmas()
    grid = torch.linspace(0, 999, 50).long()  # FlowMatchingSolver.timesteps
    solver_sigmas = sigmas[grid]
    solver_sigmas_prev = torch.cat([sigmas[0:1], solver_sigmas[:-1]])  # FlowMatchingSolver.sigmas_prev
    target_sigmas = sigmas[grid[(torch.arange(50) + 1).clamp(max=49)]]  # the target's timesteps[index + 1]
    assert bool((solver_sigmas_prev >= solver_sigmas).all()) and bool(
        (solver_sigmas_prev[1:] > solver_sigmas[1:]).all()
    )
    assert bool((target_sigmas[:-1] < solver_sigmas[:-1]).all())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    sigma, t = 0.6, torch.tensor([500.0, 500.0])
    x, v = (1 - sigma) * x0 + sigma * eps, eps - x0
    c_skip, c_out = script_scalings(t)
    literal = c_skip[:, None] * x + c_out[:, None] * v
    assert torch.allclose(c_skip[:, None] * x + c_out[:, None] * (x - sigma * v), x0, atol=1e-5)
    assert float((literal - x0).abs().max()) > 0.5
