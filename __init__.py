"""TCD sampling for ComfyUI: Trajectory Consistency Distillation's sampler, scheduler and LoRA loader.

Loaded by ComfyUI as a V3 extension through ``comfy_entrypoint``. Importing this package does
nothing else: ComfyUI's modules are imported only when ComfyUI asks for the nodes.
"""


async def comfy_entrypoint():  # -> nodes.TCDExtension (a comfy_api ComfyExtension)
    from .nodes import TCDExtension, register_tcd_in_ksampler

    # ComfyUI 0.3.x never calls ComfyExtension.on_load, so register here (it is idempotent).
    register_tcd_in_ksampler()
    return TCDExtension()


__all__ = ["comfy_entrypoint"]
