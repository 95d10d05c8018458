"""TCD sampling math in pure torch: the reference's timestep schedule and Strategic Stochastic Sampling.

Nothing here imports ComfyUI; the pack's nodes adapt a ComfyUI model to these functions.
"""

from .errors import TCDInputError
from .gamma import GammaSchedule, parse_gamma_list
from .noise_space import SD_SPACE, LatentForm, NoiseSpace, discrete_space, flow_space, scaled_linear_sigmas
from .sampler import sample_tcd
from .schedule import tcd_custom_timesteps, tcd_timesteps
from .step_plan import TCDStep, plan_steps, validate_sigmas

__all__ = [
    "GammaSchedule",
    "LatentForm",
    "NoiseSpace",
    "SD_SPACE",
    "TCDInputError",
    "TCDStep",
    "discrete_space",
    "flow_space",
    "parse_gamma_list",
    "plan_steps",
    "sample_tcd",
    "scaled_linear_sigmas",
    "tcd_custom_timesteps",
    "tcd_timesteps",
    "validate_sigmas",
]
