"""The model side of the trainer: the teacher checkpoint through ComfyUI's own loader, the node's training
run (LoRA adapters, teacher switch, UNet call) behind a module DDP can wrap, batches, validation, saving.

Why ComfyUI's loader (``comfy.sd.load_checkpoint_guess_config``) and not diffusers' ``from_single_file``:
the trained LoRA must be the one the ``TCD Distill LoRA`` node trains and ComfyUI's ``LoraLoader`` applies.
With ComfyUI's model classes the trainer has the same UNet modules, the same key map
(``comfy.lora.model_lora_keys_unet``), the same adapters (``comfy.weight_adapter``) and the same UNet
call as the node, by importing them (``nodes/distill_training.py``), not by converting between layouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .data import Sample, prepare_image, sample_generator
from .options import Resolution
from .pack import TrainerError, pack_module

# ComfyUI model configs (comfy.supported_models) the trainer distils: discrete-time VP UNets, eps or v.
SUPPORTED_FAMILIES = ("SD15", "SD20", "SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")
VAE_DOWNSCALE = 8  # SD / SDXL VAE: 8 pixels per latent cell
COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def training_module():
    """The node's ComfyUI-side training code (nodes/distill_training.py), imported from this pack."""
    return pack_module("nodes.distill_training")


def distill_module():
    return pack_module("tcd_core.distill")


@dataclass(frozen=True)
class Family:
    name: str  # the ComfyUI model config's class name
    pixel_multiple: int  # sides must be multiples of this many pixels


def detect_family(path: str) -> Family:
    """The model family from the checkpoint's header alone (ComfyUI's detection on shapes): nothing loaded."""
    import comfy.model_detection
    from safetensors import safe_open

    if not str(path).endswith(".safetensors"):
        raise TrainerError(f"--pretrained_model {path}: give a single-file .safetensors checkpoint")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    except Exception as error:  # safetensors raises its own error types
        raise TrainerError(f"--pretrained_model {path}: not a readable safetensors file ({error})") from None
    meta = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, shape in shapes.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(meta)
    config = comfy.model_detection.model_config_from_unet(meta, prefix, metadata=metadata)
    name = type(config).__name__ if config is not None else None
    if name not in SUPPORTED_FAMILIES:
        found = name or "no model ComfyUI recognises"
        raise TrainerError(
            f"--pretrained_model {path}: {found}; the trainer distils SD1.x, SD2.x (eps or v) and SDXL checkpoints "
            f"({', '.join(SUPPORTED_FAMILIES)})"
        )
    levels = len(config.unet_config.get("channel_mult", [1, 2, 4, 4]))
    return Family(name, VAE_DOWNSCALE * 2 ** (levels - 1))


def check_resolution(resolution: Resolution, family: Family) -> None:
    for side in (resolution.width, resolution.height):
        if side % family.pixel_multiple:
            m = family.pixel_multiple
            raise TrainerError(
                f"--resolution {resolution.width}x{resolution.height}: this {family.name} model takes sides that are "
                f"multiples of {m} pixels ({VAE_DOWNSCALE} per latent x {m // VAE_DOWNSCALE} UNet downscale); "
                f"e.g. {max(m, side // m * m)}"
            )


def load_checkpoint(path: str, weight_dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(ModelPatcher, CLIP, VAE) of a single-file checkpoint, with ComfyUI's own classes."""
    import comfy.sd

    patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, model_options={"dtype": weight_dtype}
    )
    if clip is None or vae is None:
        raise TrainerError(f"--pretrained_model {path}: the checkpoint must hold its text encoder and VAE")
    return patcher, clip, vae


def open_run(patcher: Any, args: Any, compute_dtype: torch.dtype) -> Any:
    """The node's DistillRun on a clone of ``patcher`` (LoRA attached, teacher = adapters off), with the
    trainer's compute dtype (the node offers bf16 / fp32; accelerate users also train in fp16)."""
    training, distill = training_module(), distill_module()
    try:
        facts = training.model_facts(patcher)
        config = distill.DistillConfig(
            method=args.method,
            prediction=facts.prediction,
            num_ddim_timesteps=args.num_ddim_timesteps,
            guidance_min=args.w_min,
            guidance_max=args.w_max,
            loss=args.loss_type,
            huber_c=args.huber_c,
            s_rule=args.s_rule,
            s_zero_share=args.s_zero_share,
            ema_decay=args.ema_decay,
            timestep_scaling=args.timestep_scaling_factor,
        ).validate()
    except Exception as error:
        if type(error).__name__ == "TCDInputError":
            raise TrainerError(str(error).replace(f"{training.NODE_NAME} ", "")) from None
        raise
    settings = training.TrainSettings(
        steps=args.max_train_steps,
        learning_rate=args.learning_rate,
        rank=args.lora_rank,
        batch_size=args.train_batch_size,
        grad_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
        training_dtype="fp32",
        lora_dtype="fp32",
        gradient_checkpointing=args.gradient_checkpointing,
    )
    run = training.DistillRun(patcher, training.DistillDataset([], [], []), facts, config, settings)
    run.compute_dtype = compute_dtype
    run.patcher.set_model_compute_dtype(compute_dtype)
    return run


class DistillModule(torch.nn.Module):
    """The LoRA adapters as one module whose forward is the loss of Eq. 29 (``tcd_core.distill.distill_loss``
    with the run's student / teacher / target), so accelerate's DDP all-reduces exactly their gradients.

    The frozen UNet is deliberately not a submodule: DDP neither broadcasts nor buckets it.
    """

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.adapters = torch.nn.ModuleList(run.lora.adapters.values())
        object.__setattr__(self, "run", run)

    def forward(self, x0: Tensor, noise: Tensor, points: tuple, cond: dict, uncond: dict) -> Tensor:
        distill, run = distill_module(), self.run
        points = distill.TrainingPoints(*points)
        return distill.distill_loss(
            run.config, run.alphas_cumprod, x0, noise, points, run.student, run.teacher, run.target, cond, uncond
        )


# --- batches ------------------------------------------------------------------------------------------


class IndexedDraws:
    """The default randomness: one generator per global sample index (data/sample_generator)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def generators(self, indices: Sequence[int]) -> list[torch.Generator]:
        return [sample_generator(self.seed, g) for g in indices]


class TextEncoder:
    """Captions as CONDITIONING entries ([tensor, dict]) with ComfyUI's CLIP, cached by text."""

    def __init__(self, clip: Any, max_cached: int = 4096) -> None:
        self.clip, self.max_cached, self.cache = clip, max_cached, {}

    def __call__(self, text: str) -> list:
        entry = self.cache.get(text)
        if entry is None:
            with torch.no_grad():
                (cond, extra), *_ = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text), show_pbar=False)
            entry = [cond.detach().cpu(), {k: v.detach().cpu() if isinstance(v, Tensor) else v
                                           for k, v in extra.items()}]  # fmt: skip
            if len(self.cache) >= self.max_cached:
                self.cache.pop(next(iter(self.cache)))
            self.cache[text] = entry
        return entry


@dataclass
class Batch:
    x0: Tensor
    noise: Tensor
    points: tuple
    cond: dict
    uncond: dict
    indices: list[int]


class BatchBuilder:
    """Samples -> the tensors of one micro-batch: pixels (crop / flip from the sample's generator), VAE
    latents (ComfyUI's VAE Encode, then the model's ``process_latent_in``), noise and training points from
    the same generator, and the conds ComfyUI's sampler would build (``encode_conds`` / ``batch_conds``)."""

    def __init__(self, run: Any, vae: Any, text: TextEncoder, negative_prompt: str, resolution: Resolution,
                 crop: str, flip: bool, draws: Any) -> None:  # fmt: skip
        self.run, self.vae, self.text, self.resolution = run, vae, text, resolution
        self.crop, self.flip, self.draws = crop, flip, draws
        self.negative = negative_prompt

    def encode_pixels(self, pixels: Tensor) -> Tensor:
        """Raw VAE latents of [n, H, W, 3] pixels in 0..1 (ComfyUI's VAE Encode)."""
        with torch.no_grad():
            return self.vae.encode(pixels).float().cpu()

    def pixels_of(self, sample: Sample, generator: torch.Generator) -> tuple[Tensor, dict]:
        return prepare_image(sample.image, self.resolution, self.crop, self.flip, generator)

    def build(self, samples: list[Sample]) -> Batch:
        training, distill = training_module(), distill_module()
        run = self.run
        base, device = run.patcher.model, run.patcher.load_device
        generators = self.draws.generators([s.index for s in samples])
        sizes: list[dict] = []
        raw: list[Tensor | None] = []
        pixels: list[Tensor] = []
        for sample, gen in zip(samples, generators, strict=True):
            if sample.latent is not None:
                raw.append(sample.latent.float())
                sizes.append({})
            else:
                image, size = self.pixels_of(sample, gen)
                pixels.append(image)
                raw.append(None)
                sizes.append(size)
        if pixels:
            encoded = iter(self.encode_pixels(torch.stack(pixels)).split(1))
            raw = [next(encoded) if r is None else r for r in raw]
        latents = [base.process_latent_in(r) for r in raw]
        noise = torch.cat([torch.randn(x.shape, generator=g) for x, g in zip(latents, generators, strict=True)])
        drawn = [distill.draw_training_points(run.config, 1, g) for g in generators]
        points = tuple(torch.cat(field).to(device) for field in zip(*drawn, strict=True))
        pos, neg = [], []
        for sample, latent, size in zip(samples, latents, sizes, strict=True):
            cond, extra = self.text(sample.caption)
            ucond, uextra = self.text(self.negative)
            pos.append(training.encode_conds(base, [cond, {**extra, **size}], latent, device, "positive"))
            neg.append(training.encode_conds(base, [ucond, {**uextra, **size}], latent, device, "negative"))
        x0 = torch.cat(latents).to(device)
        return Batch(x0, noise.to(device), points, training.batch_conds(pos), training.batch_conds(neg),
                     [s.index for s in samples])  # fmt: skip


# --- validation and saving -----------------------------------------------------------------------------


def validation_images(run: Any, vae: Any, text: TextEncoder, prompts: Sequence[str], resolution: Resolution,
                      steps: int, gamma: float, seed: int) -> list[Any]:  # fmt: skip
    """One image per prompt with the student, sampled by the pack's TCD sampler (tcd_core.sample_tcd through
    nodes/comfy_adapter.py, as the TCD Sampler node runs it) in ComfyUI's sampling, cfg 1, then VAE-decoded."""
    import comfy.sample
    import comfy.samplers
    from PIL import Image

    adapter = pack_module("nodes.comfy_adapter")
    patcher = run.patcher
    sigmas = adapter.tcd_sigmas(patcher.get_model_object("model_sampling"), steps)
    sampler = comfy.samplers.KSAMPLER(adapter.ksampler_tcd_sampler, extra_options={"gamma": gamma})
    channels = run.facts.latent_channels
    latent = torch.zeros(1, channels, resolution.height // VAE_DOWNSCALE, resolution.width // VAE_DOWNSCALE)
    images = []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            noise = comfy.sample.prepare_noise(latent, seed + i)
            positive, negative = [text(prompt)], [text("")]
            samples = comfy.sample.sample_custom(
                patcher, noise, 1.0, sampler, sigmas, positive, negative, latent, disable_pbar=True, seed=seed + i
            )
            pixels = vae.decode(samples).reshape(-1, resolution.height, resolution.width, 3)[0]
            data = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            images.append(Image.fromarray(data))
    return images


def save_lora(run: Any, path: str, metadata: dict[str, str]) -> None:
    """The student's LoRA in ComfyUI's saved-LoRA layout (the node's ``lora_state_dict``), as safetensors."""
    import comfy.utils

    comfy.utils.save_torch_file(run.lora_state_dict(), str(path), metadata=metadata)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up over ``warmup`` steps, then constant, linear decay to 0 or cosine decay to 0."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return step / warmup  # diffusers' get_scheduler: 0 at step 0
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
