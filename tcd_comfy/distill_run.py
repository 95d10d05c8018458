"""The TCD Distill LoRA node's run: a ``LoraStudent`` of the input model, the node's dataset drawn as ComfyUI's
Train LoRA draws it, and one ``tcd_core.distiller.Distiller`` step per ``step()``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from comfy.weight_adapter.lora import LoraDiff
from torch import Tensor

from ..tcd_core.distill import DistillConfig
from ..tcd_core.distiller import DTYPES, DistillBatch, Distiller, TrainSettings, make_optimizer
from .distill_data import DistillDataset, batch_conds
from .distill_model import ModelFacts
from .host_training import HostTraining
from .lora_student import LoraStudent


class DistillRun:
    """One distillation run on a clone of a ComfyUI model: ``step()`` trains one optimizer step.

    A context manager, as its ``LoraStudent``: the clone is loaded on enter and given back on exit.
    Every draw (images, noise, training points) comes from one generator seeded with ``settings.seed``.
    """

    def __init__(
        self,
        model: Any,
        dataset: DistillDataset,
        facts: ModelFacts,
        config: DistillConfig,
        settings: TrainSettings,
        existing: dict[str, LoraDiff] | None = None,
        host: HostTraining | None = None,
    ) -> None:
        self.dataset = dataset
        self.facts = facts
        self.settings = settings
        self.host = host or HostTraining()
        self.buckets = dataset.buckets()
        with torch.inference_mode(False):  # the parameters, optimizer state and EMA copies: normal tensors
            self.model = LoraStudent(
                model, facts, rank=settings.rank, seed=settings.seed,
                compute_dtype=DTYPES.get(settings.training_dtype), lora_dtype=DTYPES[settings.lora_dtype],
                checkpointing=settings.gradient_checkpointing, existing=existing, algorithm=self.host.algorithm,
                bypass=self.host.bypass_mode, offloading=self.host.offloading,
                checkpoint_depth=self.host.checkpoint_depth, quantized_backward=self.host.quantized_backward,
            )  # fmt: skip
            self.generator = torch.Generator().manual_seed(settings.seed)
            self.distiller = Distiller(
                config, self.model.schedule, self.model.student, self.model.teacher, self.model.params,
                make_optimizer(settings, self.model.params), accumulation=settings.grad_accumulation_steps,
                generator=self.generator,
            )  # fmt: skip

    def __enter__(self) -> DistillRun:
        self.model.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.close()

    def draw_indices(self) -> list[int]:
        """Train LoRA's draw: a seeded random subset of min(batch_size, dataset size) images; in bucket mode
        from one resolution bucket, chosen with probability proportional to its size."""
        if not self.host.bucket_mode:
            order = torch.randperm(len(self.dataset), generator=self.generator)
            return order[: self.settings.batch_size].tolist()
        sizes = torch.tensor([len(bucket) for bucket in self.buckets], dtype=torch.float64)
        bucket = self.buckets[int(torch.multinomial(sizes, 1, generator=self.generator))]
        order = torch.randperm(len(bucket), generator=self.generator)
        return [bucket[i] for i in order[: self.settings.batch_size].tolist()]

    def group_key(self, i: int) -> tuple:
        """Images batched together: one latent size; on a flow model also one shape of every cond, since their
        text conds (T5 / Qwen features of each caption's length) concatenate only when equal (CONDRegular)."""
        key: tuple = tuple(self.dataset.latents[i].shape)
        if self.facts.flow:
            for conds in (self.dataset.positive[i], self.dataset.negative[i]):
                shapes = {name: tuple(c.cond.shape) for name, c in conds.items() if isinstance(c.cond, Tensor)}
                key += tuple(sorted(shapes.items()))
        return key

    def micro_batch(self) -> list[DistillBatch]:
        """One micro-batch (``draw_indices``) as groups of one image size (and, on a flow model, one cond shape)
        each; the loss is the batch mean either way."""
        indices = self.draw_indices()
        groups: dict[tuple, list[int]] = {}
        for i in indices:
            groups.setdefault(self.group_key(i), []).append(i)
        device = self.model.patcher.load_device
        return [
            DistillBatch(
                x0=torch.cat([self.dataset.latents[i] for i in members]).to(device).clone(),
                cond=batch_conds([self.dataset.positive[i] for i in members]),
                uncond=batch_conds([self.dataset.negative[i] for i in members]),
                share=len(members) / len(indices),
            )
            for members in groups.values()
        ]

    def _micro_batches(self) -> Iterator[list[DistillBatch]]:
        for _ in range(self.settings.grad_accumulation_steps):
            yield self.micro_batch()

    def step(self) -> float:
        """One optimizer step (over ``grad_accumulation_steps`` batches); returns the mean loss."""
        with torch.inference_mode(False):
            return self.distiller.step(self._micro_batches())

    def lora_state_dict(self) -> dict[str, Tensor]:
        return self.model.lora_state_dict()
