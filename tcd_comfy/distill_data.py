"""The distillation dataset from ComfyUI's LATENT and CONDITIONING values (Train LoRA's inputs): latents in
the model's latent space and per-image conds built by ComfyUI's own sampler helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import comfy.sampler_helpers
import comfy.samplers
import torch
from torch import Tensor

from .distill_model import ModelFacts, input_error


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


def fit_latent_dims(images: list[Tensor], facts: ModelFacts) -> list[Tensor]:
    """Image latents [1, C, H, W] of a model with 3-D latents (Qwen-Image, Wan: [B, C, T, H, W]) as one frame, as
    ComfyUI's sampling takes them (``comfy.sample.fix_empty_latent_channels``); others unchanged."""
    if facts.latent_dims != 3:
        return images
    return [image.unsqueeze(2) if image.ndim == 4 else image for image in images]


def latent_form(facts: ModelFacts) -> str:
    """What this model's latents look like, for the refusals."""
    c = facts.latent_channels
    if facts.latent_dims == 3 and facts.video:
        return f"{c}-channel video latents [B, {c}, T, H, W] (an image: [B, {c}, H, W])"
    if facts.latent_dims == 3:  # an image model with a video latent format (Qwen-Image)
        return f"{c}-channel image latents [B, {c}, 1, H, W] (or [B, {c}, H, W])"
    return f"{c}-channel image latents [B, C, H, W]" if not facts.flow else f"{c}-channel image latents [B, {c}, H, W]"


def check_latents(images: list[Tensor], facts: ModelFacts) -> None:
    """Refuse, naming ``latents``, an empty dataset and latents of another form, channel count (another family's
    VAE), size or with non-finite values."""
    if not images:
        raise input_error("latents", "the dataset is empty: give at least one latent (e.g. VAE Encode of an image)")
    m = facts.latent_multiple
    model, network = (f"this {facts.label} model", "network") if facts.flow else ("this model", "UNet")
    for i, image in enumerate(images):
        frames_ok = facts.latent_dims != 3 or facts.video or image.ndim != 5 or image.shape[2] == 1
        if image.ndim != 2 + facts.latent_dims or image.shape[1] != facts.latent_channels or not frames_ok:
            raise input_error(
                "latents",
                f"latent {i} has shape {tuple(image.shape)}, but {model} takes {latent_form(facts)} "
                "(encode the images with this model's VAE)",
            )
        if image.shape[-2] % m or image.shape[-1] % m:
            pixels = "images in multiples of 64 pixels" if m == 8 else f"images in multiples of {8 * m} pixels"
            raise input_error(
                "latents",
                f"latent {i} is {image.shape[-1]}x{image.shape[-2]}; the {network} needs latent sides that are "
                f"multiples of {m} ({pixels})",
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

    latents: list[Tensor]  # [1, C, H, W] each ([1, C, T, H, W] for 3-D latent formats), float32, CPU
    positive: list[dict]  # encode_conds per image
    negative: list[dict]

    def __len__(self) -> int:
        return len(self.latents)

    def buckets(self) -> list[list[int]]:
        """The images' indices grouped by latent size, in order of first appearance (ResolutionBucket's
        grouping, which the node's bucket mode draws batches from)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, latent in enumerate(self.latents):
            groups.setdefault(tuple(latent.shape), []).append(i)
        return list(groups.values())


def build_dataset(
    patcher: Any, latents: Sequence[Any], positive: Sequence[Any], negative: Sequence[Any], facts: ModelFacts
) -> DistillDataset:
    """Check and prepare the node's data inputs; every refusal names the input, before any training."""
    images = fit_latent_dims(flatten_latents(latents), facts)
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
