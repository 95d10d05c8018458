"""Adapting a ComfyUI model to tcd_core: its noise space, its TCD sigmas, its seeded noise."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import comfy.model_sampling
import comfy.samplers
import torch
from comfy.k_diffusion import sampling as k_diffusion_sampling
from torch import Tensor

from .. import tcd_core

log = logging.getLogger("comfyui-tcd-sampling")

# With KSampler's denoise, the schedule is computed for steps / denoise steps: past the reference's
# 50-point grid, the grid grows with the step count instead of failing.
MAX_GRID_STEPS = tcd_core.NUM_TRAIN_TIMESTEPS  # the finest grid there is
KSAMPLER_GAMMA = tcd_core.GammaSchedule.constant(tcd_core.DEFAULT_GAMMA)  # KSampler's `tcd` has no gamma input


def flow_sigmas(model_sampling: Any, timesteps: Sequence[int]) -> list[float]:
    """Timesteps of TCD's 0..999 grid as a flow model's sigmas: the entries of its own table that the
    distiller trains at, sigma[t] = shift((t + 1) / 1000) (docs/math.md, section 2).

    ComfyUI builds a flow model's table as shift(i / T) for i = 1..T (``model_sampling.sigmas``: T = 1000 for SD3,
    10000 for Flux), and TCD Distill LoRA's skipping grid takes its entries (t + 1) T / 1000 - 1, so a distilled
    flow LoRA is sampled at exactly the sigmas it was trained at (999 is pure noise, 0 the table's lowest entry;
    ComfyUI's ``simple`` schedule at 50 steps is the 50-point grid). A table whose length is not a multiple of 1000
    is read through ``percent_to_sigma`` at the same normalised time.
    """
    table = getattr(model_sampling, "sigmas", None)
    per_step, rest = divmod(len(table), tcd_core.NUM_TRAIN_TIMESTEPS) if table is not None else (0, 1)
    if per_step and not rest:
        index = torch.tensor([(t + 1) * per_step - 1 for t in timesteps], dtype=torch.long)
        return table.detach().cpu()[index].double().tolist()
    return [float(model_sampling.percent_to_sigma(1.0 - (t + 1) / tcd_core.NUM_TRAIN_TIMESTEPS)) for t in timesteps]


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


def train_timesteps(model_sampling: Any) -> range:
    """The timesteps a custom list may name on this model: its training timesteps 0 .. T-1 (discrete models),
    TCD's grid 0 .. 999 on flow models (``flow_sigmas``)."""
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return range(tcd_core.NUM_TRAIN_TIMESTEPS)
    noise_space_for(model_sampling)  # refuses unsupported samplings with a clear message
    return range(len(model_sampling.sigmas))


def custom_timesteps_for(model_sampling: Any, timesteps: Sequence[int], strength: float = 1.0) -> list[int]:
    """A parsed timestep list checked against this model's range, then cut by ``strength`` as diffusers does
    (``TCDScheduler.set_timesteps(timesteps=..., strength=...)`` keeps the last int(len * strength) entries)."""
    allowed = train_timesteps(model_sampling)
    outside = [t for t in timesteps if t not in allowed]
    if outside:
        raise tcd_core.TCDInputError(
            f"timesteps {outside} are outside this model's range {allowed.start}..{allowed.stop - 1}; "
            f"give {tcd_core.timesteps_form(allowed.stop, allowed.start)}"
        )
    return tcd_core.tcd_custom_timesteps(timesteps, strength, allowed.stop)


def tcd_sigmas(
    model_sampling: Any,
    steps: int,
    original_inference_steps: int = tcd_core.DEFAULT_ORIGINAL_INFERENCE_STEPS,
    strength: float = 1.0,
    timesteps: Sequence[int] | None = None,
) -> Tensor:
    """TCD's timesteps (diffusers' set_timesteps) as this model's sigmas, with the final 0.

    A ``timesteps`` list overrides ``steps`` and ``original_inference_steps`` (diffusers'
    ``set_timesteps(timesteps=...)``); ``strength`` then keeps its last int(len * strength) entries.
    """
    if timesteps is None:
        timesteps = tcd_core.tcd_timesteps(steps, original_inference_steps, strength)
    else:
        timesteps = custom_timesteps_for(model_sampling, timesteps, strength)
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return torch.tensor([*flow_sigmas(model_sampling, timesteps), 0.0], dtype=torch.float32)
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
    reference = tcd_core.DEFAULT_ORIGINAL_INFERENCE_STEPS
    original = max(reference, steps)  # at most MAX_GRID_STEPS, checked above
    if original != reference:
        log.info(
            "tcd scheduler: %d steps exceed the %d-point TCD grid; using a %d-point grid", steps, reference, original
        )
    return tcd_sigmas(model_sampling, steps, original)


def ksampler_tcd_sampler(
    model: Any,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Any = None,
    disable: bool | None = None,
    noise_sampler: Any = None,
    gamma: float | tcd_core.GammaSchedule = KSAMPLER_GAMMA,
    order: int = 1,
) -> Tensor:
    """The sampler function ComfyUI's KSAMPLER wraps (k-diffusion signature): tcd_core.sample_tcd on a
    ComfyUI model, in that model's own noise space, with ComfyUI's seeded noise.

    Registered as KSampler's `tcd` and returned (with the node's gamma and order) by the TCD Sampler node.
    tcd_core.sample_tcd runs under torch.no_grad itself.
    """
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


class UnitStartNoiseKSAMPLER(comfy.samplers.KSAMPLER):
    """A KSAMPLER that starts from unit-variance noise whatever ``sigmas[0]``, as diffusers' text-to-image
    pipelines start any timestep list (DMD2's 1 step at 399, Hyper-SD's at 800).

    ComfyUI's ``KSAMPLER.sample`` scales the seeded noise by ``sigmas[0]`` unless that is the model's
    ``sigma_max`` (``model_sampling.noise_scaling(..., max_denoise)``). With ``max_denoise`` always on,
    VE (eps / v) latents start at ``noise * sqrt(1 + sigma_0^2) + latent``: the VP latent
    ``noise + sqrt(alpha_bar_0) * latent``, i.e. diffusers' ``x_T = noise`` for an empty latent.
    Flow latents (CONST, which has no max_denoise branch) start at ``noise + (1 - sigma_0) * latent``.
    Either way the latent is added as ComfyUI adds it; where the schedule starts at sigma_max nothing changes.
    The unscaled noise ComfyUI keeps for inpainting masks is left as it is.
    """

    def max_denoise(self, model_wrap: Any, sigmas: Tensor) -> bool:
        return True

    def sample(self, model_wrap: Any, sigmas: Tensor, extra_args: Any, callback: Any, noise: Tensor, *args: Any,
               **kwargs: Any) -> Tensor:  # fmt: skip
        if not isinstance(model_wrap.inner_model.model_sampling, comfy.model_sampling.CONST):
            return super().sample(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
        # Flow: ComfyUI's start is sigma_0 * noise + (1 - sigma_0) * latent; add the missing (1 - sigma_0) * noise.
        sampler_function = self.sampler_function

        def from_unit_noise(model: Any, x: Tensor, sigmas: Tensor, *rest: Any, **options: Any) -> Tensor:
            return sampler_function(model, x + (1.0 - sigmas[0]) * noise, sigmas, *rest, **options)

        flow_sampler = comfy.samplers.KSAMPLER(from_unit_noise, self.extra_options, self.inpaint_options)
        return flow_sampler.sample(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
