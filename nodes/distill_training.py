"""ComfyUI's side of TCD distillation: LoRA adapters on a ModelPatcher, the UNet as a tcd_core ModelFn,
the dataset from ComfyUI's LATENT / CONDITIONING values, one training step, the saved-LoRA dict.

Trainer-agnostic: the TCD Distill LoRA node drives it one step at a time, and a multi-GPU trainer can
import it the same way. The math (Eq. 28-29, the skipping-step grid, the EMA target) is all
tcd_core.distill; this module only adapts ComfyUI objects to it:

- the LoRA layers are ComfyUI's own training adapters (``comfy.weight_adapter.LoRAAdapter.create_train``
  / ``to_train``), added as weight wrappers of a *clone* of the model (``ModelPatcher.add_weight_wrapper``,
  as ComfyUI's Train LoRA does), each behind one shared on/off switch: the teacher is the same network
  with the switch off, so the base weights exist once in memory;
- a ModelFn calls ``diffusion_model(x_t, t, context=..., **extra conds)`` directly: diffusers' VP input
  and integer timesteps, the network's raw eps / v output, conds built by ComfyUI's own
  ``encode_model_conds`` / ``cond_cat`` (so SDXL's size-conditioned ``y`` comes out as in sampling);
- the trained LoRA is returned in the dict format of ComfyUI's Train LoRA
  (``diffusion_model.<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha``), which SaveLoRA
  writes and LoraLoader, LoraModelLoader and the TCD LoRA Loader read back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import comfy.lora
import comfy.lora_convert
import comfy.model_management
import comfy.model_sampling
import comfy.sampler_helpers
import comfy.samplers
import torch
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from comfy.weight_adapter import LoRAAdapter
from comfy.weight_adapter.lora import LoraDiff
from torch import Tensor

from ..tcd_core import distill
from ..tcd_core.errors import TCDInputError

log = logging.getLogger("comfyui-tcd-sampling")

NODE_NAME = "TCD Distill LoRA"
OPTIMIZERS = {
    "AdamW": torch.optim.AdamW,
    "Adam": torch.optim.Adam,
    "SGD": torch.optim.SGD,
    "RMSprop": torch.optim.RMSprop,
}  # Train LoRA's list
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def input_error(input_name: str, message: str) -> TCDInputError:
    """An error naming the node and the input, as every TCD node reports bad input."""
    return TCDInputError(f"{NODE_NAME} {input_name}: {message}")


# --- the model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What distillation needs to know of a ComfyUI model: its prediction type and VP schedule."""

    prediction: str  # "eps" | "v"
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
    prediction = "v" if comfy.model_sampling.V_PREDICTION in bases else "eps"
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
    return ModelFacts(prediction, 1.0 / (1.0 + sigmas**2), latent_channels)


# --- the dataset ----------------------------------------------------------------------------------


def flatten_latents(latents: Sequence[Any]) -> list[Tensor]:
    """Each image as a [1, C, H, W] tensor, from one batched LATENT or a list of them (dataset nodes)."""
    images: list[Tensor] = []
    for latent in latents:
        samples = latent["samples"] if isinstance(latent, dict) else latent
        if not isinstance(samples, Tensor):
            raise input_error("latents", f"expected LATENT values, got {type(samples).__name__}")
        if samples.ndim == 3:
            samples = samples[None]
        images.extend(sample[None] for sample in samples)
    return images


def flatten_conditioning(conditionings: Sequence[Any]) -> list[list]:
    """The CONDITIONING entries ``[tensor, dict]`` in order, as Train LoRA counts them (one per image)."""
    entries: list[list] = []
    for conditioning in conditionings:
        if isinstance(conditioning, (list, tuple)) and conditioning and isinstance(conditioning[0], Tensor):
            entries.append(list(conditioning))  # a bare entry
        else:
            entries.extend(list(entry) for entry in conditioning)
    return entries


def per_image(entries: list[list], num_images: int, input_name: str) -> list[list]:
    """One entry for every image: one for all is repeated, else the counts must match."""
    if len(entries) == 1:
        return entries * num_images
    if len(entries) != num_images:
        raise input_error(
            input_name,
            f"{len(entries)} conditionings for {num_images} latents: give one for all or one per latent",
        )
    return entries


def check_latents(images: list[Tensor], facts: ModelFacts) -> None:
    if not images:
        raise input_error("latents", "the dataset is empty: give at least one latent (e.g. VAE Encode of an image)")
    for i, image in enumerate(images):
        if image.ndim != 4 or image.shape[1] != facts.latent_channels:
            raise input_error(
                "latents",
                f"latent {i} has shape {tuple(image.shape)}, but this model takes {facts.latent_channels}-channel "
                "image latents [B, C, H, W] (encode the images with this model's VAE)",
            )
        if image.shape[2] % 8 or image.shape[3] % 8:
            raise input_error(
                "latents",
                f"latent {i} is {image.shape[3]}x{image.shape[2]}; the UNet needs latent sides that are multiples "
                "of 8 (images in multiples of 64 pixels)",
            )
        if not torch.isfinite(image).all():
            raise input_error("latents", f"latent {i} holds NaN or infinite values")


def encode_conds(base_model: Any, entry: list, latent: Tensor, device: torch.device, prompt_type: str) -> dict:
    """One CONDITIONING entry as the model's processed conds for one image ({name: COND}), built by
    ComfyUI's own sampler helpers, as sampling does (SDXL's ``y`` gets this latent's size)."""
    (cond,) = comfy.sampler_helpers.convert_cond([entry])
    (cond,) = comfy.samplers.encode_model_conds(
        base_model.extra_conds, [cond], latent, device, prompt_type, latent_image=latent
    )
    return {name: value.process_cond(batch_size=1, area=None) for name, value in cond["model_conds"].items()}


@dataclass
class DistillDataset:
    """Latents in the model's latent space (``process_latent_in`` applied) and per-image conds."""

    latents: list[Tensor]  # [1, C, H, W] each, float32, CPU
    positive: list[dict]  # encode_conds per image
    negative: list[dict]

    def __len__(self) -> int:
        return len(self.latents)


def build_dataset(
    patcher: Any, latents: Sequence[Any], positive: Sequence[Any], negative: Sequence[Any], facts: ModelFacts
) -> DistillDataset:
    """Check and prepare the node's data inputs; every refusal names the input, before any training."""
    images = flatten_latents(latents)
    check_latents(images, facts)
    pos = per_image(flatten_conditioning(positive), len(images), "positive")
    neg = per_image(flatten_conditioning(negative), len(images), "negative")
    base = patcher.model
    device = patcher.load_device
    for name, entries in (("positive", pos), ("negative", neg)):
        for i, entry in enumerate(entries):
            if len(entry) != 2 or not isinstance(entry[0], Tensor) or not isinstance(entry[1], dict):
                raise input_error(name, f"entry {i} is not a CONDITIONING entry [tensor, dict]")
    processed = [base.process_latent_in(image.float()) for image in images]
    pos_conds = [encode_conds(base, e, img, device, "positive") for e, img in zip(pos, processed, strict=True)]
    neg_conds = [encode_conds(base, e, img, device, "negative") for e, img in zip(neg, processed, strict=True)]
    return DistillDataset(processed, pos_conds, neg_conds)


def batch_conds(conds: list[dict]) -> dict[str, Any]:
    """Per-image conds concatenated into one batch ({name: tensor}), ComfyUI's ``cond_cat``.

    Fresh tensors: ComfyUI runs nodes under ``torch.inference_mode``, and its inference tensors cannot
    be saved for backward (Train LoRA clones its conds for the same reason).
    """
    batch = comfy.samplers.cond_cat(conds)
    return {name: value.clone() if isinstance(value, Tensor) else value for name, value in batch.items()}


# --- LoRA adapters on a ModelPatcher --------------------------------------------------------------


class AdapterSwitch:
    """One on/off switch shared by every adapter of a run: off = the teacher (the base weights)."""

    def __init__(self) -> None:
        self.enabled = True

    @contextlib.contextmanager
    def off(self) -> Iterator[None]:
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous


class SwitchedAdapter:
    """A weight wrapper (ModelPatcher.add_weight_wrapper) applying a ComfyUI training adapter when on."""

    def __init__(self, adapter: LoraDiff, switch: AdapterSwitch) -> None:
        self.adapter = adapter
        self.switch = switch

    def __call__(self, weight: Tensor) -> Tensor:
        return self.adapter(weight) if self.switch.enabled else weight

    def passive_memory_usage(self) -> int:
        return self.adapter.passive_memory_usage()

    def move_to(self, device: torch.device) -> int:
        return self.adapter.move_to(device)


class FreshWeight:
    """A weight wrapper that hands autograd a normal copy of a weight made under ``torch.inference_mode``
    (how ComfyUI loads checkpoints): norm layers save their weight for the backward pass, and inference
    tensors cannot be saved. The LoRA layers need none: ``w + delta`` is a new tensor already."""

    def __call__(self, weight: Tensor) -> Tensor:
        return weight.clone() if weight.is_inference() else weight

    def passive_memory_usage(self) -> int:
        return 0

    def move_to(self, device: torch.device) -> int:
        return 0


def frozen_weight_layers(base_model: Any) -> list[str]:
    """The UNet's ComfyUI ops with a 1-D weight (the norms): frozen, but on the backward path."""
    return [
        name
        for name, module in base_model.named_modules()
        if name.startswith("diffusion_model.")
        and hasattr(module, "weight_function")
        and getattr(module, "weight", None) is not None
        and module.weight.ndim < 2
    ]


def lora_targets(base_model: Any) -> list[tuple[str, torch.nn.Module]]:
    """The layers a LoRA adapts: every ComfyUI op of the UNet with a 2-D or larger weight
    (Linear and Conv, as Train LoRA chooses; norms and biases stay frozen)."""
    targets = []
    for name, module in base_model.named_modules():
        if not name.startswith("diffusion_model.") or not hasattr(module, "weight_function"):
            continue
        weight = getattr(module, "weight", None)
        if weight is not None and weight.ndim >= 2:
            targets.append((name, module))
    return targets


def read_existing_lora(base_model: Any, lora: dict[str, Tensor]) -> dict[str, LoraDiff]:
    """A saved LoRA (any format ComfyUI loads: kohya, diffusers/PEFT, ComfyUI's own) as training adapters,
    keyed by module name ``diffusion_model.<...>``; conv LoRAs come back flattened to 2-D factors."""
    key_map = comfy.lora.model_lora_keys_unet(base_model, {})
    patches = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map, log_missing=False)
    adapters: dict[str, LoraDiff] = {}
    for key, patch in patches.items():
        if not isinstance(key, str) or not key.startswith("diffusion_model.") or not key.endswith(".weight"):
            continue
        if not isinstance(patch, LoRAAdapter):
            kind = getattr(patch, "name", type(patch).__name__)
            raise input_error("existing_lora", f"it holds {kind} weights for {key}; only LoRA can be continued")
        up, down, alpha, mid, dora_scale, reshape = patch.weights
        if mid is not None or dora_scale is not None or reshape is not None:
            raise input_error("existing_lora", f"its {key} is a LoCon-mid / DoRA LoRA; only plain LoRA continues")
        rank = down.shape[0]
        factors = (up.flatten(1).float(), down.flatten(1).float(), float(rank if alpha is None else alpha))
        adapters[key[: -len(".weight")]] = LoraDiff((*factors, None, None, None))
    if not adapters:
        raise input_error("existing_lora", "it patches nothing in this model's UNet (another model family?)")
    return adapters


@dataclass
class LoraAdapters:
    """Training adapters attached to one ModelPatcher (a clone), behind one switch."""

    patcher: Any
    adapters: dict[str, LoraDiff]  # module name -> adapter
    switch: AdapterSwitch = field(default_factory=AdapterSwitch)
    wrappers: dict[str, Any] = field(default_factory=dict)  # parameter key "<module>.weight|bias" -> wrapper

    def parameters(self) -> list[Tensor]:
        """The trainable tensors (lora_up / lora_down), in module order."""
        return [p for a in self.adapters.values() for p in a.parameters() if p.requires_grad]

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The LoRA in ComfyUI's saved-LoRA format (Train LoRA's): ``<module>.lora_up.weight``,
        ``<module>.lora_down.weight``, ``<module>.alpha``; detached CPU copies, in ``dtype``."""
        out = {}
        for name, adapter in self.adapters.items():
            for pname, tensor in adapter.named_parameters():
                value = tensor.detach().to("cpu", dtype if dtype is not None else tensor.dtype)
                out[f"{name}.{pname}"] = value.clone().contiguous()
        return out


def attach_lora(
    patcher: Any,
    rank: int,
    dtype: torch.dtype,
    seed: int,
    existing: dict[str, LoraDiff] | None = None,
) -> LoraAdapters:
    """Add a LoRA adapter to every target layer of ``patcher`` (a clone: the caller's model is untouched).

    New adapters are ComfyUI's ``LoRAAdapter.create_train`` (up random, down zero: the student starts as
    the teacher) with alpha = rank (scale 1, as diffusers' LCM-LoRA script); layers of ``existing`` continue
    from its weights. Initialisation draws from ``seed`` without touching the global RNG.
    """
    existing = existing or {}
    adapters: dict[str, LoraDiff] = {}
    # ComfyUI runs nodes under torch.inference_mode: parameters made there would never get gradients.
    with torch.inference_mode(False), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, module in lora_targets(patcher.model):
            old = existing.get(name)
            if old is None:
                adapter = LoRAAdapter.create_train(module.weight, rank=rank, alpha=float(rank))
            else:  # fresh tensors (the loaded ones may be inference tensors)
                factors = (old.lora_up.weight.detach().clone(), old.lora_down.weight.detach().clone())
                adapter = LoraDiff((*factors, float(old.alpha), None, None, None))
            adapters[name] = adapter.to(device=patcher.load_device, dtype=dtype)
    lora = LoraAdapters(patcher, adapters)
    for name, adapter in adapters.items():
        adapter.requires_grad_(True)
        adapter.alpha.requires_grad_(False)
        wrapper = SwitchedAdapter(adapter, lora.switch)
        lora.wrappers[f"{name}.weight"] = wrapper
    modules = dict(patcher.model.named_modules())
    for name in frozen_weight_layers(patcher.model):
        for param in ("weight", "bias"):
            if getattr(modules[name], param, None) is not None:
                lora.wrappers[f"{name}.{param}"] = FreshWeight()
    for key, wrapper in lora.wrappers.items():
        patcher.add_weight_wrapper(key, wrapper)
    return lora


def install_lora(lora: LoraAdapters) -> None:
    """Make sure every adapter is in its layer's weight functions once the patcher is loaded.

    ComfyUI installs weight wrappers when ``ModelPatcher.load`` runs, but a model already fully loaded by
    another clone with the same weight patches (the usual case: the checkpoint just sampled) is not
    loaded again, so the wrappers are put in place here.
    """
    modules = dict(lora.patcher.model.named_modules())
    for key, wrapper in lora.wrappers.items():
        name, param = key.rsplit(".", 1)
        functions = f"{param}_function"  # weight_function / bias_function of a ComfyUI op
        module = modules[name]
        if not any(f is wrapper for f in getattr(module, functions)):
            setattr(module, functions, [*getattr(module, functions), wrapper])
        wrapper.move_to(lora.patcher.load_device)


def detach_lora(lora: LoraAdapters) -> None:
    """Remove the adapters from the patcher and from the shared modules' weight functions."""
    patcher = lora.patcher
    modules = dict(patcher.model.named_modules())
    for key, wrapper in lora.wrappers.items():
        kept = [f for f in patcher.weight_wrapper_patches.get(key, []) if f is not wrapper]
        if kept:
            patcher.weight_wrapper_patches[key] = kept
        else:
            patcher.weight_wrapper_patches.pop(key, None)
        name, param = key.rsplit(".", 1)
        module, functions = modules.get(name), f"{param}_function"
        if module is not None and hasattr(module, functions):
            setattr(module, functions, [f for f in getattr(module, functions) if f is not wrapper])
    for adapter in lora.adapters.values():
        adapter.requires_grad_(False)
    lora.wrappers.clear()


def unload_clones(patcher: Any) -> None:
    """Unload every loaded clone of ``patcher``'s model (e.g. the checkpoint just sampled), so that loading
    the training clone runs ``ModelPatcher.load`` in full: its weight wrappers and compute-dtype casts."""
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is not None and patcher.is_clone(loaded[i].model):
            loaded.pop(i).model_unload()


def release_model(patcher: Any) -> None:
    """Unload a training clone from ComfyUI's loaded models (weights restored, moved to the offload
    device) and free the cached memory, so the next prompt loads its own model cleanly."""
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is patcher:
            loaded.pop(i).model_unload()
    comfy.model_management.soft_empty_cache()


@contextlib.contextmanager
def gradient_checkpointing(patcher: Any, enabled: bool) -> Iterator[None]:
    """ComfyUI's Train LoRA checkpointing (its own patch / unpatch of the UNet's top blocks), undone after."""
    if not enabled:
        yield
        return
    from comfy_extras import nodes_train

    diffusion_model = patcher.model.diffusion_model
    for module in nodes_train.find_all_highest_child_module_with_forward(diffusion_model):
        nodes_train.patch(module)
    try:
        yield
    finally:
        for module in diffusion_model.modules():
            nodes_train.unpatch(module)


# --- the UNet as a tcd_core ModelFn -----------------------------------------------------------------


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


# --- training -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """Train LoRA's settings, as the node takes them."""

    steps: int = 3000
    learning_rate: float = 1e-4
    rank: int = 64
    batch_size: int = 1
    grad_accumulation_steps: int = 1
    optimizer: str = "AdamW"
    seed: int = 0
    training_dtype: str = "bf16"
    lora_dtype: str = "fp32"
    gradient_checkpointing: bool = True


class DistillRun:
    """One distillation run on a clone of a ComfyUI model: ``step()`` trains one optimizer step.

    Use as a context manager (or call ``close()``): adapters attached and the clone loaded on enter;
    on exit the adapters come off, checkpointing is undone and the clone is unloaded, whatever happened
    (a Cancel included), so the input model is as it was.
    """

    def __init__(
        self,
        model: Any,
        dataset: DistillDataset,
        facts: ModelFacts,
        config: distill.DistillConfig,
        settings: TrainSettings,
        existing: dict[str, LoraDiff] | None = None,
    ) -> None:
        with torch.inference_mode(False):  # the optimizer state and EMA copies must be normal tensors
            self._setup(model, dataset, facts, config, settings, existing)

    def _setup(
        self,
        model: Any,
        dataset: DistillDataset,
        facts: ModelFacts,
        config: distill.DistillConfig,
        settings: TrainSettings,
        existing: dict[str, LoraDiff] | None,
    ) -> None:
        self.config = config.validate()
        self.settings = settings
        self.dataset = dataset
        self.facts = facts
        self.patcher = model.clone()
        self.compute_dtype = DTYPES[settings.training_dtype]
        self.lora_dtype = DTYPES[settings.lora_dtype]
        self.patcher.set_model_compute_dtype(self.compute_dtype)
        self.lora = attach_lora(self.patcher, settings.rank, self.lora_dtype, settings.seed, existing)
        self.params = self.lora.parameters()
        self.optimizer = OPTIMIZERS[settings.optimizer](self.params, lr=settings.learning_rate)
        self.ema = distill.EMA(self.params, config.ema_decay) if config.ema_decay > 0 else None
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.steps_done = 0
        self._stack = contextlib.ExitStack()
        self._loaded = False

    # lifecycle
    def __enter__(self) -> DistillRun:
        self._stack.callback(self._cleanup)
        self._stack.enter_context(torch.inference_mode(False))
        self._stack.enter_context(gradient_checkpointing(self.patcher, self.settings.gradient_checkpointing))
        self.patcher.model.requires_grad_(False)
        unload_clones(self.patcher)
        comfy.model_management.load_models_gpu([self.patcher], memory_required=1e20, force_full_load=True)
        self._loaded = True
        install_lora(self.lora)
        device = self.patcher.load_device
        self.alphas_cumprod = self.facts.alphas_cumprod.to(device)
        unet = unet_fn(self.patcher, self.compute_dtype)
        switch = self.lora.switch

        def teacher(x: Tensor, t: Tensor, conds: dict) -> Tensor:
            with switch.off():
                return unet(x, t, conds)

        def target(x: Tensor, t: Tensor, conds: dict) -> Tensor:
            if self.ema is None:
                return unet(x, t, conds)
            with self.ema.swapped_in(self.params):
                return unet(x, t, conds)

        self.student, self.teacher, self.target = unet, teacher, target
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _cleanup(self) -> None:
        detach_lora(self.lora)
        if self._loaded:
            release_model(self.patcher)
            self._loaded = False
        self.optimizer.zero_grad(set_to_none=True)

    # training
    def _draw_batch(self) -> list[int]:
        """Train LoRA's draw: a random subset of min(batch_size, dataset size) images (seeded)."""
        order = torch.randperm(len(self.dataset), generator=self.generator)
        return order[: self.settings.batch_size].tolist()

    def micro_step(self, weight: float) -> float:
        """Forward and backward on one drawn batch, the loss scaled by ``weight``; returns the batch loss.

        Images of different sizes (a multi-resolution dataset) are batched by shape; the loss is the
        batch mean either way.
        """
        indices = self._draw_batch()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in indices:
            groups.setdefault(tuple(self.dataset.latents[i].shape), []).append(i)
        device = self.patcher.load_device
        total = 0.0
        for members in groups.values():
            share = len(members) / len(indices)
            x0 = torch.cat([self.dataset.latents[i] for i in members]).to(device).clone()
            noise = torch.randn(x0.shape, generator=self.generator).to(device)
            points = distill.draw_training_points(self.config, len(members), self.generator, device)
            cond = batch_conds([self.dataset.positive[i] for i in members])
            uncond = batch_conds([self.dataset.negative[i] for i in members])
            loss = distill.distill_loss(
                self.config, self.alphas_cumprod, x0, noise, points, self.student, self.teacher, self.target,
                cond, uncond,
            )  # fmt: skip
            (loss * (share * weight)).backward()
            total += loss.item() * share
        return total

    def step(self) -> float:
        """One optimizer step (over ``grad_accumulation_steps`` batches); returns the mean loss."""
        accumulation = self.settings.grad_accumulation_steps
        loss = sum(self.micro_step(1.0 / accumulation) for _ in range(accumulation)) / accumulation
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params)
        self.steps_done += 1
        return loss

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The trained student's LoRA (the online weights, also with an EMA target), in the LoRA dtype."""
        return self.lora.state_dict(self.lora_dtype)
