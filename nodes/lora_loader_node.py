"""TCD LoRA Loader: a TCD LoRA plus a stack of style LoRAs, each with its own strength."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from .lora_stack import NONE, apply_lora, unlisted_lora_message

STYLE_SLOTS = 3


class TCDLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = folder_paths.get_filename_list("loras")
        style_inputs = []
        for i in range(1, STYLE_SLOTS + 1):
            style_inputs += [
                io.Combo.Input(
                    f"style_lora_{i}",
                    options=[NONE, *loras],
                    default=NONE,
                    tooltip=f"Style LoRA {i} stacked on the TCD LoRA (e.g. Papercut, trigger word 'papercut'), "
                    "or None.",
                ),
                io.Float.Input(
                    f"style_lora_{i}_strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip=f"How strongly style LoRA {i} acts (the official Papercut demo uses 1.0).",
                ),
            ]
        return io.Schema(
            node_id="TrajectoryConsistencyLoraLoader",
            display_name="TCD LoRA Loader",
            category="loaders",
            description="Loads a TCD LoRA and up to three style LoRAs onto the model (and CLIP) through ComfyUI's "
            "LoRA patching. Errors when a LoRA patches nothing in this model; warns when it fits partly.",
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model (SD1.5, SD2.1 or SDXL) to patch."),
                io.Clip.Input(
                    "clip",
                    optional=True,
                    tooltip="Optional: the text encoder, for LoRAs with text-encoder weights (TCD LoRAs have none).",
                ),
                io.Combo.Input(
                    "tcd_lora",
                    options=loras,
                    tooltip="The TCD LoRA for this model family (TCD-SD15, TCD-SD21-base or TCD-SDXL), from "
                    "ComfyUI's loras folders.",
                ),
                io.Float.Input(
                    "tcd_lora_strength",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip="How strongly the TCD LoRA acts; 1.0 as released.",
                ),
                *style_inputs,
            ],
            outputs=[
                io.Model.Output(tooltip="The model with every LoRA applied."),
                io.Clip.Output(tooltip="The text encoder with the LoRAs' text-encoder weights (None without CLIP)."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        tcd_lora: str | None = None,
        style_lora_1: str | None = None,
        style_lora_2: str | None = None,
        style_lora_3: str | None = None,
    ) -> bool | str:
        """Refuse names outside the loras folders before the graph runs (HTTP 400 naming the input).

        Declaring these inputs here replaces ComfyUI's own list check of them (which 0.3.x does not do for
        V3 combos anyway), so every ComfyUI version gives the same answer. Linked values arrive as None.
        """
        names = {
            "tcd_lora": tcd_lora,
            "style_lora_1": style_lora_1,
            "style_lora_2": style_lora_2,
            "style_lora_3": style_lora_3,
        }
        for input_name, name in names.items():
            if name is None or (name == NONE and input_name != "tcd_lora"):
                continue
            message = unlisted_lora_message(name)
            if message is not None:
                return f"TCD LoRA Loader {input_name}: {message}"
        return True

    @classmethod
    def execute(cls, model, tcd_lora: str, tcd_lora_strength: float, clip=None, **styles) -> io.NodeOutput:
        stack = [("tcd_lora", tcd_lora, tcd_lora_strength)]
        stack += [
            (f"style_lora_{i}", styles[f"style_lora_{i}"], styles[f"style_lora_{i}_strength"])
            for i in range(1, STYLE_SLOTS + 1)
        ]
        for input_name, name, strength in stack:
            if name != NONE and strength != 0:
                try:
                    model, clip, _ = apply_lora(model, clip, name, strength)
                except ValueError as error:  # name the node and the input, as the other TCD nodes do
                    raise ValueError(f"TCD LoRA Loader {input_name}: {error}") from None
        return io.NodeOutput(model, clip)
