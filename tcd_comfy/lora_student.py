"""The student and the teacher of a distillation run on one ComfyUI model: a clone with LoRA training adapters,
the student with them on, the teacher with them off (the base weights exist once in memory).

Shared by the TCD Distill LoRA node (``distill_run.DistillRun``) and the ``tcd-train`` command; the step of
training is ``tcd_core.distiller.Distiller``'s, which takes ``student``, ``teacher``, ``params`` and ``schedule``
from here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import comfy.model_management
import torch
from comfy.weight_adapter.lora import LoraDiff
from torch import Tensor

from ..tcd_core.distill import ModelFn, NoiseSchedule
from .distill_model import ModelFacts, flow_fn, unet_fn
from .lora_adapters import attach_lora, detach_lora, install_lora, normal_plain_tensors
from .model_loading import gradient_checkpointing, norm_inputs_copied, release_model, training_flags, unload_clones


def native_compute_dtype(patcher: Any) -> torch.dtype:
    """The dtype ComfyUI computes this model in when nothing overrides it (Train LoRA's training_dtype none):
    its manual-cast dtype, else its weights' dtype; bf16 for weights too narrow to compute in (fp8)."""
    base = patcher.model
    dtype = base.manual_cast_dtype or base.get_dtype()
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


class LoraStudent:
    """A clone of ``model`` with a LoRA adapter on every target layer (``lora_adapters.attach_lora``).

    Use as a context manager (or call ``close()``): on enter the clone is loaded in full (its weight
    wrappers installed, checkpointing patched in when asked); on exit the adapters come off, checkpointing
    is undone and the clone is unloaded, whatever happened (a Cancel included), so the input model is as
    it was. Construct it outside ``torch.inference_mode`` (ComfyUI runs nodes inside it): its parameters
    must be normal tensors.
    """

    def __init__(
        self,
        model: Any,
        facts: ModelFacts,
        *,
        rank: int,
        seed: int,
        compute_dtype: torch.dtype | None,
        lora_dtype: torch.dtype,
        checkpointing: bool,
        existing: dict[str, LoraDiff] | None = None,
        algorithm: str = "LoRA",
        bypass: bool = False,
        offloading: bool = False,
        checkpoint_depth: int = 1,
        quantized_backward: bool = False,
    ) -> None:
        self.facts = facts
        self.lora_dtype = lora_dtype
        self.checkpointing = checkpointing
        self.checkpoint_depth = checkpoint_depth
        self.offloading = offloading
        self.quantized_backward = quantized_backward
        self.patcher = model.clone()
        if compute_dtype is None:  # training_dtype none: the model's own
            compute_dtype = native_compute_dtype(self.patcher)
        else:
            self.patcher.set_model_compute_dtype(compute_dtype)
        self.compute_dtype = compute_dtype
        self.lora = attach_lora(self.patcher, rank, lora_dtype, seed, existing, algorithm=algorithm, bypass=bypass)
        self.params: list[Tensor] = self.lora.parameters()
        if facts.flow:
            self.schedule: NoiseSchedule | Tensor = facts.schedule
            self.student: ModelFn = flow_fn(self.patcher, compute_dtype)
        else:  # a VP UNet: its alphas_cumprod on the device, the schedule as the node has always passed it
            self.schedule = facts.alphas_cumprod.to(self.patcher.load_device)
            self.student = unet_fn(self.patcher, compute_dtype)
        self._stack = contextlib.ExitStack()
        self._loaded = False

    @property
    def alphas_cumprod(self) -> Tensor:
        """A VP UNet's schedule table on the load device (the engine's ``schedule`` for it)."""
        return self.schedule

    def teacher(self, x_t: Tensor, t: Tensor, conds: dict, **inputs: Any) -> Tensor:
        """The base model: the same network with every adapter switched off (``inputs``: e.g. ``guidance``)."""
        with self.lora.switch.off():
            return self.student(x_t, t, conds, **inputs)

    def __enter__(self) -> LoraStudent:
        self._stack.callback(self._cleanup)
        self._stack.enter_context(torch.inference_mode(False))
        flow = self.facts.flow
        self._stack.enter_context(
            gradient_checkpointing(self.patcher, self.checkpointing, self.checkpoint_depth, self.offloading, flow)
        )
        if flow:
            self._stack.enter_context(norm_inputs_copied(self.patcher.model.diffusion_model))
        self._stack.enter_context(training_flags(self.quantized_backward))
        self.patcher.model.requires_grad_(False)
        unload_clones(self.patcher)
        comfy.model_management.load_models_gpu(
            [self.patcher], memory_required=1e20, force_full_load=not self.offloading
        )
        self._loaded = True
        self._stack.enter_context(normal_plain_tensors(self.patcher.model))
        install_lora(self.lora)
        self._stack.callback(self.lora.switch.eject)  # bypass hooks out before checkpointing is undone
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def _cleanup(self) -> None:
        detach_lora(self.lora)
        if self._loaded:
            release_model(self.patcher)
            self._loaded = False
        for param in self.params:
            param.grad = None

    def lora_state_dict(self) -> dict[str, Tensor]:
        """The trained LoRA (the online weights, also with an EMA target), in the LoRA dtype."""
        return self.lora.state_dict(self.lora_dtype)
