"""Small networks of the benchmark: eps-prediction MLP and conv nets with a timestep embedding, LoRA, a classifier.

The eps network takes diffusers' VP convention, ``eps = net(x_t, t)`` with integer timesteps on
the 1000-step schedule, so it is called exactly as tcd_core.distill calls a ComfyUI UNet.
LoRA here is the plain ``W x + (alpha / r) B A x`` (Hu et al. 2021) on every linear layer and its
LoCon form (a down conv of the base kernel, a 1x1 up conv) on every conv layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of integer timesteps (as in the DDPM / SD UNets)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.cos(), args.sin()], dim=1)


class Block(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(h)) + self.time(temb)))


class EpsMLP(nn.Module):
    """eps_theta(x_t, t): residual MLP with a sinusoidal timestep embedding."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, temb_dim: int = 64) -> None:
        super().__init__()
        self.temb_dim = temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(Block(hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        temb = self.temb(timestep_embedding(t, self.temb_dim))
        h = self.inp(x) + temb
        for block in self.blocks:
            h = block(h, temb)
        return self.out(nn.functional.silu(h))


class ConvBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, plus the timestep embedding as a per-channel shift."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.time = nn.Linear(hidden, channels)
        self.norm2 = nn.GroupNorm(8, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        y = self.conv1(nn.functional.silu(self.norm1(h))) + self.time(temb)[:, :, None, None]
        return h + self.conv2(nn.functional.silu(self.norm2(y)))


class EpsConv(nn.Module):
    """eps_theta(x_t, t) for square one-channel images given flat (8x8 digits as [n, 64]): a small
    convolutional residual network with no resampling (8x8 is small enough), same call as EpsMLP."""

    def __init__(self, dim: int, channels: int = 64, depth: int = 4, temb_dim: int = 64) -> None:
        super().__init__()
        self.side = math.isqrt(dim)
        if self.side * self.side != dim:
            raise ValueError(f"EpsConv needs a square image, got dim {dim}")
        self.temb_dim = temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(ConvBlock(channels, channels) for _ in range(depth))
        self.norm = nn.GroupNorm(8, channels)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        temb = self.temb(timestep_embedding(t, self.temb_dim))
        h = self.inp(x.reshape(-1, 1, self.side, self.side))
        for block in self.blocks:
            h = block(h, temb)
        return self.out(nn.functional.silu(self.norm(h))).reshape(x.shape)


class LoRAAdapter(nn.Module):
    """A frozen base layer plus a trainable low-rank update scaled by ``alpha / r``, switchable off."""

    def __init__(self, base: nn.Module, rank: int, alpha: float | None) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = (alpha if alpha is not None else rank) / rank
        self.enabled = True

    def update(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.enabled:
            out = out + self.scale * self.update(x)
        return out


class LoRALinear(LoRAAdapter):
    """A frozen nn.Linear plus ``(alpha / r) B A x``; B starts at zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None) -> None:
        super().__init__(base, rank, alpha)
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def update(self, x: Tensor) -> Tensor:
        return (x @ self.lora_a.T) @ self.lora_b.T


class LoRAConv2d(LoRAAdapter):
    """A frozen nn.Conv2d plus a rank-r update in LoCon form: a conv of the base's kernel, stride and
    padding down to r channels, then a 1x1 conv up (starting at zero)."""

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None) -> None:
        super().__init__(base, rank, alpha)
        self.lora_a = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.lora_b = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.zeros_(self.lora_b.weight)

    def update(self, x: Tensor) -> Tensor:
        return self.lora_b(self.lora_a(x))


def add_lora(model: nn.Module, rank: int, generator_seed: int) -> list[nn.Parameter]:
    """Wrap every nn.Linear (LoRALinear) and nn.Conv2d (LoRAConv2d) of ``model`` in place; returns the LoRA weights."""
    torch.manual_seed(generator_seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank))
            elif isinstance(child, nn.Conv2d):
                setattr(module, child_name, LoRAConv2d(child, rank))
    return [p for n, p in model.named_parameters() if "lora_" in n]


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """The base network (the teacher of a LoRA student): every LoRA adapter switched off inside the block."""
    layers = [m for m in model.modules() if isinstance(m, LoRAAdapter)]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


class Classifier(nn.Module):
    """Digit classifier; its penultimate layer is the feature space of the Frechet distance (FID analogue)."""

    def __init__(self, dim: int = 64, hidden: int = 256, features: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
