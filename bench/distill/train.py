"""Distil a student from the teacher with tcd_core.distill (the code path the ComfyUI node runs).

Full fine-tuning: the student starts as a copy of the teacher, the teacher stays a frozen copy.
LoRA: one network; the teacher is that network with its adapters off, the student with them on.
Target: the student itself under no_grad (stop-grad, ``ema_decay = 0``) or an EMA of the trained
weights (``tcd_core.distill.EMA``). Same iterations, batch, optimiser and seed for every method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcd_core.distill import EMA, DistillConfig, distill_loss, draw_training_points

from .nets import adapters_off, add_lora
from .sampling import ALPHAS_CUMPROD


@dataclass(frozen=True)
class TrainSpec:
    iterations: int = 2000
    batch: int = 256
    lr: float = 1e-4
    lora_rank: int = 0  # 0 = full fine-tuning
    seed: int = 0


def model_fns(
    teacher: nn.Module, spec: TrainSpec
) -> tuple[nn.Module, list[nn.Parameter], Callable[..., Tensor], Callable[..., Tensor]]:
    """(student module, its trainable parameters, student fn, teacher fn) for full fine-tuning or LoRA."""
    student = copy.deepcopy(teacher).train()
    if spec.lora_rank:
        params = add_lora(student, spec.lora_rank, generator_seed=spec.seed)

        def teacher_fn(x: Tensor, t: Tensor, cond: object) -> Tensor:
            with adapters_off(student):
                return student(x, t, cond)

    else:
        for p in student.parameters():
            p.requires_grad_(True)
        params = list(student.parameters())
        frozen = teacher

        def teacher_fn(x: Tensor, t: Tensor, cond: object) -> Tensor:
            return frozen(x, t, cond)

    return student, params, student, teacher_fn


def distill(
    teacher: nn.Module,
    config: DistillConfig,
    spec: TrainSpec,
    draw_batch: Callable[[int, torch.Generator], Tensor],
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train a student for ``spec.iterations`` steps of Eq. 29 and return it (eval mode, EMA weights not applied)."""
    config.validate()
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    student, params, student_fn, teacher_fn = model_fns(teacher, spec)
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    ema = EMA(params, config.ema_decay) if config.ema_decay > 0 else None

    def target_fn(x: Tensor, t: Tensor, cond: object) -> Tensor:
        if ema is None:
            return student(x, t, cond)
        with ema.swapped_in(params):
            return student(x, t, cond)

    for it in range(spec.iterations):
        x0 = draw_batch(spec.batch, gen)
        noise = torch.randn(x0.shape, generator=gen)
        points = draw_training_points(config, spec.batch, gen)
        loss = distill_loss(config, ALPHAS_CUMPROD, x0, noise, points, student_fn, teacher_fn, target_fn, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(params)
        if on_step is not None:
            on_step(it, float(loss))
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()
