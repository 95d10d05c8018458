"""Loading a training clone in full and giving it back: ComfyUI's loaded-model list, and its Train LoRA
gradient checkpointing, done and undone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import comfy.model_management
import torch


def unload_clones(patcher: Any) -> None:
    """Unload every loaded clone of ``patcher``'s model (e.g. the checkpoint just sampled), so that loading
    the training clone runs ``ModelPatcher.load`` in full: its weight wrappers and compute-dtype casts."""
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is not None and patcher.is_clone(loaded[i].model):
            loaded.pop(i).model_unload()


def release_model(patcher: Any) -> None:
    """Unload a training clone from ComfyUI's loaded models (weights restored, moved to the offload
    device) and free the cached memory, so the next prompt loads its own model cleanly."""
    loaded = comfy.model_management.current_loaded_models
    for i in reversed(range(len(loaded))):
        if loaded[i].model is patcher:
            loaded.pop(i).model_unload()
    comfy.model_management.soft_empty_cache()


def checkpointed_modules(diffusion_model: Any, depth: int) -> list[Any]:
    """The modules checkpointed at ``depth`` (1: the network's top-level blocks, 2: their children, ...), found
    by Train LoRA's own functions (``find_modules_at_depth`` counts the network itself as depth 1)."""
    from comfy_extras import nodes_train

    if depth == 1:
        return nodes_train.find_all_highest_child_module_with_forward(diffusion_model)
    return nodes_train.find_modules_at_depth(diffusion_model, depth=depth + 1)


def _cloned(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _cloning_forward(forward: Any) -> Any:
    """``forward`` on copies of its tensor arguments, so that what it does to them in place stays inside it."""

    def cloning(*args: Any, **kwargs: Any) -> Any:
        return forward(*map(_cloned, args), **{name: _cloned(value) for name, value in kwargs.items()})

    return cloning


@contextlib.contextmanager
def gradient_checkpointing(
    patcher: Any, enabled: bool, depth: int = 1, offloading: bool = False, clone_inputs: bool = False
) -> Iterator[None]:
    """ComfyUI's Train LoRA checkpointing (its own patch / unpatch, with its offloading variant where asked)
    of the modules at ``depth``, undone after.

    ``clone_inputs`` (flow models): each checkpointed module first copies its tensor inputs, inside the checkpointed
    region. Flux's blocks add to their inputs in place (``img += ...``), so the recomputation in the backward pass
    would otherwise run on the block's output instead of its input (torch's checkpoint refuses it: "Recomputed
    values ... have different metadata").
    """
    if not enabled:
        yield
        return
    from comfy_extras import nodes_train

    diffusion_model = patcher.model.diffusion_model
    wrapped = []
    for module in checkpointed_modules(diffusion_model, depth):
        if clone_inputs and "forward" not in vars(module):
            module.forward = _cloning_forward(module.forward)
            wrapped.append(module)
        if offloading:
            _patch_offloading(module)
        else:
            nodes_train.patch(module)
    try:
        yield
    finally:
        for module in diffusion_model.modules():
            nodes_train.unpatch(module)
        for module in wrapped:
            del module.forward


@contextlib.contextmanager
def norm_inputs_copied(diffusion_model: Any) -> Iterator[None]:
    """While training a flow model: every norm layer normalises a copy of its input when gradients flow.

    Flux's blocks normalise the residual stream and then add to it in place (``x += ...``); the norm keeps its input
    for the backward pass, which the in-place add invalidates ("one of the variables needed for gradient computation
    has been modified by an inplace operation", in fp32 and in bf16 on the CPU). A copy costs one activation per
    norm call; the forward's values are unchanged. The hooks come off afterwards.
    """

    def copy_inputs(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not torch.is_grad_enabled():
            return None
        return tuple(map(_cloned, args)), kwargs

    handles = [
        module.register_forward_pre_hook(copy_inputs, with_kwargs=True)
        for module in diffusion_model.modules()
        if "norm" in type(module).__name__.lower() and not any(True for _ in module.children())
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _patch_offloading(module: Any) -> None:
    """Train LoRA's offloading checkpoint of a module. Its Linear / Conv variant (``OffloadCheckpointFunction``)
    back-propagates into the layer's adapters only through the input's gradient, so a layer whose input needs
    none (the time embedding's first Linear, the input conv) would never train its adapter (ComfyUI 0.30.0
    does exactly that); such calls take the standard checkpoint instead, and the LoRA is the one trained
    without offloading (tested)."""
    import torch
    from comfy_extras import nodes_train

    nodes_train.patch(module, offloading=True)
    offloaded, original = module.forward, getattr(module, "org_forward", None)
    if original is None or offloaded is original:
        return

    def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.requires_grad:
            return offloaded(x, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(original, x, *args, use_reentrant=False, **kwargs)

    module.forward = forward


@contextlib.contextmanager
def training_flags(quantized_backward: bool) -> Iterator[None]:
    """ComfyUI's training switches where the host has them (``comfy.model_management.in_training``, which
    keeps its ops off inference-only fast paths, and ``training_fp8_bwd``), as Train LoRA sets them."""
    management = comfy.model_management
    names = [name for name in ("in_training", "training_fp8_bwd") if hasattr(management, name)]
    saved = {name: getattr(management, name) for name in names}
    if "in_training" in saved:
        management.in_training = True
    if "training_fp8_bwd" in saved:
        management.training_fp8_bwd = quantized_backward
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(management, name, value)
