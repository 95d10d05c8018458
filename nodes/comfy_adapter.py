"""Adapting a ComfyUI model to tcd_core: its noise space, its TCD sigmas, its seeded noise."""

from __future__ import annotations

import logging
import weakref
from typing import Any

import comfy.model_sampling
import torch
from comfy.k_diffusion import sampling as k_diffusion_sampling
from torch import Tensor

from .. import tcd_core

log = logging.getLogger("comfyui-tcd-sampling")

# With KSampler's denoise, the schedule is computed for steps / denoise steps: past the reference's
# 50-point grid, the grid grows with the step count instead of failing.
DEFAULT_ORIGINAL_STEPS = 50
MAX_GRID_STEPS = 1000  # the models' training timesteps: the finest grid there is
DEFAULT_GAMMA = tcd_core.GammaSchedule.constant(0.3)  # the reference's eta; KSampler's `tcd` uses it


def _on_device_of(model_sampling: torch.nn.Module, fn: Any) -> Any:
    """Call a model_sampling map with tensors on its buffers' device; results come back to the CPU."""

    def mapped(values: Tensor) -> Tensor:
        device = next(model_sampling.buffers(), values).device  # looked up per call: models move
        return fn(values.to(device)).cpu()

    return mapped


_FLOW_SPACE = tcd_core.flow_space()
_DISCRETE_SPACES: weakref.WeakKeyDictionary[Any, tcd_core.NoiseSpace] = weakref.WeakKeyDictionary()


def noise_space_for(model_sampling: Any) -> tcd_core.NoiseSpace:
    """The tcd_core space of a ComfyUI model: discrete VP (eps, v, zero-terminal-SNR) or flow.

    One space per model_sampling object, so tcd_core's plan cache hits on repeated runs.
    """
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return _FLOW_SPACE
    if isinstance(model_sampling, comfy.model_sampling.ModelSamplingDiscrete):
        space = _DISCRETE_SPACES.get(model_sampling)
        if space is None:
            space = _DISCRETE_SPACES[model_sampling] = tcd_core.NoiseSpace(
                tcd_core.LatentForm.VE,
                timestep=_on_device_of(model_sampling, model_sampling.timestep),
                sigma=_on_device_of(model_sampling, model_sampling.sigma),
                discrete=True,
            )
        return space
    raise tcd_core.TCDInputError(
        f"TCD works with discrete-timestep models (SD1.5, SD2.x, SDXL; eps, v-prediction, zero-terminal-SNR) "
        f"and flow models (SD3, Flux); this model samples with {type(model_sampling).__name__}"
    )


def tcd_sigmas(
    model_sampling: Any, steps: int, original_inference_steps: int = DEFAULT_ORIGINAL_STEPS, strength: float = 1.0
) -> Tensor:
    """TCD's timesteps (diffusers' set_timesteps) as this model's sigmas, with the final 0."""
    timesteps = tcd_core.tcd_timesteps(steps, original_inference_steps, strength)
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        # Flow models: the same grid in normalised time, through the model's own shift.
        sigmas = [model_sampling.percent_to_sigma(1.0 - t / 999) for t in timesteps]
        return torch.tensor([*sigmas, 0.0], dtype=torch.float32)
    noise_space_for(model_sampling)  # refuses unsupported samplings with a clear message
    sigmas = _on_device_of(model_sampling, model_sampling.sigma)(torch.tensor(timesteps, dtype=torch.float32))
    return torch.cat([sigmas.float(), sigmas.new_zeros(1, dtype=torch.float32)])


def ksampler_tcd_scheduler(model_sampling: Any, steps: int) -> Tensor:
    """The `tcd` entry of KSampler's scheduler list (original_inference_steps 50, grown past 50 steps)."""
    if steps > MAX_GRID_STEPS:  # KSampler asks for int(steps / denoise): 11 steps at denoise 0.01 ask for 1100
        raise tcd_core.TCDInputError(
            f"KSampler scheduler 'tcd': {steps} schedule steps asked for (steps / denoise when denoise is below 1), "
            f"but TCD's grid has at most {MAX_GRID_STEPS} timesteps: lower steps or raise denoise"
        )
    original = max(DEFAULT_ORIGINAL_STEPS, min(steps, MAX_GRID_STEPS))
    if original != DEFAULT_ORIGINAL_STEPS:
        log.info("tcd scheduler: %d steps exceed the 50-point TCD grid; using a %d-point grid", steps, original)
    return tcd_sigmas(model_sampling, steps, original)


@torch.no_grad()
def sample_tcd(
    model: Any,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Any = None,
    disable: bool | None = None,
    noise_sampler: Any = None,
    gamma: float | tcd_core.GammaSchedule = DEFAULT_GAMMA,
    order: int = 1,
) -> Tensor:
    """tcd_core's SSS loop on a ComfyUI model: its own model_sampling and the seeded noise of ComfyUI."""
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = k_diffusion_sampling.default_noise_sampler(x, seed=extra_args.get("seed"))
    model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    try:
        return tcd_core.sample_tcd(
            model,
            x,
            sigmas,
            extra_args,
            callback,
            disable,
            noise_sampler,
            gamma=gamma,
            order=order,
            space=noise_space_for(model_sampling),
        )
    except tcd_core.TCDInputError as error:  # raised before any model call: name the node
        raise tcd_core.TCDInputError(f"TCD Sampler: {error}") from None
