"""TCD sampling for ComfyUI: Trajectory Consistency Distillation's sampler, scheduler and LoRA loader.

Loaded by ComfyUI as a V3 extension through ``comfy_entrypoint``.
"""

from .nodes import TCDExtension, register_tcd_in_ksampler


async def comfy_entrypoint() -> TCDExtension:
    # ComfyUI 0.3.x never calls ComfyExtension.on_load, so register here (it is idempotent).
    register_tcd_in_ksampler()
    return TCDExtension()


__all__ = ["comfy_entrypoint"]
