"""The two data sets of the distillation benchmark: an 8-Gaussian ring (2-D) and scikit-learn's 8x8 digits.

Both are real data a package can ship (nothing is downloaded). Digits are scaled from 0..16 to
[-1, 1] and split once, with a fixed seed, into a training split (teacher, classifier) and a
held-out split (the data-vs-data floor of every distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RING_MODES = 8
RING_RADIUS = 1.0
RING_STD = 0.08


def ring_centres() -> Tensor:
    """The 8 mode centres on the circle of radius RING_RADIUS."""
    angles = torch.arange(RING_MODES, dtype=torch.float64) * (2 * math.pi / RING_MODES)
    return (RING_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def sample_ring(n: int, generator: torch.Generator) -> Tensor:
    """n i.i.d. draws from the equal-weight 8-Gaussian ring (std RING_STD per coordinate)."""
    modes = torch.randint(RING_MODES, (n,), generator=generator)
    return ring_centres()[modes] + RING_STD * torch.randn(n, 2, generator=generator)


@dataclass(frozen=True)
class Digits:
    train: Tensor  # [n_train, 64] in [-1, 1]
    train_labels: Tensor
    test: Tensor  # held out: never seen by the teacher or the classifier
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
