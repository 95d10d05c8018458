"""tcd_core.distill's LCM mode against a reference written from diffusers' LCM-LoRA training script.

The reference below restates, step by step and independently of tcd_core, one training iteration of
diffusers' ``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py``: the noise schedule
of its ``DDPMScheduler``, its ``DDIMSolver`` (grid and the "previous" alpha-bar table), the draw of
the grid index and of ``w`` with ``torch.randint`` / ``torch.rand``, ``add_noise``, the boundary
scalings, the x0 / eps recovery, the LCM-form guidance of the teacher, the DDIM step, the no-grad
target and the pseudo-Huber / L2 loss. Both sides see the same tensors, seed and networks (a tiny
conditional conv net and diffusers' own UNet2DConditionModel at a tiny size), in float32.

The TCD mode is checked the same way against the community TCD port of that script
(rootonchair/consistency_models_distill, ``tcd/``), whose consistency function is written in the
exponential-integrator form ``s_s / s_t x - a_s (exp(-h) - 1) x0``, h = lambda_s - lambda_t: an
independent algebraic form of TCF(1).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from comfyui_tcd_sampling import tcd_core
from comfyui_tcd_sampling.tcd_core.distill import DistillConfig, distill_loss, distill_terms, draw_training_points
from diffusers import DDPMScheduler
from torch import Tensor, nn

TOL = 1e-6
BATCH = 6
SEQ, DIM = 5, 32


# ---------------------------------------------------------------- the script's helpers, restated


def gather(a: Tensor, t: Tensor, shape: torch.Size) -> Tensor:
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(shape) - 1)))


def script_x0(out: Tensor, t: Tensor, x: Tensor, kind: str, alphas: Tensor, sigmas: Tensor) -> Tensor:
    a, s = gather(alphas, t, x.shape), gather(sigmas, t, x.shape)
    if kind == "epsilon":
        return (x - s * out) / a
    if kind == "v_prediction":
        return a * x - s * out
    raise ValueError(kind)


def script_eps(out: Tensor, t: Tensor, x: Tensor, kind: str, alphas: Tensor, sigmas: Tensor) -> Tensor:
    a, s = gather(alphas, t, x.shape), gather(sigmas, t, x.shape)
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        return a * out + s * x
    raise ValueError(kind)


def script_scalings(t: Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[Tensor, Tensor]:
    scaled = timestep_scaling * t
    return sigma_data**2 / (scaled**2 + sigma_data**2), scaled / (scaled**2 + sigma_data**2) ** 0.5


class ScriptDDIMSolver:
    """The grid (1..N) * (T // N) - 1 and alpha-bar at the step's end (index 0 ends at t = 0)."""

    def __init__(self, alphas_cumprod: np.ndarray, timesteps: int = 1000, ddim_timesteps: int = 50) -> None:
        ratio = timesteps // ddim_timesteps
        grid = (np.arange(1, ddim_timesteps + 1) * ratio).round().astype(np.int64) - 1
        prev = np.asarray([alphas_cumprod[0]] + alphas_cumprod[grid[:-1]].tolist())
        self.ddim_timesteps = torch.from_numpy(grid).long()
        self.ddim_alpha_cumprods_prev = torch.from_numpy(prev)

    def ddim_step(self, x0: Tensor, eps: Tensor, index: Tensor) -> Tensor:
        prev = gather(self.ddim_alpha_cumprods_prev, index, x0.shape)
        return prev.sqrt() * x0 + (1.0 - prev).sqrt() * eps


@dataclasses.dataclass
class Args:
    method: str = "lcm"
    prediction_type: str = "epsilon"
    loss_type: str = "huber"
    huber_c: float = 0.001
    w_min: float = 3.0
    w_max: float = 15.0
    num_ddim_timesteps: int = 50
    timestep_scaling_factor: float = 10.0


Unet = Callable[[Tensor, Tensor, Tensor], Tensor]  # (sample, timestep, encoder_hidden_states) -> output


def script_iteration(
    args: Args,
    scheduler: DDPMScheduler,
    unet: Unet,
    teacher_unet: Unet,
    latents: Tensor,
    noise: Tensor,
    prompt_embeds: Tensor,
    uncond_prompt_embeds: Tensor,
    generator: torch.Generator,
    end_timesteps: Tensor | None = None,
) -> dict[str, Tensor]:
    """One iteration of the LCM-LoRA script (method "lcm") or of the community TCD port (method "tcd")."""
    alpha_schedule = torch.sqrt(scheduler.alphas_cumprod)
    sigma_schedule = torch.sqrt(1 - scheduler.alphas_cumprod)
    solver = ScriptDDIMSolver(scheduler.alphas_cumprod.numpy(), 1000, args.num_ddim_timesteps)
    kind = args.prediction_type
    bsz = latents.shape[0]

    # 2. grid index, start and end timesteps
    topk = scheduler.config.num_train_timesteps // args.num_ddim_timesteps
    index = torch.randint(0, args.num_ddim_timesteps, (bsz,), generator=generator).long()
    start_timesteps = solver.ddim_timesteps[index]
    timesteps = start_timesteps - topk
    timesteps = torch.where(timesteps < 0, torch.zeros_like(timesteps), timesteps)
    if args.method == "tcd":  # the port draws its end index here; the test passes tcd_core's (same RNG use)
        torch.rand((bsz,), generator=generator, dtype=torch.float64)
    # 3. boundary scalings
    c_skip_start, c_out_start = (x.reshape(bsz, 1, 1, 1) for x in script_scalings(start_timesteps))
    c_skip, c_out = (x.reshape(bsz, 1, 1, 1) for x in script_scalings(timesteps))
    # 4. forward diffusion to z_{t_{n+k}}
    noisy_model_input = scheduler.add_noise(latents, noise, start_timesteps)
    # 5. guidance scale
    w = (args.w_max - args.w_min) * torch.rand((bsz,), generator=generator) + args.w_min
    w_col = w.reshape(bsz, 1, 1, 1)

    # 7. online prediction
    noise_pred = unet(noisy_model_input, start_timesteps, prompt_embeds)
    if args.method == "lcm":
        pred_x_0 = script_x0(noise_pred, start_timesteps, noisy_model_input, kind, alpha_schedule, sigma_schedule)
        model_pred = c_skip_start * noisy_model_input + c_out_start * pred_x_0
    else:
        model_pred = port_tcd(
            noise_pred, start_timesteps, end_timesteps, noisy_model_input, alpha_schedule, sigma_schedule
        )

    # 8. teacher, LCM-form CFG, one DDIM step
    with torch.no_grad():
        cond_out = teacher_unet(noisy_model_input, start_timesteps, prompt_embeds)
        cond_x0 = script_x0(cond_out, start_timesteps, noisy_model_input, kind, alpha_schedule, sigma_schedule)
        cond_eps = script_eps(cond_out, start_timesteps, noisy_model_input, kind, alpha_schedule, sigma_schedule)
        uncond_out = teacher_unet(noisy_model_input, start_timesteps, uncond_prompt_embeds)
        uncond_x0 = script_x0(uncond_out, start_timesteps, noisy_model_input, kind, alpha_schedule, sigma_schedule)
        uncond_eps = script_eps(uncond_out, start_timesteps, noisy_model_input, kind, alpha_schedule, sigma_schedule)
        pred_x0 = cond_x0 + w_col * (cond_x0 - uncond_x0)
        pred_noise = cond_eps + w_col * (cond_eps - uncond_eps)
        x_prev = solver.ddim_step(pred_x0, pred_noise, index)

    # 9. target: the same online network, no grad
    with torch.no_grad():
        target_out = unet(x_prev.float(), timesteps, prompt_embeds)
        if args.method == "lcm":
            target_x0 = script_x0(target_out, timesteps, x_prev, kind, alpha_schedule, sigma_schedule)
            target = c_skip * x_prev + c_out * target_x0
        else:
            target = port_tcd(target_out, timesteps, end_timesteps, x_prev, alpha_schedule, sigma_schedule)

    # 10. loss
    if args.loss_type == "l2":
        loss = nn.functional.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        loss = torch.mean(torch.sqrt((model_pred.float() - target.float()) ** 2 + args.huber_c**2) - args.huber_c)
    return {"loss": loss, "index": index, "w": w, "model_pred": model_pred, "target": target, "x_prev": x_prev}


def port_tcd(out: Tensor, t: Tensor, s: Tensor, x: Tensor, alphas: Tensor, sigmas: Tensor) -> Tensor:
    """The community port's TCF(1), eps-prediction only, in exponential-integrator form."""
    t_a, t_s = gather(alphas, t, x.shape), gather(sigmas, t, x.shape)
    s_a, s_s = gather(alphas, s, x.shape), gather(sigmas, s, x.shape)
    h = (torch.log(s_a) - torch.log(s_s)) - (torch.log(t_a) - torch.log(t_s))
    x0 = (x - t_s * out) / t_a
    return s_s * x / t_s - s_a * (torch.exp(-h) - 1.0) * x0


# ---------------------------------------------------------------- the networks


class TinyCondNet(nn.Module):
    """A tiny conditional conv net: timestep embedding plus mean-pooled prompt embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(4, 32, 3, padding=1)
        self.time = nn.Linear(32, 32)
        self.cond = nn.Linear(DIM, 32)
        self.mid = nn.Conv2d(32, 32, 3, padding=1)
        self.out = nn.Conv2d(32, 4, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(16) / 16)
        emb = t.float()[:, None] * freqs[None]
        emb = torch.cat([emb.sin(), emb.cos()], dim=1)
        h = nn.functional.silu(self.inp(x) + (self.time(emb) + self.cond(context.mean(1)))[:, :, None, None])
        return self.out(nn.functional.silu(self.mid(h)))


def tiny_unet() -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=DIM,
        norm_num_groups=32,
        attention_head_dim=8,
    )


def call_of(net: nn.Module) -> Unet:
    if isinstance(net, TinyCondNet):
        return lambda x, t, c: net(x, t, c)
    return lambda x, t, c: net(x, t, encoder_hidden_states=c).sample


_NETS: dict[str, tuple[nn.Module, nn.Module]] = {}


def teacher_and_student(kind: str) -> tuple[nn.Module, nn.Module]:
    """A random teacher, and a student = teacher plus a small perturbation (a 'partly trained LoRA')."""
    if kind not in _NETS:
        torch.manual_seed(0)
        teacher = TinyCondNet() if kind == "tiny" else tiny_unet()
        teacher.requires_grad_(False).eval()
        student = copy.deepcopy(teacher).requires_grad_(True).train()
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.02 * torch.randn_like(p))
        _NETS[kind] = (teacher, student)
    return _NETS[kind]


def inputs(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(BATCH, 4, 8, 8, generator=g)
    noise = torch.randn(BATCH, 4, 8, 8, generator=g)
    prompt = torch.randn(BATCH, SEQ, DIM, generator=g)
    uncond = torch.randn(1, SEQ, DIM, generator=g).expand(BATCH, SEQ, DIM).contiguous()
    return latents, noise, prompt, uncond


def scheduler_for(prediction: str) -> DDPMScheduler:
    kind = {"eps": "epsilon", "v": "v_prediction"}[prediction]
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=kind)


# ---------------------------------------------------------------- the parity tests


def test_alphas_cumprod_match_the_scripts_scheduler() -> None:
    ours = tcd_core.scaled_linear_alphas_cumprod()
    assert float((ours.float() - scheduler_for("eps").alphas_cumprod).abs().max()) < 1e-6


def _compare(
    kind: str, args: Args, seed: int, guidance: tuple[float, float], **ours_differ: object
) -> dict[str, float]:
    teacher, student = teacher_and_student(kind)
    prediction = {"epsilon": "eps", "v_prediction": "v"}[args.prediction_type]
    args.w_min, args.w_max = guidance
    cfg = DistillConfig(
        method=args.method,
        prediction_type=prediction,
        loss=args.loss_type,
        huber_c=args.huber_c,
        guidance_min=guidance[0],
        guidance_max=guidance[1],
        num_ddim_timesteps=args.num_ddim_timesteps,
        timestep_scaling=args.timestep_scaling_factor,
    )
    cfg = dataclasses.replace(cfg, **ours_differ)  # only the negative control changes anything here
    scheduler = scheduler_for(prediction)
    latents, noise, prompt, uncond = inputs(seed)
    s_call, t_call = call_of(student), call_of(teacher)

    points = draw_training_points(cfg, BATCH, torch.Generator().manual_seed(seed + 100))
    student.zero_grad(set_to_none=True)
    ours = distill_loss(cfg, scheduler.alphas_cumprod, latents, noise, points, s_call, t_call, s_call, prompt, uncond)
    ours.backward()
    our_grads = [p.grad.clone() for p in student.parameters()]
    terms = distill_terms(cfg, scheduler.alphas_cumprod, latents, noise, points, s_call, t_call, s_call, prompt, uncond)

    student.zero_grad(set_to_none=True)
    end = points.s if args.method == "tcd" else None
    gen = torch.Generator().manual_seed(seed + 100)
    ref = script_iteration(args, scheduler, s_call, t_call, latents, noise, prompt, uncond, gen, end)
    ref["loss"].backward()
    ref_grads = [p.grad.clone() for p in student.parameters()]
    student.zero_grad(set_to_none=True)

    assert torch.equal(points.index, ref["index"]) and torch.equal(points.w, ref["w"])
    grad_scale = max(float(g.abs().max()) for g in ref_grads)
    return {
        "loss": abs(ours.item() - ref["loss"].item()),
        "loss_value": ref["loss"].item(),
        "prediction": float((terms.student - ref["model_pred"]).detach().abs().max()),
        "target": float((terms.target - ref["target"]).abs().max()),
        "x_prev": float((terms.x_prev - ref["x_prev"]).abs().max()),
        "grad": max(float((a - b).abs().max()) for a, b in zip(our_grads, ref_grads, strict=True)) / grad_scale,
    }


@pytest.mark.parametrize("guidance", [(3.0, 15.0), (0.0, 0.0)], ids=["guided", "unguided"])
@pytest.mark.parametrize("loss", ["huber", "l2"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_lcm_mode_matches_the_lcm_lora_script(prediction: str, loss: str, guidance: tuple[float, float]) -> None:
    diffs = _compare("tiny", Args(method="lcm", prediction_type=prediction, loss_type=loss), 1, guidance)
    assert diffs["loss_value"] > 1e-4  # the student differs from its target: a real comparison
    assert diffs["loss"] < TOL, diffs
    assert diffs["prediction"] < 1e-4 and diffs["target"] < 1e-4 and diffs["x_prev"] < 1e-4, diffs
    assert diffs["grad"] < 1e-3, diffs


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_lcm_mode_matches_the_script_on_diffusers_unet(prediction: str) -> None:
    diffs = _compare("unet", Args(method="lcm", prediction_type=prediction), 2, (3.0, 15.0))
    assert diffs["loss_value"] > 1e-4
    assert diffs["loss"] < TOL, diffs
    assert diffs["grad"] < 1e-3, diffs


@pytest.mark.parametrize("loss", ["huber", "l2"])
@pytest.mark.parametrize("kind", ["tiny", "unet"])
def test_tcd_mode_matches_the_community_port(kind: str, loss: str) -> None:
    diffs = _compare(kind, Args(method="tcd", loss_type=loss), 3, (3.0, 15.0))
    assert diffs["loss_value"] > 1e-5
    assert diffs["loss"] < TOL, diffs
    assert diffs["grad"] < 1e-3, diffs


@pytest.mark.parametrize(
    "differ",
    [{"timestep_scaling": 0.1}, {"sigma_data": 50.0}, {"huber_c": 0.0011}, {"loss": "l2"}],
    ids=["timestep_scaling", "sigma_data", "huber_c", "loss"],
)
def test_the_comparison_detects_a_small_deviation(differ: dict[str, object]) -> None:
    """Negative control: the 1e-6 check fails when tcd_core runs with a slightly different setting.

    (The boundary scalings matter only near t = 0: c_skip(19) = 7e-6 at the default scaling 10, and
    they shift student and target alike, so the controls for them move the scalings a lot and are
    seen in the two sides of the loss.)
    """
    diffs = _compare("tiny", Args(method="lcm"), 1, (3.0, 15.0), **differ)
    assert diffs["loss"] > 10 * TOL or max(diffs["prediction"], diffs["target"]) > 1e-3, diffs
