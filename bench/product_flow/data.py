"""Digits as SD3-style 16-channel latents, and class conditioning with a pooled vector.

A digit (8x8, values in [-1, 1]) becomes a [16, 8, 8] latent by a fixed random linear map: each pixel value x is
placed along one seeded direction r of the 16 channels, latent[:, i, j] = r x[i, j] with |r|^2 = 16 (so a channel
has a pixel's scale on average, as the eps benchmark's 4 equal channels have). Decoding is the least-squares left
inverse, x = r . latent / 16: exact on data, and it projects out the 15 channel directions that data never uses
(where sample noise lands). LATENTs are stored in the raw space of SD3's latent format
(``process_latent_in``: (raw - 0.0609) x 1.5305), so the network sees the latents above.

Prompts: each class has a fixed seeded context [1, TOKENS, context_dim] (SD3's ``c_crossattn``) and a pooled
vector [1, pooled_dim] (``pooled_output`` -> SD3's ``y``); the "empty" negative its own pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bench.product.data import CLASSES, TOKENS, LatentCodec, Prompts

FLOW_CHANNELS = 16
SD3_SCALE, SD3_SHIFT = 1.5305, 0.0609  # comfy.latent_formats.SD3


def channel_direction(seed: int = 16) -> Tensor:
    """The fixed direction r in channel space, |r|^2 = FLOW_CHANNELS."""
    r = torch.randn(FLOW_CHANNELS, generator=torch.Generator().manual_seed(seed))
    return r * (FLOW_CHANNELS**0.5 / r.norm())


def encode_flow(digits: Tensor) -> Tensor:
    """[n, 64] digits in [-1, 1] -> [n, 16, 8, 8] model-space latents (latent[:, i, j] = r x[i, j])."""
    return digits.reshape(-1, 1, 8, 8) * channel_direction().view(1, -1, 1, 1)


def decode_flow(latents: Tensor) -> Tensor:
    """[n, 16, 8, 8] model-space latents -> [n, 64] digits: r . latent / 16 (the left inverse of encode_flow)."""
    r = channel_direction().view(1, -1, 1, 1)
    return (latents.float() * r).sum(1).reshape(len(latents), 64) / FLOW_CHANNELS


FLOW_CODEC = LatentCodec("sd3-16ch-random-direction", (FLOW_CHANNELS, 8, 8), encode_flow, decode_flow, SD3_SCALE,
                         SD3_SHIFT)  # fmt: skip


@dataclass(frozen=True)
class PooledPrompts(Prompts):
    """Prompts with a pooled vector per class (SD3 / Flux conditioning: ``pooled_output`` beside the tokens)."""

    pooled: Tensor  # [CLASSES, pooled_dim]
    empty_pooled: Tensor  # [1, pooled_dim]

    def pooled_of(self, labels: Tensor) -> Tensor:
        return self.pooled[labels]

    def positive(self, label: int) -> list:
        return [[self.classes[label : label + 1].clone(), {"pooled_output": self.pooled[label : label + 1].clone()}]]

    def negative(self) -> list:
        return [[self.empty.clone(), {"pooled_output": self.empty_pooled.clone()}]]

    def batch(self, labels: Tensor) -> list:
        return [[self.context(labels).clone(), {"pooled_output": self.pooled_of(labels).clone()}]]


def make_pooled_prompts(context_dim: int, pooled_dim: int, seed: int = 1234) -> PooledPrompts:
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randn(CLASSES, TOKENS, context_dim, generator=gen)
    empty = torch.randn(1, TOKENS, context_dim, generator=gen)
    pooled = torch.randn(CLASSES, pooled_dim, generator=gen)
    empty_pooled = torch.randn(1, pooled_dim, generator=gen)
    return PooledPrompts(classes, empty, pooled, empty_pooled)
