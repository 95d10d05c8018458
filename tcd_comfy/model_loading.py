"""Loading a training clone in full and giving it back: ComfyUI's loaded-model list, and its Train LoRA
gradient checkpointing, done and undone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import comfy.model_management


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


@contextlib.contextmanager
def gradient_checkpointing(patcher: Any, enabled: bool) -> Iterator[None]:
    """ComfyUI's Train LoRA checkpointing (its own patch / unpatch of the UNet's top blocks), undone after."""
    if not enabled:
        yield
        return
    from comfy_extras import nodes_train

    diffusion_model = patcher.model.diffusion_model
    for module in nodes_train.find_all_highest_child_module_with_forward(diffusion_model):
        nodes_train.patch(module)
    try:
        yield
    finally:
        for module in diffusion_model.modules():
            nodes_train.unpatch(module)
