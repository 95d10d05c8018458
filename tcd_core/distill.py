"""Trajectory Consistency Distillation: the training half (TCD paper, Sec. 4.2, Eq. 28-29, Alg. 1-2).

Two Gaussian paths ``x_t = alpha_t x0 + sigma_t eps``, each a ``NoiseSchedule`` over integer timestep
indices ``t = 0..T-1``:

- ``VPSchedule`` (diffusers' VP convention, SD1.x / SD2.x / SDXL): ``alpha_t = sqrt(alpha_bar_t)``,
  ``sigma_t = sqrt(1 - alpha_bar_t)``; the model is called with the integer timestep and outputs eps, v or x0.
  A bare ``alphas_cumprod`` tensor stands for it.
- ``FlowSchedule`` (rectified flow, SD3 / Flux / Qwen-Image / Z-Image): ``alpha_t = 1 - sigma_t`` on the
  model's own (shifted) sigma table; the model is called with sigma in (0, 1] and outputs the velocity
  ``v = eps - x0`` (prediction type "flow") or x0.

A model is a callable ``(x_t [B, ...], time [B], cond) -> output`` (``ModelFn``), so a ComfyUI UNet is
``lambda x, t, c: unet(x, t, context=c)`` and a flow model ``lambda x, sigma, c: model.apply_model(x, sigma, **c)``
(prediction type "x0"). A model with an embedded guidance input (Flux.1-dev) is also given ``guidance=g``.

One iteration (``distill_loss``):

1. ``draw_training_points``: a start ``t_{n+k}`` on the skipping-step grid, the teacher's end
   ``t_n = t_{n+k} - k``, a target time ``s`` in ``[0, t_n]`` on the grid, a guidance scale ``w`` and, for
   a model with an embedded guidance input, its value ``g``.
2. ``teacher_ddim_step``: one guided DDIM step of the frozen teacher ``t_{n+k} -> t_n`` (Eq. 28,
   LCM's guidance form ``x0_w = x0_c + w (x0_c - x0_u)``); on a flow schedule this is the Euler step
   of the flow ODE.
3. ``consistency_output``: TCF(1) ``f(x_t, t, s) = a_s x0(x_t, t) + s_s eps(x_t, t)`` for the student at
   ``t_{n+k}`` and for the no-grad target at ``t_n`` (method ``"lcm"``: ``s = 0`` with LCM's
   ``c_skip`` / ``c_out`` boundary scalings instead).
4. ``distance``: pseudo-Huber or L2 between the two (Eq. 29, weighting 1).

See docs/distill.md for the choices (the ``s`` rules, the flow path and embedded guidance in particular).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from .errors import TCDInputError
from .settings import Setting, check_fields, setting, setting_of

__all__ = [
    "DISTILL_LOSSES",
    "DISTILL_METHODS",
    "DISTILL_PREDICTIONS",
    "DistillConfig",
    "DistillTerms",
    "EMA",
    "FlowSchedule",
    "ModelFn",
    "NoiseSchedule",
    "S_RULES",
    "TrainingPoints",
    "VPSchedule",
    "add_noise",
    "consistency_output",
    "ddim_grid",
    "ddim_jump",
    "distance",
    "distill_loss",
    "distill_terms",
    "draw_training_points",
    "lcm_boundary_scalings",
    "noise_schedule",
    "scaled_linear_alphas_cumprod",
    "shifted_flow_sigmas",
    "split_prediction",
    "teacher_ddim_step",
]

ModelFn = Callable[..., Tensor]
"""``(x_t [B, ...], time [B], cond) -> network output`` (eps, v, flow velocity or x0, as
``DistillConfig.prediction_type``). ``time`` is the schedule's ``model_time``: the int64 timestep on a VP
schedule, sigma (float, at least float32) on a flow schedule. With ``DistillConfig.embedded_guidance_input``
every call also passes ``guidance=g`` (float32 [B], the per-sample ``TrainingPoints.g``)."""

DISTILL_METHODS = ("tcd", "lcm")
DISTILL_PREDICTIONS = ("eps", "v", "flow", "x0")
"""eps / v: VP outputs (diffusers' epsilon / v_prediction); flow: the velocity ``v = eps - x0`` of a flow model
(ComfyUI's CONST); x0: the clean estimate on either path (ComfyUI's ``apply_model``)."""
DISTILL_LOSSES = ("huber", "l2")
S_RULES = ("uniform", "uniform+zero", "uniform+zero-ramp")
"""How the target time ``s`` is drawn (method ``"tcd"``), see ``draw_training_points``."""


def _require_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    Setting("", kind=str, choices=allowed).check(name, value)


@dataclass(frozen=True)
class DistillConfig:
    """The settings of one distillation run, each with its bounds and tooltip (``tcd_core.settings``);
    a value outside them is refused on construction, naming the field.

    Defaults follow diffusers' LCM-LoRA scripts (``examples/consistency_distillation/
    train_lcm_distill_lora_sdxl.py``; the SD ``_wds`` one uses guidance 5..15): 50 DDIM timesteps,
    guidance 3..15 (LCM's ``w``, one less than the usual CFG scale), timestep scaling 10 and
    ``sigma_data = 0.5`` for the LCM boundary condition, L2 distance (the scripts' ``--loss_type``
    default). The target is an EMA of the trained weights with decay 0.95 (the LCM paper's; the LoRA
    scripts use stop-grad, ``ema_decay=0``). ``loss="huber"`` with ``c = 0.001`` is the pseudo-Huber that
    LCM-LoRA's commands pass. Fields are in the node's input order.
    """

    guidance_min: float = setting(
        3.0,
        "Lowest guidance scale w of the teacher, drawn per sample in [guidance_min, guidance_max] (LCM's form: "
        "w is the CFG scale minus 1; 3..15 as the LCM-LoRA script). 0..0 trains an unguided teacher.",
        low=0.0, high=100.0, step=0.1, flag="--w_min",
    )  # fmt: skip
    guidance_max: float = setting(
        15.0, "Highest guidance scale w of the teacher; at least guidance_min.",
        low=0.0, high=100.0, step=0.1, flag="--w_max",
    )  # fmt: skip
    num_ddim_timesteps: int = setting(
        50,
        "Points of the skipping-step grid: the teacher jumps k = 1000 / N timesteps per step (50 as LCM and TCD; "
        "TCD samples on the same 50-point grid).",
        low=1, high=1000,
    )  # fmt: skip
    ema_decay: float = setting(
        0.95,
        "The target network: 0 = the student itself without gradient (stop-grad, as LCM-LoRA); above 0 = an "
        "exponential moving average of the LoRA with this decay (e.g. 0.95).",
        low=0.0, high=0.9999, step=0.0001,
    )  # fmt: skip
    loss: str = setting(
        "huber",
        "The distance d of Eq. 29: huber = pseudo-Huber sqrt(diff^2 + c^2) - c (as LCM-LoRA was trained; closer to "
        "the teacher than l2 at 2-8 steps in BENCHMARKS.md), l2 = mean squared error (diffusers' --loss_type "
        "default).",
        choices=DISTILL_LOSSES, flag="--loss_type",
    )  # fmt: skip
    huber_c: float = setting(
        0.001, "The pseudo-Huber constant c (0.001 as LCM's script); unused with l2.",
        low=1e-6, high=10.0, step=0.0001,
    )  # fmt: skip
    s_rule: str = setting(
        "uniform",
        "How the target time s in [0, t_n] is drawn: uniform = uniform on the grid (the paper's rule); "
        "uniform+zero = s = 0 with probability s_zero_share, else uniform; uniform+zero-ramp = that share growing "
        "with t (trains the 1-2-step jumps to 0).",
        choices=S_RULES,
    )  # fmt: skip
    s_zero_share: float = setting(
        0.2, "Share of s = 0 draws for the uniform+zero rules; unused with uniform.", low=0.0, high=1.0, step=0.01
    )
    method: str = setting(
        "tcd",
        "tcd: the trajectory consistency function TCF(1) (sample with the TCD Sampler). lcm: latent consistency "
        "distillation (s = 0 with LCM's boundary scalings), an LCM-LoRA.",
        choices=DISTILL_METHODS,
    )
    prediction_type: str = setting(
        "eps",
        "What the network outputs (the model's, not a user's choice): eps or v on a VP schedule, flow (the "
        "velocity eps - x0) on a flow schedule, x0 on either.",
        choices=DISTILL_PREDICTIONS, node=False, cli=False,
    )  # fmt: skip
    num_train_timesteps: int = setting(
        1000, "Timesteps of the model's training schedule.", low=2, high=100_000, node=False, cli=False
    )
    timestep_scaling: float = setting(
        10.0, "LCM's boundary condition: c_skip / c_out at timestep_scaling * t.",
        low=0.0, high=1e6, node=False, flag="--timestep_scaling_factor",
    )  # fmt: skip
    sigma_data: float = setting(
        0.5, "LCM's boundary condition's sigma_data.", low=1e-6, high=1e6, node=False, cli=False
    )
    embedded_guidance_input: bool = setting(
        False,
        "The model takes its guidance scale as an input (Flux.1-dev's guidance embedding), the model's, not a "
        "user's choice; then an embedded guidance range must be given, otherwise it must not.",
        node=False, cli=False,
    )  # fmt: skip
    embedded_guidance_min: float | None = setting(
        None,
        "Lowest embedded guidance g, drawn per sample in [embedded_guidance_min, embedded_guidance_max] and given "
        "to the teacher, the target and the student alike (one forward each, no second pass); the LoRA then "
        "samples at the g users set in that range with CFG 1 (e.g. 3.5..3.5, ComfyUI's FluxGuidance default). "
        "Only for a model with an embedded guidance input.",
        kind=float, low=0.0, high=100.0, step=0.1, optional=True, node=False, cli=False,
    )  # fmt: skip
    embedded_guidance_max: float | None = setting(
        None, "Highest embedded guidance g; at least embedded_guidance_min.",
        kind=float, low=0.0, high=100.0, step=0.1, optional=True, node=False, cli=False,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)
        self._check_embedded_guidance()
        if self.num_ddim_timesteps > self.num_train_timesteps:
            raise TCDInputError.of(
                "num_ddim_timesteps",
                f"must be a whole number in 1..{self.num_train_timesteps} (num_train_timesteps), "
                f"got {self.num_ddim_timesteps}",
            )
        if self.guidance_min > self.guidance_max:
            raise TCDInputError.of(
                "guidance_min",
                f"must be <= guidance_max, got guidance_min={self.guidance_min} > guidance_max={self.guidance_max}",
            )

    @property
    def skip(self) -> int:
        """The skipping step k = num_train_timesteps // num_ddim_timesteps."""
        return self.num_train_timesteps // self.num_ddim_timesteps

    def _check_embedded_guidance(self) -> None:
        """The embedded guidance range is given exactly when the model has such an input, and is ordered."""
        low, high = self.embedded_guidance_min, self.embedded_guidance_max
        spec = setting_of(self, "embedded_guidance_min")
        allowed = f"{spec.low!r}, {spec.high!r}"
        if low is None and high is None:
            if self.embedded_guidance_input:
                raise TCDInputError.of(
                    "embedded_guidance_min",
                    f"must be given (a number in [{allowed}], with embedded_guidance_max) for a model with an embedded "
                    "guidance input (embedded_guidance_input, Flux.1-dev): the guidance the LoRA will sample at, "
                    "e.g. 3.5..3.5",
                )
            return
        if not self.embedded_guidance_input:
            name = "embedded_guidance_min" if low is not None else "embedded_guidance_max"
            raise TCDInputError.of(
                name,
                "must be left unset (None) for a model without an embedded guidance input (embedded_guidance_input "
                "is false); its guidance is true CFG with a negative prompt: guidance_min / guidance_max",
            )
        if low is None or high is None:
            missing, given = ("embedded_guidance_min", high) if low is None else ("embedded_guidance_max", low)
            raise TCDInputError.of(
                missing, f"must be given with the other end of the range, a number in [{allowed}] (got None, {given})"
            )
        if low > high:
            raise TCDInputError.of(
                "embedded_guidance_min",
                f"must be <= embedded_guidance_max, got embedded_guidance_min={low} > embedded_guidance_max={high}",
            )

    @property
    def guided(self) -> bool:
        """False when the guidance range is 0..0 (Algorithm 1: one teacher forward, no uncond)."""
        return self.guidance_max > 0.0


class TrainingPoints(NamedTuple):
    """Per-sample draws of one iteration (all shape [B], on one device).

    ``index``: grid index i; ``t_start = tau_i`` (t_{n+k}); ``t_prev = max(tau_i - k, 0)`` (t_n);
    ``s``: target timestep in [0, t_prev] (0 for method "lcm"); ``w``: guidance scale (float32); ``g``: the
    embedded guidance given to every model call (float32; zeros, unused, without ``embedded_guidance_input``).
    The timesteps index the schedule's table (a flow schedule's sigma is ``schedule.sigmas[t]``).
    """

    index: Tensor
    t_start: Tensor
    t_prev: Tensor
    s: Tensor
    w: Tensor
    g: Tensor | None = None


class DistillTerms(NamedTuple):
    """What the loss compares: ``student`` (with grad) against ``target`` (no grad)."""

    student: Tensor  # f_student(x_{t_{n+k}}, t_{n+k}, s)
    target: Tensor  # f_target(x̂_{t_n}, t_n, s)
    x_start: Tensor  # x_{t_{n+k}} = alpha x0 + sigma noise
    x_prev: Tensor  # x̂_{t_n}, the teacher's DDIM step


def scaled_linear_alphas_cumprod(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """alpha_bar[t] for SD's ``scaled_linear`` betas (float64, as diffusers' DDPMScheduler builds them)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_grid(num_ddim_timesteps: int = 50, num_train_timesteps: int = 1000) -> Tensor:
    """The skipping-step grid tau_i = (i + 1) k - 1, i = 0..N-1 (int64; LCM's DDIMSolver timesteps)."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.int64) * k - 1


def shifted_flow_sigmas(shift: float = 1.0, num_train_timesteps: int = 1000) -> Tensor:
    """sigma[t] = shift u / (1 + (shift - 1) u), u = (t + 1) / T (float64, rising to 1).

    The table of ComfyUI's ``ModelSamplingDiscreteFlow`` (SD3: shift 3) and, reversed, the training sigmas of
    diffusers' ``FlowMatchEulerDiscreteScheduler``; for tests and references. A ComfyUI model's own table is its
    ``model_sampling.sigmas`` (``FlowSchedule`` takes that, whatever the family's shift form).
    """
    Setting("", low=1e-3, high=1e3).check("shift", shift)
    Setting("", kind=int, low=2, high=100_000).check("num_train_timesteps", num_train_timesteps)
    u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    return shift * u / (1.0 + (shift - 1.0) * u)


def _coef(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] broadcast over ``like``'s trailing dims, in ``like``'s dtype and device."""
    values = table.to(like.device)[t.to(like.device).long()]
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True, eq=False)
class VPSchedule:
    """diffusers' VP path x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps over integer timesteps.

    ``alphas_cumprod``: the table alpha_bar[t], t = 0..T-1 (e.g. ``scaled_linear_alphas_cumprod()``, or
    ``1 / (1 + sigma^2)`` of a ComfyUI model's VE sigmas). The model is called with the integer timestep.
    """

    alphas_cumprod: Tensor
    path: ClassVar[str] = "VP"
    predictions: ClassVar[tuple[str, ...]] = ("eps", "v", "x0")

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), computed in float64 then cast."""
        table = self.alphas_cumprod.to(torch.float64)
        return _coef(table.sqrt(), t, like), _coef((1.0 - table).sqrt(), t, like)

    def model_time(self, t: Tensor, like: Tensor) -> Tensor:
        """What the model is called with: the integer timestep itself."""
        return t


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """The rectified-flow path x_t = (1 - sigma_t) x0 + sigma_t eps on the model's own sigma table.

    ``sigmas``: sigma[t] for the timestep indices t = 0..T-1, strictly rising, in (0, 1]: ComfyUI's
    ``model_sampling.sigmas`` of a CONST model (``ModelSamplingDiscreteFlow`` with the model's shift,
    ``ModelSamplingFlux``), so the skipping grid ``tau_i = (i + 1) k - 1`` picks the model's own shifted sigmas
    (at N = 50 the sigmas of ComfyUI's ``simple`` scheduler at 50 steps). ``from_sigma_fn`` builds the table from
    a function of u = (t + 1) / T. The model is called with sigma; (alpha, sigma) = (1 - sigma, sigma).
    """

    sigmas: Tensor
    path: ClassVar[str] = "flow"
    predictions: ClassVar[tuple[str, ...]] = ("flow", "x0")

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", _checked_flow_sigmas(self.sigmas))

    @classmethod
    def from_sigma_fn(cls, sigma_fn: Callable[[Tensor], Tensor], num_train_timesteps: int = 1000) -> FlowSchedule:
        """The table ``sigma_fn(u)``, u = (t + 1) / T for t = 0..T-1 (float64), e.g. a model's shifted sigma."""
        Setting("", kind=int, low=2, high=100_000).check("num_train_timesteps", num_train_timesteps)
        u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        return cls(torch.as_tensor(sigma_fn(u)))

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def alpha_sigma(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) = (1 - sigma[t], sigma[t]), computed in float64 then cast."""
        return _coef(1.0 - self.sigmas, t, like), _coef(self.sigmas, t, like)

    def model_time(self, t: Tensor, like: Tensor) -> Tensor:
        """What the model is called with: sigma[t], [B], on ``like``'s device in at least float32."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        return self.sigmas.to(like.device)[t.to(like.device).long()].to(dtype)


NoiseSchedule = VPSchedule | FlowSchedule


def _checked_flow_sigmas(sigmas: Any) -> Tensor:
    """A flow sigma table as float64, or TCDInputError naming ``sigmas`` and what it must be."""
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1 or sigmas.numel() < 2 or not sigmas.is_floating_point():
        what = f"a {sigmas.ndim}-D {sigmas.dtype} tensor of {sigmas.numel()}" if isinstance(sigmas, Tensor) else sigmas
        raise TCDInputError.of(
            "sigmas", f"must be a 1-D float tensor of at least 2 noise levels (sigma[t], t = 0..T-1), got {what!s:.80}"
        )
    table = sigmas.detach().to(torch.float64)
    values = table.cpu()
    if not bool(torch.isfinite(values).all()) or float(values.min()) <= 0.0 or float(values.max()) > 1.0:
        raise TCDInputError.of(
            "sigmas",
            f"must lie in (0, 1] (x = (1 - sigma) x0 + sigma eps; 0 is the clean end, never a training point), got "
            f"values in [{float(values.min()):.6g}, {float(values.max()):.6g}]",
        )
    falls = (values[1:] <= values[:-1]).nonzero()
    if falls.numel():
        i = int(falls[0, 0])
        raise TCDInputError.of(
            "sigmas",
            f"must rise strictly with the timestep (model_sampling.sigmas order: read from the noisiest end, the grid "
            f"must strictly decrease), but sigmas[{i + 1}]={float(values[i + 1]):.6g} is not above "
            f"sigmas[{i}]={float(values[i]):.6g}",
        )
    return table


def _as_schedule(schedule: NoiseSchedule | Tensor) -> NoiseSchedule:
    """A schedule object; a bare tensor is a VP ``alphas_cumprod`` table."""
    if isinstance(schedule, Tensor):
        return VPSchedule(schedule)
    if not isinstance(schedule, (VPSchedule, FlowSchedule)):
        what = type(schedule).__name__
        raise TCDInputError.of("schedule", f"must be a VPSchedule, a FlowSchedule or alphas_cumprod, got {what}")
    return schedule


def _check_prediction(schedule: NoiseSchedule, prediction_type: str) -> None:
    """The prediction type is known and belongs to the schedule's path (eps / v on VP, flow on flow, x0 on both)."""
    _require_choice("prediction_type", prediction_type, DISTILL_PREDICTIONS)
    if prediction_type not in schedule.predictions:
        allowed = ", ".join(repr(p) for p in schedule.predictions)
        raise TCDInputError.of(
            "prediction_type",
            f"must be one of {allowed} on a {schedule.path} schedule ({type(schedule).__name__}), got "
            f"{prediction_type!r}: a flow model takes a FlowSchedule of its sigmas, a VP model its alphas_cumprod",
        )


def noise_schedule(config: DistillConfig, schedule: NoiseSchedule | Tensor) -> NoiseSchedule:
    """The schedule as an object, checked against ``config`` before any work: the prediction type belongs to its
    path and its table has ``num_train_timesteps`` entries (TCDInputError naming the field otherwise)."""
    schedule = _as_schedule(schedule)
    _check_prediction(schedule, config.prediction_type)
    if schedule.num_timesteps != config.num_train_timesteps:
        raise TCDInputError.of(
            "num_train_timesteps",
            f"must equal the length of the schedule's table ({schedule.num_timesteps}), got "
            f"{config.num_train_timesteps}",
        )
    return schedule


def add_noise(schedule: NoiseSchedule | Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = alpha_t x0 + sigma_t noise (diffusers' ``DDPMScheduler.add_noise``; on a flow schedule its
    ``FlowMatchEulerDiscreteScheduler.scale_noise``, (1 - sigma) x0 + sigma noise)."""
    alpha, sigma = _as_schedule(schedule).alpha_sigma(t, x0)
    return alpha * x0 + sigma * noise


def split_prediction(
    output: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule | Tensor, prediction_type: str = "eps"
) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by a network output at (x_t, t).

    eps-prediction: x0 = (x_t - sigma_t eps) / alpha_t. v-prediction (v = alpha_t eps - sigma_t x0):
    x0 = alpha_t x_t - sigma_t v, eps = alpha_t v + sigma_t x_t. flow (velocity u = eps - x0, alpha_t = 1 -
    sigma_t): x0 = x_t - sigma_t u, eps = x_t + alpha_t u. x0: eps = (x_t - alpha_t x0) / sigma_t. A type the
    schedule's path does not take is refused by name.
    """
    schedule = _as_schedule(schedule)
    _check_prediction(schedule, prediction_type)
    alpha, sigma = schedule.alpha_sigma(t, x_t)
    if prediction_type == "eps":
        return (x_t - sigma * output) / alpha, output
    if prediction_type == "v":
        return alpha * x_t - sigma * output, alpha * output + sigma * x_t
    if prediction_type == "flow":
        return x_t - sigma * output, x_t + alpha * output
    return output, (x_t - alpha * output) / sigma


def ddim_jump(x0: Tensor, eps: Tensor, s: Tensor, schedule: NoiseSchedule | Tensor) -> Tensor:
    """The DDIM (first-order exponential-integrator) jump to timestep s: alpha_s x0 + sigma_s eps.

    On a flow schedule, with (x0, eps) from x_t, this is (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) x0,
    the Euler step x_t + (sigma_s - sigma_t) u of the flow ODE (docs/distill.md).
    """
    alpha, sigma = _as_schedule(schedule).alpha_sigma(s, x0)
    return alpha * x0 + sigma * eps


def lcm_boundary_scalings(t: Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """LCM's c_skip(t) = sd^2 / ((st)^2 + sd^2), c_out(t) = st / sqrt((st)^2 + sd^2), st = scaling * t."""
    scaled = timestep_scaling * t.to(torch.float64)
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_output(
    config: DistillConfig, schedule: NoiseSchedule | Tensor, output: Tensor, x_t: Tensor, t: Tensor, s: Tensor
) -> Tensor:
    """The consistency function from a raw network output at (x_t, t).

    method "tcd": TCF(1) f(x_t, t, s) = alpha_s x0 + sigma_s eps (f(x_t, t, t) = x_t exactly); on a flow
    schedule (sigma_s / sigma_t) x_t + (1 - sigma_s / sigma_t) x0.
    method "lcm": f(x_t, t) = c_skip(t) x_t + c_out(t) x0 (``s`` ignored; it is 0), the scalings at the
    timestep index t on either path (on a flow schedule f is FlowMatchLCMScheduler's x0 = x_t - sigma_t u up to
    c_skip(t) <= 7e-6 off the bottom of the grid, and x_t at t = 0).
    """
    schedule = noise_schedule(config, schedule)
    x0, eps = split_prediction(output, x_t, t, schedule, config.prediction_type)
    if config.method == "lcm":
        c_skip, c_out = lcm_boundary_scalings(t, config.timestep_scaling, config.sigma_data)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        c_skip = c_skip.to(x_t.device, x_t.dtype).reshape(shape)
        c_out = c_out.to(x_t.device, x_t.dtype).reshape(shape)
        return c_skip * x_t + c_out * x0
    return ddim_jump(x0, eps, s, schedule)


def draw_training_points(
    config: DistillConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TrainingPoints:
    """Per-sample grid index, start/end timesteps, target time s, guidance scale w and embedded guidance g.

    Draw order (reproducible from ``generator``, a CPU generator; results moved to ``device``):
    ``index ~ U{0..N-1}`` (``torch.randint``), then for method "tcd" the s draw, then
    ``w = (guidance_max - guidance_min) * U[0, 1) + guidance_min`` (``torch.rand``, as LCM's script), then,
    only with ``embedded_guidance_input``, ``g`` from its range the same way (so the other draws do not move).
    The draws are timestep indices, the same on a VP and on a flow schedule.

    s rules (``j`` indexes the grid, ``s = max(tau_j - k, 0)`` is always on the grid and <= t_n):
    - "uniform": j ~ U{0..i} (the community TCD port): s uniform over {0, tau_0, ..., t_n}.
    - "uniform+zero": s = 0 with probability ``s_zero_share``, else "uniform".
    - "uniform+zero-ramp": s = 0 with probability ``s_zero_share * i / (N - 1)`` (none at the
      bottom of the grid, the full share at the top, where 1-2-step sampling jumps to 0), else "uniform".
    """
    Setting("", kind=int, low=1).check("batch_size", batch_size)
    n, k = config.num_ddim_timesteps, config.skip
    index = torch.randint(0, n, (batch_size,), generator=generator, dtype=torch.int64)
    t_start = (index + 1) * k - 1
    t_prev = (t_start - k).clamp(min=0)
    if config.method == "lcm":
        s = torch.zeros_like(t_prev)
    else:
        j = (torch.rand(batch_size, generator=generator, dtype=torch.float64) * (index + 1)).long()
        j = torch.minimum(j, index)  # guard the float edge; j uniform in {0..i}
        if config.s_rule != "uniform":
            share = torch.full((batch_size,), float(config.s_zero_share), dtype=torch.float64)
            if config.s_rule == "uniform+zero-ramp":
                share = share * index.to(torch.float64) / max(n - 1, 1)
            zero = torch.rand(batch_size, generator=generator, dtype=torch.float64) < share
            j = torch.where(zero, torch.zeros_like(j), j)
        s = ((j + 1) * k - 1 - k).clamp(min=0)
    w = _uniform(config.guidance_min, config.guidance_max, batch_size, generator)
    if config.embedded_guidance_input:
        g = _uniform(config.embedded_guidance_min, config.embedded_guidance_max, batch_size, generator)
    else:
        g = torch.zeros(batch_size, dtype=torch.float32)
    drawn = (index, t_start, t_prev, s, w, g)
    return TrainingPoints(*(x.to(device) if device is not None else x for x in drawn))


def _uniform(low: float, high: float, batch_size: int, generator: torch.Generator | None) -> Tensor:
    """(high - low) * U[0, 1) + low in float32, LCM's script's draw of w."""
    u = torch.rand(batch_size, generator=generator, dtype=torch.float32)
    return (high - low) * u + low


def _embedded_guidance(config: DistillConfig, points: TrainingPoints) -> Tensor | None:
    """The per-sample g every model call takes, or None for a model without an embedded guidance input."""
    if not config.embedded_guidance_input:
        return None
    if points.g is None:
        raise TCDInputError.of(
            "points.g", "must hold the per-sample embedded guidance (draw_training_points draws it) when "
            "embedded_guidance_input is set"
        )  # fmt: skip
    return points.g


def _forward(model: ModelFn, x: Tensor, time: Tensor, cond: Any, guidance: Tensor | None) -> Tensor:
    """One model call; a model with an embedded guidance input also gets ``guidance=g`` on ``x``'s device."""
    if guidance is None:
        return model(x, time, cond)
    return model(x, time, cond, guidance=guidance.to(x.device))


def teacher_ddim_step(
    config: DistillConfig,
    schedule: NoiseSchedule | Tensor,
    x_start: Tensor,
    points: TrainingPoints,
    teacher: ModelFn,
    cond: Any,
    uncond: Any = None,
) -> Tensor:
    """x̂_{t_n}: one DDIM step of the frozen teacher from t_{n+k} to t_n, under ``torch.no_grad``.

    Guided (Algorithm 2): x0_w = x0_c + w (x0_c - x0_u), eps_w likewise (LCM's form), then
    a_{t_n} x0_w + s_{t_n} eps_w. Unguided (Algorithm 1) when the guidance range is 0..0 or
    ``uncond`` is None: one teacher forward, ``w`` unused. On a flow schedule this is the Euler step
    x + (sigma_{t_n} - sigma_{t_{n+k}}) u_w with u_w = u_c + w (u_c - u_u), true CFG on the velocity. A model
    with an embedded guidance input gets ``points.g`` in each forward (Flux.1-dev: no second pass).
    """
    schedule = noise_schedule(config, schedule)
    guidance = _embedded_guidance(config, points)
    time = schedule.model_time(points.t_start, x_start)
    with torch.no_grad():
        out_c = _forward(teacher, x_start, time, cond, guidance)
        x0, eps = split_prediction(out_c, x_start, points.t_start, schedule, config.prediction_type)
        if config.guided and uncond is not None:
            out_u = _forward(teacher, x_start, time, uncond, guidance)
            x0_u, eps_u = split_prediction(out_u, x_start, points.t_start, schedule, config.prediction_type)
            w = points.w.to(x_start.device, x_start.dtype).reshape(-1, *([1] * (x_start.ndim - 1)))
            x0 = x0 + w * (x0 - x0_u)
            eps = eps + w * (eps - eps_u)
        return ddim_jump(x0, eps, points.t_prev, schedule)


def distance(config: DistillConfig, student: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """d of Eq. 29 as LCM's script: mean of sqrt((a - b)^2 + c^2) - c (elementwise), or the MSE.

    Computed in at least float32; per-sample mean, then the batch mean (equal to the mean over
    everything, as the script takes it). ``reduction="none"``: the per-sample means, shape [B].
    """
    _require_choice("reduction", reduction, ("mean", "none"))
    dtype = torch.promote_types(student.dtype, torch.float32)
    diff = student.to(dtype) - target.to(dtype)
    if config.loss == "huber":
        per_element = torch.sqrt(diff**2 + config.huber_c**2) - config.huber_c
    else:
        per_element = diff**2
    per_sample = per_element.flatten(1).mean(dim=1)
    return per_sample if reduction == "none" else per_sample.mean()


def distill_terms(
    config: DistillConfig,
    schedule: NoiseSchedule | Tensor,
    x0: Tensor,
    noise: Tensor,
    points: TrainingPoints,
    student: ModelFn,
    teacher: ModelFn,
    target: ModelFn,
    cond: Any,
    uncond: Any = None,
) -> DistillTerms:
    """The two sides of Eq. 29. Calls, in order: teacher (1 or 2 forwards, no grad), target (no grad),
    student (with grad). The target runs before the student, so a target that swaps EMA weights in
    and out (``EMA.swapped_in``) never touches a graph being built. The schedule, the prediction type and
    the embedded guidance are checked before the first call.
    """
    schedule = noise_schedule(config, schedule)
    guidance = _embedded_guidance(config, points)
    x_start = add_noise(schedule, x0, noise, points.t_start)
    x_prev = teacher_ddim_step(config, schedule, x_start, points, teacher, cond, uncond)
    with torch.no_grad():
        out_target = _forward(target, x_prev, schedule.model_time(points.t_prev, x_prev), cond, guidance)
        f_target = consistency_output(config, schedule, out_target, x_prev, points.t_prev, points.s)
    out_student = _forward(student, x_start, schedule.model_time(points.t_start, x_start), cond, guidance)
    f_student = consistency_output(config, schedule, out_student, x_start, points.t_start, points.s)
    return DistillTerms(f_student, f_target.detach(), x_start, x_prev)


def distill_loss(
    config: DistillConfig,
    schedule: NoiseSchedule | Tensor,
    x0: Tensor,
    noise: Tensor,
    points: TrainingPoints,
    student: ModelFn,
    teacher: ModelFn,
    target: ModelFn,
    cond: Any,
    uncond: Any = None,
) -> Tensor:
    """Scalar loss of Eq. 29 (weighting 1): d(f_student(x_{t_{n+k}}, t_{n+k}, s), f_target(x̂_{t_n}, t_n, s)).

    ``schedule``: a ``VPSchedule`` / ``FlowSchedule`` (a bare tensor: VP ``alphas_cumprod``); ``x0``: clean
    latents [B, ...]; ``noise``: same shape; ``points``: from ``draw_training_points``.
    ``teacher``: frozen network (LoRA off); ``target``: the student's weights (stop-grad) or their EMA,
    both called under no_grad here. Only ``student``'s call carries gradient.
    """
    terms = distill_terms(config, schedule, x0, noise, points, student, teacher, target, cond, uncond)
    return distance(config, terms.student, terms.target)


class EMA:
    """Exponential moving average of trained weights, the target theta- <- mu theta- + (1 - mu) theta.

    ``params``: a sequence of tensors (e.g. ``[p for p in net.parameters() if p.requires_grad]``) or a
    mapping name -> tensor (a state dict); later calls must pass the same kind in the same order / keys.
    The shadow copies start equal to ``params``. With ``decay = 0`` they simply track the weights.
    """

    def __init__(
        self, params: Iterable[Tensor] | Mapping[str, Tensor], decay: float, dtype: torch.dtype | None = None
    ) -> None:
        setting_of(DistillConfig, "ema_decay").check("ema_decay", decay)
        self.decay = float(decay)
        self.shadow = [p.detach().clone().to(dtype or p.dtype) for p in self._tensors(params)]

    @staticmethod
    def _tensors(params: Iterable[Tensor] | Mapping[str, Tensor]) -> list[Tensor]:
        if isinstance(params, Mapping):
            return [params[key] for key in sorted(params)]
        return list(params)

    def _paired(self, params: Iterable[Tensor] | Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
        tensors = self._tensors(params)
        if len(tensors) != len(self.shadow):
            raise TCDInputError(f"EMA holds {len(self.shadow)} tensors, got {len(tensors)}")
        return list(zip(self.shadow, tensors, strict=True))

    @torch.no_grad()
    def update(self, params: Iterable[Tensor] | Mapping[str, Tensor]) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, for each tensor (call after optimizer.step)."""
        for shadow, p in self._paired(params):
            shadow.lerp_(p.detach().to(shadow.dtype), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: Iterable[Tensor] | Mapping[str, Tensor]) -> None:
        """Write the averages into ``params`` in place."""
        for shadow, p in self._paired(params):
            p.copy_(shadow.to(p.dtype))

    @contextmanager
    def swapped_in(self, params: Iterable[Tensor] | Mapping[str, Tensor]) -> Iterator[None]:
        """Run the block with the averages in ``params`` (values copied in via ``.data``), then restore."""
        pairs = self._paired(params)
        saved = [p.data.clone() for _, p in pairs]
        try:
            for shadow, p in pairs:
                p.data.copy_(shadow.to(p.dtype))
            yield
        finally:
            for (_, p), old in zip(pairs, saved, strict=True):
                p.data.copy_(old)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shadow = list(state["shadow"])
        if len(shadow) != len(self.shadow):
            raise TCDInputError(f"EMA holds {len(self.shadow)} tensors, the state has {len(shadow)}")
        self.decay = float(state["decay"])
        self.shadow = [s.clone() for s in shadow]
