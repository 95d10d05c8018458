"""Train (or load from the cache) the benchmark's teachers and the digit classifier.

Teacher: eps-prediction on SD's scaled_linear 1000-step schedule, ``E w(t) ||eps - eps_theta(a_t x0 +
s_t eps, t)||^2`` with t uniform on 0..999 (Ho et al. 2020; ``w = 1``, or min-SNR-gamma weights
``min(SNR_t, gamma) / SNR_t`` of Hang et al. 2023), AdamW with cosine decay, and an EMA of the
weights (0.999) as the network kept. Cached under .dev/bench-cache/distill/ by a hash of every
setting, so the full benchmark trains each teacher once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from tcd_core.distill import EMA, add_noise

from .nets import Classifier, EpsConv, EpsMLP
from .sampling import ALPHAS_CUMPROD

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".dev" / "bench-cache" / "distill"


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    dim: int
    hidden: int
    depth: int
    iterations: int
    batch: int
    lr: float
    seed: int = 0
    arch: str = "mlp"  # "mlp" (EpsMLP, hidden width) | "conv" (EpsConv, hidden = channels)
    snr_gamma: float = 0.0  # > 0: min-SNR-gamma loss weights min(SNR, gamma) / SNR (Hang et al. 2023); 0: weight 1

    def key(self) -> str:
        settings = asdict(self)
        for name, default in (("arch", "mlp"), ("snr_gamma", 0.0)):  # the keys of the teachers from before them
            if settings[name] == default:
                del settings[name]
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        if self.arch == "conv":
            net = f"eps-conv net {self.hidden} channels x {self.depth} residual blocks"
        else:
            net = f"eps-MLP hidden {self.hidden} x {self.depth} blocks"
        return net + (f", min-SNR-{self.snr_gamma:g} loss weights" if self.snr_gamma > 0 else "")

    def build(self) -> torch.nn.Module:
        if self.arch == "conv":
            return EpsConv(self.dim, self.hidden, self.depth)
        return EpsMLP(self.dim, self.hidden, self.depth)


def min_snr_weights(t: Tensor, gamma: float) -> Tensor:
    """min(SNR_t, gamma) / SNR_t for eps-prediction (Hang et al. 2023), SNR_t = abar_t / (1 - abar_t):
    1 where the noise dominates, down to gamma / SNR_t at low noise, where a small teacher memorises."""
    snr = ALPHAS_CUMPROD[t] / (1 - ALPHAS_CUMPROD[t])
    return (snr.clamp(max=gamma) / snr).float()


def _cached(path: Path, build: Callable[[], torch.nn.Module], train: Callable[[torch.nn.Module], None]):
    model = build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), True
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), False


def train_teacher(
    spec: TeacherSpec, draw_batch: Callable[[int, torch.Generator], Tensor], cache: bool = True
) -> tuple[torch.nn.Module, bool]:
    """The teacher for ``spec``: (network, loaded_from_cache). ``draw_batch(n, generator)`` gives clean data."""

    def train(model: torch.nn.Module) -> None:
        torch.manual_seed(spec.seed)
        gen = torch.Generator().manual_seed(spec.seed)
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
        ema = EMA(list(model.parameters()), decay=0.999)
        for it in range(spec.iterations):
            for group in opt.param_groups:
                group["lr"] = spec.lr * 0.5 * (1 + math.cos(math.pi * it / spec.iterations))
            x0 = draw_batch(spec.batch, gen)
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, 1000, (spec.batch,), generator=gen)
            per_sample = (model(add_noise(ALPHAS_CUMPROD, x0, noise, t), t) - noise).pow(2).mean(dim=1)
            if spec.snr_gamma > 0:
                per_sample = per_sample * min_snr_weights(t, spec.snr_gamma)
            loss = per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(list(model.parameters()))
        ema.copy_to(list(model.parameters()))

    if not cache:
        model = spec.build()
        train(model)
        return model.eval(), False
    model, hit = _cached(CACHE_DIR / f"teacher-{spec.name}-{spec.key()}.pt", spec.build, train)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, hit


def train_classifier(x: Tensor, y: Tensor, iterations: int = 3000, seed: int = 0) -> Classifier:
    """The digit classifier (train split only), cached; its penultimate layer gives the FD features."""
    key = hashlib.sha256(f"{x.sum().item():.6f}-{len(x)}-{iterations}-{seed}".encode()).hexdigest()[:12]

    def train(model: torch.nn.Module) -> None:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        for _ in range(iterations):
            idx = torch.randint(0, len(x), (128,), generator=gen)
            xb = x[idx] + 0.05 * torch.randn(128, x.shape[1], generator=gen)  # mild noise: smoother features
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    model, _ = _cached(CACHE_DIR / f"classifier-{key}.pt", Classifier, train)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()
