"""The pack's ComfyUI nodes; thin wrappers whose math lives in tcd_core."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .distill_node import TCDDistillLoRA
from .ksampler_registry import register_tcd_in_ksampler
from .lora_loader_node import TCDLoraLoader
from .sampler_node import TCDSampler
from .scheduler_node import TCDScheduler

NODES: list[type[io.ComfyNode]] = [TCDSampler, TCDScheduler, TCDLoraLoader, TCDDistillLoRA]


class TCDExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_tcd_in_ksampler()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


__all__ = ["NODES", "TCDExtension", "register_tcd_in_ksampler"]
