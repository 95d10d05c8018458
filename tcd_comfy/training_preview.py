"""A preview of the student while it trains: the training clone (adapters on) sampled with the TCD Sampler on the
first positive prompt, shown through ComfyUI's progress preview (the image KSampler shows while it samples).

Sampling draws from its own seeded noise inside ``torch.random.fork_rng`` and runs under ``no_grad``, so a
run trains the same LoRA with and without previews (tested).
"""

from __future__ import annotations

from typing import Any

import comfy.model_management
import comfy.sample
import comfy.samplers
import latent_preview
import torch
from torch import Tensor

from .sampling import KSAMPLER_GAMMA, ksampler_tcd_sampler, tcd_sigmas

PREVIEW_STEPS = 4
PREVIEW_SEED = 0


def previewer_for(patcher: Any) -> Any:
    """ComfyUI's previewer for this model's latents (TAESD or latent-to-RGB, as the server's preview method
    chooses); latent-to-RGB when the server shows no previews, since this one was asked for."""
    previewer = latent_preview.get_previewer(patcher.load_device, patcher.model.latent_format)
    if previewer is None:
        latent_format = patcher.model.latent_format
        previewer = latent_preview.Latent2RGBPreviewer(
            latent_format.latent_rgb_factors,
            getattr(latent_format, "latent_rgb_factors_bias", None),
            getattr(latent_format, "latent_rgb_factors_reshape", None),
        )
    return previewer


class TrainingPreview:
    """Every ``every`` steps, the student's image: TCD Sampler, ``PREVIEW_STEPS`` steps, gamma 0.3, CFG 1, the
    first positive CONDITIONING entry, a latent the size of the first training image, seed ``PREVIEW_SEED``."""

    def __init__(self, patcher: Any, positive: list, latent_shape: tuple[int, ...], every: int) -> None:
        self.patcher = patcher
        self.positive = [positive]
        self.latent_shape = (1, *latent_shape[1:])
        self.every = every
        self.previewer = previewer_for(patcher)
        self.sampler = comfy.samplers.KSAMPLER(ksampler_tcd_sampler, extra_options={"gamma": KSAMPLER_GAMMA})

    def due(self, step: int) -> bool:
        """Whether a preview follows the 1-based ``step``."""
        return self.every > 0 and step % self.every == 0

    def sample(self) -> Tensor:
        """The student's latent (ComfyUI's LATENT space) from the fixed seed."""
        sampling = self.patcher.get_model_object("model_sampling")
        sigmas = tcd_sigmas(sampling, PREVIEW_STEPS)
        latent = torch.zeros(self.latent_shape)
        devices = [comfy.model_management.get_torch_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            noise = comfy.sample.prepare_noise(latent, PREVIEW_SEED)
            return comfy.sample.sample_custom(
                self.patcher, noise, 1.0, self.sampler, sigmas, self.positive, self.positive, latent,
                disable_pbar=True, seed=PREVIEW_SEED,
            )  # fmt: skip

    def image(self) -> tuple[str, Any, int]:
        """The preview as ComfyUI's progress bar takes it: (format, PIL image, max size)."""
        latent = self.sample()
        internal = self.patcher.model.process_latent_in(latent.to(self.patcher.load_device))
        return self.previewer.decode_latent_to_preview_image("JPEG", internal)
