"""The step of distillation, written once: the node, the trainer and the benchmark all call ``Distiller.step``.

One optimizer step (TCD paper, Alg. 1-2; LCM-LoRA's training loop):

1. for each micro-batch (``grad_accumulation_steps`` of them) and each same-shape group in it: draw the
   noise and the training points (unless the caller drew them), compute Eq. 29's loss with the teacher,
   the target and the student (``tcd_core.distill.distill_loss``), and back-propagate it weighted by the
   group's share of the micro-batch and by 1 / accumulation;
2. clip the gradients (optional), step the optimizer, zero the gradients, update the EMA target.

Framework-free: a model is a ``ModelFn``; a framework takes part through ``StepHooks`` (accelerate's
DDP forward, its backward, which divides by the accumulation itself, its ``no_sync`` context and its
gradient clipping). ``TrainSettings`` are the optimisation settings the node and the trainer share.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .distill import (
    EMA,
    DistillConfig,
    ModelFn,
    NoiseSchedule,
    TrainingPoints,
    distill_loss,
    draw_training_points,
    noise_schedule,
)
from .settings import check_fields, setting

__all__ = [
    "DTYPES",
    "OPTIMIZERS",
    "DistillBatch",
    "Distiller",
    "StepHooks",
    "TrainSettings",
    "TrainingDiverged",
    "make_optimizer",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "AdamW": torch.optim.AdamW,
    "Adam": torch.optim.Adam,
    "SGD": torch.optim.SGD,
    "RMSprop": torch.optim.RMSprop,
}  # ComfyUI Train LoRA's list
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # training_dtype "none" = the model's own


class TrainingDiverged(RuntimeError):
    """A step's loss or gradients are not finite: the step is not taken, so the trained weights stay those
    of the last finite step. ``step``: the 1-based step that failed; ``loss``: its loss (nan / inf, or the
    finite loss of a step whose gradients were not)."""

    def __init__(self, step: int, loss: float, what: str, lr: float) -> None:
        self.step, self.loss, self.what, self.lr = step, loss, what, lr
        super().__init__(
            f"training diverged at step {step}: {what} (loss {loss:.6g}, learning rate {lr:g}); the weights are "
            f"those of step {step - 1}"
        )


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation settings of a distillation run (ComfyUI Train LoRA's, in the node's input order);
    refused on construction when out of bounds, naming the field."""

    batch_size: int = setting(
        1, "Images per training batch (at most the dataset size).", low=1, high=10000, flag="--train_batch_size",
        cli_tooltip="Images per process per micro-step; a step takes processes x this x --gradient_accumulation_steps "
        "(images repeat, each copy with its own noise, when the data holds fewer).",
    )  # fmt: skip
    grad_accumulation_steps: int = setting(
        1, "Batches whose gradients add up to one optimizer step.", low=1, high=1024,
        flag="--gradient_accumulation_steps",
    )  # fmt: skip
    steps: int = setting(
        3000, "Optimizer steps to train (the paper's TCF(1) reached its quality in about 3000).",
        low=1, high=100000, flag="--max_train_steps",
    )  # fmt: skip
    learning_rate: float = setting(
        1e-4, "The optimizer's learning rate (1e-4 as diffusers' LCM-LoRA script).", low=1e-7, high=1.0, step=1e-7
    )
    rank: int = setting(
        64, "The rank of the new LoRA layers (64 as the published TCD and LCM LoRAs).", low=1, high=128,
        flag="--lora_rank",
    )  # fmt: skip
    optimizer: str = setting(
        "AdamW", "The optimizer (PyTorch defaults besides the learning rate).", choices=tuple(OPTIMIZERS)
    )
    seed: int = setting(
        0,
        "Seed of the LoRA initialisation and of every draw (images, noise, timesteps, guidance scales): the same "
        "seed trains the same LoRA.",
        low=0, high=0xFFFFFFFFFFFFFFFF,
    )  # fmt: skip
    training_dtype: str = setting(
        "bf16",
        "The dtype the network computes in (bf16: half the memory; fp32: exact, slow; none: the model's own, as "
        "ComfyUI samples it, e.g. for fp8 weights).",
        choices=(*DTYPES, "none"), cli=False,
    )  # fmt: skip
    lora_dtype: str = setting(
        "fp32",
        "The dtype of the trained LoRA weights and of the saved file. fp32 keeps the small updates of a 1e-4 "
        "learning rate that bf16 would round away.",
        choices=tuple(DTYPES), cli=False,
    )  # fmt: skip
    gradient_checkpointing: bool = setting(
        True, "Recompute activations in the backward pass: much less memory, about a third slower.", kind=bool
    )

    def __post_init__(self) -> None:
        check_fields(self)


def make_optimizer(settings: TrainSettings, params: list[Tensor]) -> torch.optim.Optimizer:
    """The optimizer of ``settings`` with PyTorch's defaults besides the learning rate (as Train LoRA)."""
    return OPTIMIZERS[settings.optimizer](params, lr=settings.learning_rate)


@dataclass
class DistillBatch:
    """One group of same-shape samples of a micro-batch.

    ``noise`` / ``points``: drawn by the Distiller from its generator when None (the node's order: noise,
    then points); given by a caller that draws per sample (the trainer). ``share``: the group's share of
    the micro-batch's samples, its weight in the micro-batch's loss.
    """

    x0: Tensor
    cond: Any
    uncond: Any = None
    noise: Tensor | None = None
    points: TrainingPoints | None = None
    share: float = 1.0


@dataclass
class StepHooks:
    """How a training framework takes part in a step; the defaults are plain PyTorch on one process.

    ``forward``: computes a group's loss (e.g. through a DDP-wrapped module whose forward calls
    ``Distiller.loss``); ``backward``: back-propagates it; ``accumulate``: a context around each
    micro-batch (accelerate's ``accumulate``, which skips the all-reduce but on the last one);
    ``clip_grad``: called on the trainable tensors before the optimizer step; ``backward_divides``: the
    backward divides by the accumulation steps itself (accelerate's does), so the Distiller does not;
    ``scaled_gradients``: a loss scaler (fp16 mixed precision) skips steps with non-finite gradients
    itself, so the Distiller checks only the loss.
    """

    forward: Callable[[DistillBatch], Tensor] | None = None
    backward: Callable[[Tensor], None] = Tensor.backward
    accumulate: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext
    clip_grad: Callable[[list[Tensor]], None] | None = None
    backward_divides: bool = False
    scaled_gradients: bool = False


@dataclass
class Distiller:
    """Distillation of ``student`` (with its trainable ``params``) from ``teacher`` with Eq. 29.

    ``schedule``: the model's noise schedule, a ``VPSchedule`` (or its bare ``alphas_cumprod`` tensor) or a
    ``FlowSchedule`` of the model's own sigmas; it and ``config`` are checked together on construction, before
    any work. The target is the student itself under no_grad (``config.ema_decay == 0``, stop-grad) or the
    student with the EMA of ``params`` swapped in (``self.ema``). ``generator`` (a CPU generator) draws what a
    batch does not bring. A non-finite loss or gradient stops training with ``TrainingDiverged`` before
    the optimizer steps, so the weights (and the EMA) stay those of the last finite step.
    """

    config: DistillConfig
    schedule: NoiseSchedule | Tensor
    student: ModelFn
    teacher: ModelFn
    params: list[Tensor]
    optimizer: torch.optim.Optimizer
    accumulation: int = 1
    generator: torch.Generator | None = None
    hooks: StepHooks = field(default_factory=StepHooks)
    ema: EMA | None = field(init=False)
    steps_taken: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        noise_schedule(self.config, self.schedule)
        self.ema = EMA(self.params, self.config.ema_decay) if self.config.ema_decay > 0 else None

    def target(self, x_t: Tensor, t: Tensor, cond: Any, **inputs: Any) -> Tensor:
        """The target network (called under no_grad by ``distill_loss``; ``inputs``: e.g. ``guidance``)."""
        if self.ema is None:
            return self.student(x_t, t, cond, **inputs)
        with self.ema.swapped_in(self.params):
            return self.student(x_t, t, cond, **inputs)

    def loss(self, batch: DistillBatch) -> Tensor:
        """Eq. 29's loss of one group; draws its noise, then its training points, when not given."""
        x0 = batch.x0
        noise = batch.noise
        if noise is None:
            noise = torch.randn(x0.shape, generator=self.generator).to(x0.device)
        points = batch.points
        if points is None:
            points = draw_training_points(self.config, x0.shape[0], self.generator, x0.device)
        return distill_loss(
            self.config, self.schedule, x0, noise, points, self.student, self.teacher, self.target,
            batch.cond, batch.uncond,
        )  # fmt: skip

    def step(self, micro_batches: Iterable[Sequence[DistillBatch]]) -> float:
        """One optimizer step over ``accumulation`` micro-batches (each a list of same-shape groups, taken
        one micro-batch at a time, so a lazy iterable draws its data in order); returns the mean loss."""
        forward = self.hooks.forward or self.loss
        weight = 1.0 if self.hooks.backward_divides else 1.0 / self.accumulation
        losses = []
        for groups in micro_batches:
            total = 0.0
            with self.hooks.accumulate():
                for batch in groups:
                    loss = forward(batch)
                    value = loss.item()
                    if not math.isfinite(value):
                        self._diverged(value, "the loss is not finite")
                    self.hooks.backward(loss * (batch.share * weight))
                    total += value * batch.share
            losses.append(total)
        if len(losses) != self.accumulation:
            raise ValueError(f"a step takes {self.accumulation} micro-batches, got {len(losses)}")
        mean = sum(losses) / self.accumulation
        if not self.hooks.scaled_gradients and not self._gradients_finite():
            self._diverged(mean, "a gradient is not finite")
        if self.hooks.clip_grad is not None:
            self.hooks.clip_grad(self.params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.params)
        self.steps_taken += 1
        return mean

    def _gradients_finite(self) -> bool:
        """One host-device sync for all the gradients."""
        checks = [torch.isfinite(p.grad).all() for p in self.params if p.grad is not None]
        return not checks or bool(torch.stack(checks).all())

    def _diverged(self, loss: float, what: str) -> None:
        """Drop the step's gradients and stop: the weights stay those of the last finite step."""
        self.optimizer.zero_grad(set_to_none=True)
        lr = float(self.optimizer.param_groups[0]["lr"])
        raise TrainingDiverged(self.steps_taken + 1, loss, what, lr)
