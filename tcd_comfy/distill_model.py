"""A ComfyUI model as distillation sees it (``ModelFacts``: its family, prediction type, noise schedule, latent
form and embedded guidance input) and as a tcd_core ``ModelFn``: a VP UNet on diffusers' VP input and integer
timesteps (``unet_fn``), a flow model through its own ``BaseModel.apply_model`` (``flow_fn``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import comfy.model_sampling
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from torch import Tensor

from ..tcd_core import distill
from ..tcd_core.errors import TCDInputError


@dataclass(frozen=True)
class FlowFamily:
    """A flow-matching family the node distils: ComfyUI's model config class (``comfy.supported_models``) and what
    differs between families (docs/distill.md, "Flow-matching models")."""

    config: str  # the model config's class name, e.g. "Flux"
    label: str  # what users call it
    lora_blocks: tuple[str, ...]  # the module lists whose Linear layers the LoRA adapts
    video: bool = False  # latents [B, C, T, H, W] of any T (an image model's 3-D latents hold one frame)


# The families, and the blocks whose Linear layers their community LoRAs train (kohya sd-scripts, musubi-tuner and
# ai-toolkit: attention, MLP and modulation of every transformer block; not the embedders or the final layer). Wan
# 2.2's 5B TI2V model is distilled as text-to-video (no first-frame image: no denoise mask).
FLOW_FAMILIES: dict[str, FlowFamily] = {
    family.config: family
    for family in (
        FlowFamily("SD3", "SD3 / SD3.5", ("joint_blocks",)),
        FlowFamily("Flux", "Flux.1-dev", ("double_blocks", "single_blocks")),
        FlowFamily("FluxSchnell", "Flux.1-schnell", ("double_blocks", "single_blocks")),
        FlowFamily("QwenImage", "Qwen-Image", ("transformer_blocks",)),
        FlowFamily("ZImage", "Z-Image", ("layers", "noise_refiner", "context_refiner")),
        FlowFamily("WAN22_T2V", "Wan 2.2 TI2V 5B", ("blocks",), video=True),
    )
}
FLOW_LABELS = ", ".join(f.label for f in FLOW_FAMILIES.values())
SUPPORTED = f"SD1.x, SD2.x and SDXL (eps or v) and the flow models {FLOW_LABELS}"


def input_error(input_name: str, message: str) -> TCDInputError:
    """A refusal of the input ``input_name`` (the node prefixes its own name, the trainer its option's)."""
    return TCDInputError(f"{input_name}: {message}", field=input_name, detail=message)


@dataclass(frozen=True)
class ModelFacts:
    """What distillation needs to know of a ComfyUI model.

    ``alphas_cumprod``: the VP table of a UNet, else None; ``sigmas``: a flow model's ``model_sampling.sigmas``
    (its family's shift, or the user's, in it), else None. ``latent_dims``: 2 for latents [B, C, H, W], 3 for
    [B, C, T, H, W] (``latent_format.latent_dimensions``); ``latent_multiple``: latent sides must be multiples of
    it. ``embedded_guidance``: the model takes its guidance as an input (Flux.1-dev's guidance embedding).
    """

    prediction_type: str  # "eps" | "v" (VP UNets) | "x0" (flow models through apply_model)
    alphas_cumprod: Tensor | None  # float64 [1000], from the model's own sigmas
    latent_channels: int
    family: str = "SD"  # the model config's class name (comfy.supported_models)
    sigmas: Tensor | None = None  # float64 [T], rising in (0, 1]
    latent_dims: int = 2
    latent_multiple: int = 8
    embedded_guidance: bool = False
    video: bool = False  # a video model: latents [B, C, T, H, W] of any T

    @property
    def flow(self) -> bool:
        return self.sigmas is not None

    @property
    def label(self) -> str:
        family = FLOW_FAMILIES.get(self.family)
        return family.label if family is not None else self.family

    @property
    def schedule(self) -> distill.NoiseSchedule | Tensor:
        """The engine's schedule: the VP ``alphas_cumprod`` tensor, or a ``FlowSchedule`` of the model's sigmas."""
        return distill.FlowSchedule(self.sigmas) if self.sigmas is not None else self.alphas_cumprod

    def config_fields(self) -> dict[str, Any]:
        """The ``DistillConfig`` fields that are facts of the model (a VP UNet leaves the others at their
        defaults: 1000 timesteps, no embedded guidance)."""
        if self.sigmas is None:
            return {"prediction_type": self.prediction_type}
        return {
            "prediction_type": self.prediction_type,
            "num_train_timesteps": int(self.sigmas.shape[0]),
            "embedded_guidance_input": self.embedded_guidance,
        }


def _sampling_kind(sampling: Any) -> tuple[tuple[type, ...], str]:
    """The sampling's classes and ComfyUI's names of them (e.g. "ModelSamplingDiscreteFlow, CONST")."""
    bases = type(sampling).__mro__
    return bases, ", ".join(c.__name__ for c in bases if c.__module__ == comfy.model_sampling.__name__)


def model_facts(patcher: Any) -> ModelFacts:
    """Check that the model is one the node distils and read its facts; every refusal names the input ``model``.

    A discrete-time VP UNet (SD1.x, SD2.x, SDXL) with eps or v output, or a model of ``FLOW_FAMILIES`` sampled as
    the flow model it is (ComfyUI's CONST: ``ModelSamplingDiscreteFlow`` / ``ModelSamplingFlux``, with the family's
    or the user's shift). Other families (by name), x0 / EDM / img2img predictions, distilled (LCM) samplings, a
    UNet sampled as a flow model, a flow model sampled otherwise and inpainting models are refused.
    """
    base = patcher.model
    if isinstance(getattr(base, "diffusion_model", None), UNetModel):
        return _vp_facts(patcher)
    name = type(base.model_config).__name__
    family = FLOW_FAMILIES.get(name)
    if family is None:
        raise input_error(
            "model",
            f"this model is {name} (ComfyUI's {type(base).__name__} class), a family the node does not distil; it "
            f"distils {SUPPORTED}",
        )
    return _flow_facts(patcher, family)


def _flow_facts(patcher: Any, family: FlowFamily) -> ModelFacts:
    """A flow model of ``family``: x0 through ``apply_model`` on its own sigma table."""
    base = patcher.model
    sampling = patcher.get_model_object("model_sampling")
    bases, kind = _sampling_kind(sampling)
    if comfy.model_sampling.CONST not in bases:
        raise input_error(
            "model",
            f"this {family.label} model samples as {kind}, not as the flow model it is (CONST): remove the "
            "ModelSampling node that changed it",
        )
    try:
        sigmas = distill.FlowSchedule(sampling.sigmas.detach().to("cpu", torch.float64)).sigmas
    except TCDInputError as error:
        raise input_error("model", f"its sampling's sigma table is not a flow table: {error.detail}") from None
    latent_format = base.latent_format
    unet_config = base.model_config.unet_config
    patch = unet_config.get("patch_size", 2)
    patch = int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch)
    channels = latent_format.latent_channels
    in_channels = unet_config.get("in_channels", unet_config.get("in_dim"))
    if getattr(base, "concat_keys", ()) or in_channels not in (None, channels, channels * patch * patch):
        raise input_error(
            "model",
            f"its network takes {in_channels} input channels for {channels}-channel latents (an inpainting or "
            "image-conditioned model); distillation takes text-to-image models",
        )
    params = getattr(base.diffusion_model, "params", None)
    return ModelFacts(
        prediction_type="x0",
        alphas_cumprod=None,
        latent_channels=channels,
        family=family.config,
        sigmas=sigmas,
        latent_dims=int(getattr(latent_format, "latent_dimensions", 2)),
        latent_multiple=patch,
        embedded_guidance=bool(getattr(params, "guidance_embed", False)),
        video=family.video,
    )


def _vp_facts(patcher: Any) -> ModelFacts:
    """A discrete-time VP UNet (SD1.x, SD2.x, SDXL) with eps or v output."""
    base = patcher.model
    sampling = patcher.get_model_object("model_sampling")
    bases, kind = _sampling_kind(sampling)
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) or isinstance(
        sampling, (comfy.model_sampling.ModelSamplingDiscreteEDM, comfy.model_sampling.StableCascadeSampling)
    ):
        what = "a flow model" if comfy.model_sampling.CONST in bases else "not a discrete VP model"
        raise input_error(
            "model",
            f"this model samples as {what} ({kind}); its UNet distils on the discrete 1000-step VP schedule it was "
            "trained on, with eps or v prediction (SD1.x, SD2.x, SDXL): remove the ModelSampling node that changed "
            f"it (flow distillation takes the flow families: {FLOW_LABELS})",
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
    family = type(base.model_config).__name__
    return ModelFacts(prediction_type, 1.0 / (1.0 + sigmas**2), latent_channels, family=family)


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


def flow_fn(patcher: Any, compute_dtype: torch.dtype) -> distill.ModelFn:
    """``(x_t, sigma, conds, guidance=None) -> x0``: a flow model through its own ``BaseModel.apply_model``.

    ComfyUI's path for every family: ``model_sampling.timestep(sigma)`` gives the family's timestep form (Flux and
    Qwen-Image sigma, SD3 sigma x 1000, Z-Image sigma, which its network runs as 1 - t and whose output it negates),
    CONST's ``calculate_input`` is the identity (the engine's x is the network's input) and ``calculate_denoised``
    returns x0 = x - sigma v. ``guidance``: the embedded guidance g per sample (Flux.1-dev's ``guidance`` cond),
    replacing the conditioning's. Output in float32.
    """
    base = patcher.model
    device = patcher.load_device
    autocast = compute_dtype != torch.float32

    def call(x_t: Tensor, sigma: Tensor, conds: dict[str, Any], guidance: Tensor | None = None) -> Tensor:
        extra = dict(conds)
        if guidance is not None:
            extra["guidance"] = guidance.to(device, torch.float32)
        with torch.autocast(device.type, dtype=compute_dtype, enabled=autocast):
            out = base.apply_model(x_t.to(device), sigma.to(device, torch.float32), transformer_options={}, **extra)
        return out.float()

    return call
