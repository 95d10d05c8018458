"""A ComfyUI model as distillation sees it: its prediction type and VP schedule (``ModelFacts``), and its UNet
as a tcd_core ``ModelFn`` on diffusers' VP input and integer timesteps (``unet_fn``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.model_sampling
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from torch import Tensor

from ..tcd_core import distill
from ..tcd_core.errors import TCDInputError


def input_error(input_name: str, message: str) -> TCDInputError:
    """A refusal of the input ``input_name`` (the node prefixes its own name, the trainer its option's)."""
    return TCDInputError(f"{input_name}: {message}", field=input_name, detail=message)


@dataclass(frozen=True)
class ModelFacts:
    """What distillation needs to know of a ComfyUI model: its prediction type and VP schedule."""

    prediction_type: str  # "eps" | "v"
    alphas_cumprod: Tensor  # float64 [1000], from the model's own sigmas
    latent_channels: int


def model_facts(patcher: Any) -> ModelFacts:
    """Check that the model is a discrete-time VP UNet (SD1.x, SD2.x, SDXL) with eps or v output.

    Flow models (SD3, Flux), x0 / EDM / img2img predictions, distilled (LCM) samplings, inpainting
    UNets and other families are refused, naming the input ``model``.
    """
    base = patcher.model
    sampling = patcher.get_model_object("model_sampling")
    family = type(base).__name__
    if not isinstance(getattr(base, "diffusion_model", None), UNetModel):
        raise input_error(
            "model",
            f"distillation works with SD1.x, SD2.x and SDXL UNets; this model ({family}) is not one",
        )
    bases = type(sampling).__mro__
    kind = ", ".join(c.__name__ for c in bases if c.__module__ == comfy.model_sampling.__name__)
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) or isinstance(
        sampling, (comfy.model_sampling.ModelSamplingDiscreteEDM, comfy.model_sampling.StableCascadeSampling)
    ):
        what = "a flow model" if comfy.model_sampling.CONST in bases else "not a discrete VP model"
        raise input_error(
            "model",
            f"this model samples as {what} ({kind}); distillation needs a discrete 1000-step VP schedule with "
            "eps or v prediction (SD1.x, SD2.x, SDXL): flow and EDM models are not supported",
        )
    if comfy.model_sampling.X0 in bases or comfy.model_sampling.EDM in bases:
        kind = "x0" if comfy.model_sampling.X0 in bases else "EDM"
        raise input_error(
            "model", f"prediction type {kind} is not supported: distillation takes eps- or v-prediction models"
        )
    prediction_type = "v" if comfy.model_sampling.V_PREDICTION in bases else "eps"
    if comfy.model_sampling.EPS not in bases:
        raise input_error("model", f"unknown prediction type of {type(sampling).__name__}: eps or v needed")
    sigmas = sampling.sigmas.detach().to("cpu", torch.float64)
    if sigmas.numel() != distill.DistillConfig.num_train_timesteps:
        raise input_error(
            "model",
            f"its sampling has {sigmas.numel()} timesteps (a distilled or patched schedule); distillation needs "
            f"the {distill.DistillConfig.num_train_timesteps}-step training schedule",
        )
    in_channels = base.model_config.unet_config.get("in_channels")
    latent_channels = base.latent_format.latent_channels
    if getattr(base, "concat_keys", ()) or in_channels != latent_channels:
        raise input_error(
            "model",
            f"its UNet takes {in_channels} input channels for {latent_channels}-channel latents (an inpainting "
            "or image-conditioned model); distillation takes text-to-image models",
        )
    return ModelFacts(prediction_type, 1.0 / (1.0 + sigmas**2), latent_channels)


def unet_fn(patcher: Any, compute_dtype: torch.dtype) -> distill.ModelFn:
    """``(x_t, t, conds) -> raw output``: the UNet on diffusers' VP input and integer timesteps.

    What ComfyUI's ``BaseModel._apply_model`` does after its sigma-space conversion (cast, extra conds),
    without it: no ``calculate_input`` / ``calculate_denoised``, the timestep exact. Output in float32.
    """
    base = patcher.model
    device = patcher.load_device
    autocast = compute_dtype != torch.float32

    def call(x_t: Tensor, t: Tensor, conds: dict[str, Any]) -> Tensor:
        extra = dict(conds)
        context = extra.pop("c_crossattn", None)
        if context is not None:
            context = context.to(device, compute_dtype)
        extra = {
            name: _convert_tensor(value, compute_dtype, device) if isinstance(value, Tensor) else value
            for name, value in extra.items()
        }
        with torch.autocast(device.type, dtype=compute_dtype, enabled=autocast):
            out = base.diffusion_model(
                x_t.to(device, compute_dtype), t.to(device).float(), context=context, transformer_options={}, **extra
            )
        return out.float()

    return call


def _convert_tensor(value: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """ComfyUI's cond conversion (model_base.convert_tensor): floats to the compute dtype, ints kept."""
    if value.dtype in (torch.int32, torch.int64):
        return value.to(device)
    return value.to(device, dtype)
