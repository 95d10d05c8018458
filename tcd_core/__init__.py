"""TCD sampling math in pure torch: the reference's timestep schedule and Strategic Stochastic Sampling.

Nothing here imports ComfyUI; the pack's nodes adapt a ComfyUI model to these functions.
"""

from .distill import (
    EMA,
    DistillConfig,
    DistillTerms,
    FlowSchedule,
    ModelFn,
    TrainingPoints,
    VPSchedule,
    distill_loss,
    distill_terms,
    draw_training_points,
    scaled_linear_alphas_cumprod,
    shifted_flow_sigmas,
)
from .errors import TCDInputError
from .gamma import DEFAULT_GAMMA, GammaSchedule, GammaScheduleKind, parse_gamma_list
from .noise_space import SD_SPACE, LatentForm, NoiseSpace, discrete_space, flow_space, scaled_linear_sigmas
from .sampler import sample_tcd
from .schedule import (
    DEFAULT_ORIGINAL_INFERENCE_STEPS,
    NUM_TRAIN_TIMESTEPS,
    parse_timesteps,
    tcd_custom_timesteps,
    tcd_timesteps,
    timesteps_form,
)
from .step_plan import TCDStep, plan_steps, validate_sigmas

__all__ = [
    "DEFAULT_GAMMA",
    "DEFAULT_ORIGINAL_INFERENCE_STEPS",
    "GammaSchedule",
    "GammaScheduleKind",
    "LatentForm",
    "NUM_TRAIN_TIMESTEPS",
    "NoiseSpace",
    "SD_SPACE",
    "TCDInputError",
    "TCDStep",
    "discrete_space",
    "flow_space",
    "parse_gamma_list",
    "parse_timesteps",
    "plan_steps",
    "sample_tcd",
    "scaled_linear_sigmas",
    "tcd_custom_timesteps",
    "tcd_timesteps",
    "timesteps_form",
    "validate_sigmas",
]
__all__ += [
    "EMA",
    "DistillConfig",
    "DistillTerms",
    "FlowSchedule",
    "ModelFn",
    "TrainingPoints",
    "VPSchedule",
    "distill_loss",
    "distill_terms",
    "draw_training_points",
    "scaled_linear_alphas_cumprod",
    "shifted_flow_sigmas",
]
