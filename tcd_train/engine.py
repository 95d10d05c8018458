"""The model side of the trainer: the teacher checkpoint through ComfyUI's own loader, the node's student (LoRA
adapters, teacher switch, UNet call: ``tcd_comfy.lora_student``) behind a module DDP can wrap, batches,
validation, saving. Imported after ``comfy_host.import_comfyui``: it imports ComfyUI.

Why ComfyUI's loader (``comfy.sd.load_checkpoint_guess_config``) and not diffusers' ``from_single_file``:
the trained LoRA must be the one the ``TCD Distill LoRA`` node trains and ComfyUI's ``LoraLoader`` applies.
With ComfyUI's model classes the trainer has the same UNet modules, the same key map
(``comfy.lora.model_lora_keys_unet``), the same adapters (``comfy.weight_adapter``) and the same UNet
call as the node, by importing them (``tcd_comfy``), not by converting between layouts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import comfy.model_detection
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import torch
from torch import Tensor

from ..tcd_comfy import sampling
from ..tcd_comfy.distill_data import batch_conds, encode_conds
from ..tcd_comfy.distill_model import FLOW_FAMILIES, model_facts
from ..tcd_comfy.guidance_inputs import EmbeddedGuidanceInputs
from ..tcd_comfy.lora_student import LoraStudent
from ..tcd_core.distill import DistillConfig, TrainingPoints, draw_training_points
from ..tcd_core.distiller import DistillBatch, Distiller, TrainSettings
from ..tcd_core.errors import TCDInputError
from .data import Sample, prepare_image, sample_generator
from .options import Resolution, TrainerError, trainer_error

# ComfyUI model configs (comfy.supported_models) the trainer distils: discrete-time VP UNets, eps or v, and the
# node's flow image families (tcd_comfy.distill_model.FLOW_FAMILIES; its data are images, so no video model).
VP_FAMILIES = ("SD15", "SD20", "SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")
IMAGE_FLOW_FAMILIES = tuple(name for name, family in FLOW_FAMILIES.items() if not family.video)
SUPPORTED_FAMILIES = (*VP_FAMILIES, *IMAGE_FLOW_FAMILIES)
# The text encoders' type for ComfyUI's load_clip (CLIPLoader's / DualCLIPLoader's `type`) per flow family.
CLIP_TYPES = {"SD3": "SD3", "Flux": "FLUX", "FluxSchnell": "FLUX", "QwenImage": "QWEN_IMAGE", "ZImage": "LUMINA2"}
TEXT_ENCODERS = {
    "SD3": "CLIP-L, CLIP-G and / or T5-XXL",
    "Flux": "CLIP-L and T5-XXL",
    "FluxSchnell": "CLIP-L and T5-XXL",
    "QwenImage": "Qwen2.5-VL 7B",
    "ZImage": "Qwen3 4B",
}
WEIGHT_DTYPES = {"default": None, "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
VAE_DOWNSCALE = 8  # SD / SDXL / SD3 / Flux VAEs: 8 pixels per latent cell
COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TEXT_ENCODER_PREFIXES = ("cond_stage_model.", "conditioner.", "text_encoders.")
VAE_PREFIXES = ("first_stage_model.", "vae.")


@dataclass(frozen=True)
class Family:
    name: str  # the ComfyUI model config's class name
    pixel_multiple: int  # sides must be multiples of this many pixels
    diffusion_model_only: bool = False  # a models/diffusion_models file: no text encoder, no VAE
    has_text_encoder: bool = True
    has_vae: bool = True

    @property
    def flow(self) -> bool:
        return self.name in IMAGE_FLOW_FAMILIES


def detect_family(path: str) -> Family:
    """The model family from the file's header alone (ComfyUI's detection on shapes): nothing loaded. A single-file
    checkpoint (``model.diffusion_model.`` and the text encoder / VAE beside it) or a diffusion-model file, as
    ComfyUI's Load Diffusion Model reads it."""
    from safetensors import safe_open

    if not str(path).endswith(".safetensors"):
        raise TrainerError(f"--pretrained_model {path}: give a .safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
            shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}
    except Exception as error:  # safetensors raises its own error types
        raise TrainerError(f"--pretrained_model {path}: not a readable safetensors file ({error})") from None
    meta = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, shape in shapes.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(meta)
    config = comfy.model_detection.model_config_from_unet(meta, prefix, metadata=metadata)
    diffusion_model_only = config is None or not any(key.startswith(prefix) for key in meta)
    if config is None:  # a diffusion-model file: the network's keys without a prefix (Load Diffusion Model's case)
        config = comfy.model_detection.model_config_from_unet(meta, "", metadata=metadata)
    name = type(config).__name__ if config is not None else None
    if name not in SUPPORTED_FAMILIES:
        found = name or "no model ComfyUI recognises"
        labels = ", ".join(FLOW_FAMILIES[family].label for family in IMAGE_FLOW_FAMILIES)
        raise TrainerError(
            f"--pretrained_model {path}: {found}; the trainer distils SD1.x, SD2.x (eps or v) and SDXL checkpoints "
            f"({', '.join(VP_FAMILIES)}) and the flow image models {labels} ({', '.join(IMAGE_FLOW_FAMILIES)}); "
            "video models only with the TCD Distill LoRA node"
        )
    if name in FLOW_FAMILIES:
        patch = config.unet_config.get("patch_size", 2)
        multiple = VAE_DOWNSCALE * (int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch))
    else:
        multiple = VAE_DOWNSCALE * 2 ** (len(config.unet_config.get("channel_mult", [1, 2, 4, 4])) - 1)
    text = any(key.startswith(TEXT_ENCODER_PREFIXES) for key in meta)
    vae = any(key.startswith(VAE_PREFIXES) for key in meta)
    return Family(
        name, multiple, diffusion_model_only, text and not diffusion_model_only, vae and not diffusion_model_only
    )


def check_family_files(args: Any, family: Family) -> None:
    """What the teacher needs beside its file: a diffusion-model file takes its text encoders and VAE as options;
    the fp8 weight option is for flow models' diffusion-model files (Load Diffusion Model's)."""
    if family.diffusion_model_only and not family.flow:
        raise TrainerError(
            f"--pretrained_model {args.pretrained_model}: a diffusion-model file of {family.name}; the trainer takes "
            "SD1.x, SD2.x and SDXL as single-file checkpoints (models/checkpoints), with their text encoder and VAE"
        )
    if not family.has_text_encoder and not args.text_encoder:
        wanted = TEXT_ENCODERS.get(family.name, "its CLIP text encoder")
        raise TrainerError(
            f"--text_encoder: {args.pretrained_model} holds no text encoder (a diffusion-model file, as in "
            f"models/diffusion_models): give this {family.name} model's ({wanted}) with --text_encoder FILE, once "
            "per file"
        )
    if not family.has_vae and not args.vae:
        raise TrainerError(f"--vae: {args.pretrained_model} holds no VAE: give this {family.name} model's with --vae")
    if args.text_encoder and not family.flow:
        raise TrainerError(
            f"--text_encoder: the trainer loads a {family.name} checkpoint's own text encoders; separate ones are for "
            "the flow models' diffusion-model files"
        )
    if args.weight_dtype != "default" and not family.flow:
        raise TrainerError(f"--weight_dtype {args.weight_dtype}: fp8 loading is for flow models, not {family.name}")


def check_resolution(resolution: Resolution, family: Family) -> None:
    for side in (resolution.width, resolution.height):
        if side % family.pixel_multiple:
            m = family.pixel_multiple
            raise TrainerError(
                f"--resolution {resolution.width}x{resolution.height}: this {family.name} model takes sides that are "
                f"multiples of {m} pixels ({VAE_DOWNSCALE} per latent x {m // VAE_DOWNSCALE} network downscale); "
                f"e.g. {max(m, side // m * m)}"
            )


def load_checkpoint(path: str, weight_dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(ModelPatcher, CLIP, VAE) of a single-file checkpoint, with ComfyUI's own classes."""
    patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, model_options={"dtype": weight_dtype}
    )
    if clip is None or vae is None:
        raise TrainerError(f"--pretrained_model {path}: the checkpoint must hold its text encoder and VAE")
    return patcher, clip, vae


def load_teacher(args: Any, family: Family, compute_dtype: torch.dtype) -> tuple[Any, Any, Any]:
    """(ModelPatcher, CLIP, VAE) as ComfyUI's loaders make them: a VP checkpoint as before (weights in the compute
    dtype); a flow model from its single-file checkpoint (``load_checkpoint_guess_config``) or its diffusion-model
    file (``load_diffusion_model``, Load Diffusion Model's loader, with ``--weight_dtype``), its text encoders from
    ``--text_encoder`` files (``load_clip`` with the family's type, (Dual)CLIPLoader's) and its VAE from ``--vae``
    (``comfy.sd.VAE``, VAE Loader's), each replacing the checkpoint's own."""
    if not family.flow:
        return load_checkpoint(args.pretrained_model, compute_dtype)
    options: dict[str, Any] = {}
    if WEIGHT_DTYPES[args.weight_dtype] is not None:
        options["dtype"] = WEIGHT_DTYPES[args.weight_dtype]
    clip = vae = None
    if family.diffusion_model_only:
        patcher = comfy.sd.load_diffusion_model(str(args.pretrained_model), model_options=options)
    else:
        patcher, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(args.pretrained_model), output_vae=not args.vae, output_clip=not args.text_encoder,
            model_options=options,
        )  # fmt: skip
    if args.text_encoder:
        clip_type = getattr(comfy.sd.CLIPType, CLIP_TYPES[family.name])
        clip = comfy.sd.load_clip(ckpt_paths=list(args.text_encoder), clip_type=clip_type)
    if args.vae:
        vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(args.vae)))
    if clip is None or vae is None:
        missing = "--text_encoder" if clip is None else "--vae"
        raise TrainerError(f"{missing}: {args.pretrained_model} gave no {'text encoder' if clip is None else 'VAE'}")
    return patcher, clip, vae


def open_student(
    patcher: Any,
    config: DistillConfig,
    settings: TrainSettings,
    compute_dtype: torch.dtype,
    embedded_guidance: tuple[float, float] = (0.0, 0.0),
) -> tuple[LoraStudent, DistillConfig]:
    """The node's LoraStudent on a clone of ``patcher`` (LoRA attached, teacher = adapters off) in the trainer's
    compute dtype (the node offers bf16 / fp32; accelerate users also train in fp16), fp32 LoRA weights; and
    ``config`` with the model's facts (prediction type; a flow model's schedule length and embedded guidance input)
    and the embedded guidance range (``--embedded_guidance_min`` / ``_max``; 0, 0: Flux's 3.5)."""
    try:
        facts = model_facts(patcher)
        low, high = embedded_guidance
        guidance = EmbeddedGuidanceInputs(low, high).config_fields(facts, positive=())
        config = dataclasses.replace(config, **facts.config_fields(), **guidance)
    except TCDInputError as error:
        raise trainer_error(error) from None
    student = LoraStudent(
        patcher, facts, rank=settings.rank, seed=settings.seed, compute_dtype=compute_dtype,
        lora_dtype=torch.float32, checkpointing=settings.gradient_checkpointing,
    )  # fmt: skip
    return student, config


class DistillModule(torch.nn.Module):
    """The LoRA adapters as one module whose forward is the Distiller's loss of one batch, so that accelerate's
    DDP all-reduces exactly their gradients. The frozen UNet is deliberately not a submodule: DDP neither
    broadcasts nor buckets it."""

    def __init__(self, student: LoraStudent, distiller: Distiller) -> None:
        super().__init__()
        self.adapters = torch.nn.ModuleList(student.lora.adapters.values())
        object.__setattr__(self, "distiller", distiller)

    def forward(self, x0: Tensor, noise: Tensor, points: tuple, cond: dict, uncond: dict) -> Tensor:
        batch = DistillBatch(x0, cond, uncond, noise=noise, points=TrainingPoints(*points))
        return self.distiller.loss(batch)


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


class BatchBuilder:
    """Samples -> the tensors of one micro-batch: pixels (crop / flip from the sample's generator), VAE
    latents (ComfyUI's VAE Encode, then the model's ``process_latent_in``), noise and training points from
    the same generator, and the conds ComfyUI's sampler would build (``encode_conds`` / ``batch_conds``)."""

    def __init__(self, student: LoraStudent, config: DistillConfig, vae: Any, text: TextEncoder, negative_prompt: str,
                 resolution: Resolution, crop: str, flip: bool, draws: Any) -> None:  # fmt: skip
        self.student, self.config, self.vae, self.text, self.resolution = student, config, vae, text, resolution
        self.crop, self.flip, self.draws = crop, flip, draws
        self.negative = negative_prompt

    def encode_pixels(self, pixels: Tensor) -> Tensor:
        """Raw VAE latents of [n, H, W, 3] pixels in 0..1 (ComfyUI's VAE Encode)."""
        with torch.no_grad():
            return self.vae.encode(pixels).float().cpu()

    def pixels_of(self, sample: Sample, generator: torch.Generator) -> tuple[Tensor, dict]:
        return prepare_image(sample.image, self.resolution, self.crop, self.flip, generator)

    def build(self, samples: list[Sample]) -> DistillBatch:
        base, device = self.student.patcher.model, self.student.patcher.load_device
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
        drawn = [draw_training_points(self.config, 1, g) for g in generators]
        points = TrainingPoints(*(torch.cat(field).to(device) for field in zip(*drawn, strict=True)))
        pos, neg = [], []
        for sample, latent, size in zip(samples, latents, sizes, strict=True):
            cond, extra = self.text(sample.caption)
            ucond, uextra = self.text(self.negative)
            pos.append(encode_conds(base, [cond, {**extra, **size}], latent, device, "positive"))
            neg.append(encode_conds(base, [ucond, {**uextra, **size}], latent, device, "negative"))
        x0 = torch.cat(latents).to(device)
        return DistillBatch(x0, batch_conds(pos), batch_conds(neg), noise=noise.to(device), points=points)


# --- validation and saving -----------------------------------------------------------------------------


def validation_images(student: LoraStudent, vae: Any, text: TextEncoder, prompts: Sequence[str], resolution: Resolution,
                      steps: int, gamma: float, seed: int) -> list[Any]:  # fmt: skip
    """One image per prompt with the student, sampled by the pack's TCD sampler (tcd_core.sample_tcd through
    tcd_comfy/sampling.py, as the TCD Sampler node runs it) in ComfyUI's sampling, cfg 1, then VAE-decoded."""
    from PIL import Image

    patcher = student.patcher
    sigmas = sampling.tcd_sigmas(patcher.get_model_object("model_sampling"), steps)
    sampler = comfy.samplers.KSAMPLER(sampling.ksampler_tcd_sampler, extra_options={"gamma": gamma})
    channels = student.facts.latent_channels
    frames = (1,) if student.facts.latent_dims == 3 else ()  # Qwen-Image: one frame of [B, C, T, H, W]
    latent = torch.zeros(1, channels, *frames, resolution.height // VAE_DOWNSCALE, resolution.width // VAE_DOWNSCALE)
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


def lora_bytes(student: LoraStudent, metadata: dict[str, str]) -> bytes:
    """The student's LoRA in ComfyUI's saved-LoRA layout (the node's), as a safetensors file's bytes (the trainer
    writes them atomically: tcd_train.train.write_atomically)."""
    import safetensors.torch

    return safetensors.torch.save(student.lora_state_dict(), metadata=metadata)


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
