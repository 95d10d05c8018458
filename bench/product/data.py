"""Digits as SD1.5-style latents and class conditioning.

A digit (8x8, values in [-1, 1]) is upsampled 2x (nearest) to 16x16 and pixel-unshuffled (factor 2) into a
[4, 8, 8] latent: the 4 channels are the 4 sub-pixels of each 2x2 block, equal for data. Decoding is the
exact left inverse (pixel shuffle, then the mean of each 2x2 block), which also averages out sample noise
that breaks the channels' equality. LATENTs are stored in the model's raw latent space (divided by SD1.5's
scale factor 0.18215), so that ComfyUI's ``process_latent_in`` hands the UNet data in [-1, 1].

Each class has a fixed seeded context embedding [1, TOKENS, context_dim]; the "empty" negative its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SD15_SCALE = 0.18215
TOKENS = 4
CLASSES = 10


@dataclass(frozen=True)
class Digits:
    train: Tensor  # [n_train, 64] in [-1, 1]
    train_labels: Tensor
    test: Tensor  # held out: never seen by the teacher, the students or the classifier
    test_labels: Tensor


def load_digits(test_share: float = 0.3, seed: int = 0) -> Digits:
    """scikit-learn's 1,797 8x8 digits, scaled to [-1, 1], split train / held-out (stratified, seeded)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(
        torch.arange(len(x)).numpy(), test_size=test_share, random_state=seed, stratify=y.numpy()
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return Digits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def encode(digits: Tensor) -> Tensor:
    """[n, 64] digits in [-1, 1] -> [n, 4, 8, 8] model-space latents (nearest 2x upsampling, pixel unshuffle)."""
    images = digits.reshape(-1, 1, 8, 8)
    up = torch.nn.functional.interpolate(images, scale_factor=2, mode="nearest")
    return torch.nn.functional.pixel_unshuffle(up, 2)


def decode(latents: Tensor) -> Tensor:
    """[n, 4, 8, 8] model-space latents -> [n, 64] digits: pixel shuffle, 2x2 mean (the left inverse of encode)."""
    up = torch.nn.functional.pixel_shuffle(latents.float(), 2)
    return torch.nn.functional.avg_pool2d(up, 2).reshape(len(latents), 64)


def to_raw(latents: Tensor) -> Tensor:
    """Model-space latents -> a LATENT's raw samples (process_latent_in multiplies by the scale factor)."""
    return latents / SD15_SCALE


def from_raw(samples: Tensor) -> Tensor:
    """A sampler's output (process_latent_out applied) -> model-space latents."""
    return samples * SD15_SCALE


@dataclass(frozen=True)
class LatentCodec:
    """How digits become one model family's latents: ``encode`` / ``decode`` between [n, 64] digits and model-space
    latents of ``shape``, and the family's latent format (``process_latent_in``: model = (raw - shift) x scale)."""

    name: str
    shape: tuple[int, ...]  # one latent, model space
    encode: Callable[[Tensor], Tensor]
    decode: Callable[[Tensor], Tensor]
    scale: float
    shift: float = 0.0

    def to_raw(self, latents: Tensor) -> Tensor:
        """Model-space latents -> a LATENT's raw samples (what ``process_latent_in`` maps back)."""
        return latents / self.scale + self.shift

    def from_raw(self, samples: Tensor) -> Tensor:
        """A sampler's output (``process_latent_out`` applied) -> model-space latents."""
        return (samples - self.shift) * self.scale


SD15_CODEC = LatentCodec("sd15-4ch", (4, 8, 8), encode, decode, SD15_SCALE)
"""The eps benchmark's mapping (module docstring) in SD1.5's latent format."""


@dataclass(frozen=True)
class Prompts:
    """Fixed context embeddings: one per class and the empty negative."""

    classes: Tensor  # [CLASSES, TOKENS, context_dim]
    empty: Tensor  # [1, TOKENS, context_dim]

    def context(self, labels: Tensor) -> Tensor:
        return self.classes[labels]

    def positive(self, label: int) -> list:
        """One CONDITIONING for one class."""
        return [[self.classes[label : label + 1].clone(), {}]]

    def negative(self) -> list:
        return [[self.empty.clone(), {}]]

    def batch(self, labels: Tensor) -> list:
        """One CONDITIONING with a row per label (a sampling batch)."""
        return [[self.context(labels).clone(), {}]]


def make_prompts(context_dim: int, seed: int = 1234) -> Prompts:
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randn(CLASSES, TOKENS, context_dim, generator=gen)
    empty = torch.randn(1, TOKENS, context_dim, generator=gen)
    return Prompts(classes, empty)


def balanced_labels(n: int) -> Tensor:
    """n labels, n // CLASSES of each class, in class order."""
    return torch.arange(CLASSES).repeat_interleave(n // CLASSES)
