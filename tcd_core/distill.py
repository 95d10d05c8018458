"""Trajectory Consistency Distillation: the training half (TCD paper, Sec. 4.2, Eq. 28-29, Alg. 1-2).

Everything is in diffusers' VP convention: ``x_t = a_t x0 + s_t eps`` with ``a_t = sqrt(alpha_bar_t)``,
``s_t = sqrt(1 - alpha_bar_t)``, integer training timesteps and the network's raw output (eps or v).
A model is a plain callable ``(x_t [B, ...], t int64 [B], cond) -> output``, so a ComfyUI UNet is
``lambda x, t, c: unet(x, t, context=c)``.

One iteration (``distill_loss``):

1. ``draw_training_points``: a start ``t_{n+k}`` on the skipping-step grid, the teacher's end
   ``t_n = t_{n+k} - k``, a target time ``s`` in ``[0, t_n]`` on the grid and a guidance scale ``w``.
2. ``teacher_ddim_step``: one guided DDIM step of the frozen teacher ``t_{n+k} -> t_n`` (Eq. 28,
   LCM's guidance form ``x0_w = x0_c + w (x0_c - x0_u)``).
3. ``consistency_output``: TCF(1) ``f(x_t, t, s) = a_s x0(x_t, t) + s_s eps(x_t, t)`` for the student at
   ``t_{n+k}`` and for the no-grad target at ``t_n`` (method ``"lcm"``: ``s = 0`` with LCM's
   ``c_skip`` / ``c_out`` boundary scalings instead).
4. ``distance``: pseudo-Huber or L2 between the two (Eq. 29, weighting 1).

See docs/distill.md for the choices (the ``s`` rules in particular).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

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
    "ModelFn",
    "S_RULES",
    "TrainingPoints",
    "add_noise",
    "consistency_output",
    "ddim_grid",
    "ddim_jump",
    "distance",
    "distill_loss",
    "distill_terms",
    "draw_training_points",
    "lcm_boundary_scalings",
    "scaled_linear_alphas_cumprod",
    "split_prediction",
    "teacher_ddim_step",
]

ModelFn = Callable[[Tensor, Tensor, Any], Tensor]
"""``(x_t [B, ...], t int64 [B], cond) -> raw network output`` (eps or v, as ``DistillConfig.prediction_type``)."""

DISTILL_METHODS = ("tcd", "lcm")
DISTILL_PREDICTIONS = ("eps", "v")
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
        "l2",
        "The distance d of Eq. 29: l2 = mean squared error (diffusers' --loss_type default), huber = pseudo-Huber "
        "sqrt(diff^2 + c^2) - c (as LCM-LoRA was trained).",
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
        "eps", "What the network outputs (the model's, not a user's choice).",
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

    def __post_init__(self) -> None:
        check_fields(self)
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

    @property
    def guided(self) -> bool:
        """False when the guidance range is 0..0 (Algorithm 1: one teacher forward, no uncond)."""
        return self.guidance_max > 0.0


class TrainingPoints(NamedTuple):
    """Per-sample draws of one iteration (all shape [B], on one device).

    ``index``: grid index i; ``t_start = tau_i`` (t_{n+k}); ``t_prev = max(tau_i - k, 0)`` (t_n);
    ``s``: target timestep in [0, t_prev] (0 for method "lcm"); ``w``: guidance scale (float32).
    """

    index: Tensor
    t_start: Tensor
    t_prev: Tensor
    s: Tensor
    w: Tensor


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


def _coef(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] broadcast over ``like``'s trailing dims, in ``like``'s dtype and device."""
    values = table.to(like.device)[t.to(like.device).long()]
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _alpha_sigma(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)), computed in float64 then cast."""
    table = alphas_cumprod.to(torch.float64)
    return _coef(table.sqrt(), t, like), _coef((1.0 - table).sqrt(), t, like)


def add_noise(alphas_cumprod: Tensor, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = alpha_t x0 + sigma_t noise (diffusers' ``DDPMScheduler.add_noise``)."""
    alpha, sigma = _alpha_sigma(alphas_cumprod, t, x0)
    return alpha * x0 + sigma * noise


def split_prediction(
    output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str = "eps"
) -> tuple[Tensor, Tensor]:
    """(x0, eps) implied by a network output at (x_t, t).

    eps-prediction: x0 = (x_t - sigma_t eps) / alpha_t. v-prediction (v = alpha_t eps - sigma_t x0):
    x0 = alpha_t x_t - sigma_t v, eps = alpha_t v + sigma_t x_t. Anything else is refused by name.
    """
    _require_choice("prediction_type", prediction_type, DISTILL_PREDICTIONS)
    alpha, sigma = _alpha_sigma(alphas_cumprod, t, x_t)
    if prediction_type == "eps":
        return (x_t - sigma * output) / alpha, output
    return alpha * x_t - sigma * output, alpha * output + sigma * x_t


def ddim_jump(x0: Tensor, eps: Tensor, s: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """The DDIM (first-order exponential-integrator) jump to timestep s: alpha_s x0 + sigma_s eps."""
    alpha, sigma = _alpha_sigma(alphas_cumprod, s, x0)
    return alpha * x0 + sigma * eps


def lcm_boundary_scalings(t: Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    """LCM's c_skip(t) = sd^2 / ((st)^2 + sd^2), c_out(t) = st / sqrt((st)^2 + sd^2), st = scaling * t."""
    scaled = timestep_scaling * t.to(torch.float64)
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def consistency_output(
    config: DistillConfig, alphas_cumprod: Tensor, output: Tensor, x_t: Tensor, t: Tensor, s: Tensor
) -> Tensor:
    """The consistency function from a raw network output at (x_t, t).

    method "tcd": TCF(1) f(x_t, t, s) = alpha_s x0 + sigma_s eps (f(x_t, t, t) = x_t exactly).
    method "lcm": f(x_t, t) = c_skip(t) x_t + c_out(t) x0 (``s`` ignored; it is 0).
    """
    x0, eps = split_prediction(output, x_t, t, alphas_cumprod, config.prediction_type)
    if config.method == "lcm":
        c_skip, c_out = lcm_boundary_scalings(t, config.timestep_scaling, config.sigma_data)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        c_skip = c_skip.to(x_t.device, x_t.dtype).reshape(shape)
        c_out = c_out.to(x_t.device, x_t.dtype).reshape(shape)
        return c_skip * x_t + c_out * x0
    return ddim_jump(x0, eps, s, alphas_cumprod)


def draw_training_points(
    config: DistillConfig,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TrainingPoints:
    """Per-sample grid index, start/end timesteps, target time s and guidance scale w.

    Draw order (reproducible from ``generator``, a CPU generator; results moved to ``device``):
    ``index ~ U{0..N-1}`` (``torch.randint``), then for method "tcd" the s draw, then
    ``w = (guidance_max - guidance_min) * U[0, 1) + guidance_min`` (``torch.rand``, as LCM's script).

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
    u = torch.rand(batch_size, generator=generator, dtype=torch.float32)
    w = (config.guidance_max - config.guidance_min) * u + config.guidance_min
    return TrainingPoints(*(x.to(device) if device is not None else x for x in (index, t_start, t_prev, s, w)))


def teacher_ddim_step(
    config: DistillConfig,
    alphas_cumprod: Tensor,
    x_start: Tensor,
    points: TrainingPoints,
    teacher: ModelFn,
    cond: Any,
    uncond: Any = None,
) -> Tensor:
    """x̂_{t_n}: one DDIM step of the frozen teacher from t_{n+k} to t_n, under ``torch.no_grad``.

    Guided (Algorithm 2): x0_w = x0_c + w (x0_c - x0_u), eps_w likewise (LCM's form), then
    a_{t_n} x0_w + s_{t_n} eps_w. Unguided (Algorithm 1) when the guidance range is 0..0 or
    ``uncond`` is None: one teacher forward, ``w`` unused.
    """
    with torch.no_grad():
        out_c = teacher(x_start, points.t_start, cond)
        x0, eps = split_prediction(out_c, x_start, points.t_start, alphas_cumprod, config.prediction_type)
        if config.guided and uncond is not None:
            out_u = teacher(x_start, points.t_start, uncond)
            x0_u, eps_u = split_prediction(out_u, x_start, points.t_start, alphas_cumprod, config.prediction_type)
            w = points.w.to(x_start.device, x_start.dtype).reshape(-1, *([1] * (x_start.ndim - 1)))
            x0 = x0 + w * (x0 - x0_u)
            eps = eps + w * (eps - eps_u)
        return ddim_jump(x0, eps, points.t_prev, alphas_cumprod)


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
    alphas_cumprod: Tensor,
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
    and out (``EMA.swapped_in``) never touches a graph being built.
    """
    x_start = add_noise(alphas_cumprod, x0, noise, points.t_start)
    x_prev = teacher_ddim_step(config, alphas_cumprod, x_start, points, teacher, cond, uncond)
    with torch.no_grad():
        out_target = target(x_prev, points.t_prev, cond)
        f_target = consistency_output(config, alphas_cumprod, out_target, x_prev, points.t_prev, points.s)
    out_student = student(x_start, points.t_start, cond)
    f_student = consistency_output(config, alphas_cumprod, out_student, x_start, points.t_start, points.s)
    return DistillTerms(f_student, f_target.detach(), x_start, x_prev)


def distill_loss(
    config: DistillConfig,
    alphas_cumprod: Tensor,
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

    ``x0``: clean latents [B, ...]; ``noise``: same shape; ``points``: from ``draw_training_points``.
    ``teacher``: frozen network (LoRA off); ``target``: the student's weights (stop-grad) or their EMA,
    both called under no_grad here. Only ``student``'s call carries gradient.
    """
    terms = distill_terms(config, alphas_cumprod, x0, noise, points, student, teacher, target, cond, uncond)
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
