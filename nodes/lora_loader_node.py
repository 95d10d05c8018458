"""TCD LoRA Loader: a TCD LoRA plus a stack of style LoRAs, each with its own strength."""

from __future__ import annotations

import inspect

import folder_paths
from comfy_api.latest import io

from ..tcd_comfy.lora_stack import NONE, apply_lora, unlisted_lora_message

STYLE_SLOTS = 3
LORA_NAME_INPUTS = ("tcd_lora", *(f"style_lora_{i}" for i in range(1, STYLE_SLOTS + 1)))


def _validate_lora_names(cls, **names: str | None) -> bool | str:
    """Refuse names outside the loras folders before the graph runs (HTTP 400 naming the input).

    Declaring these inputs here replaces ComfyUI's own list check of them (which 0.3.x does not do for
    V3 combos anyway), so every ComfyUI version gives the same answer. Linked values arrive as None.
    """
    for input_name in LORA_NAME_INPUTS:
        name = names.get(input_name)
        if name is None or (name == NONE and input_name != "tcd_lora"):
            continue
        message = unlisted_lora_message(name)
        if message is not None:
            return f"TCD LoRA Loader {input_name}: {message}"
    return True


# ComfyUI reads validate_inputs' parameter names (inspect.getfullargspec) to choose which inputs to pass
# and which of its own checks to skip; **kwargs alone would skip its range checks of every input, the
# strengths too. So the signature names exactly the LoRA-name inputs, generated from STYLE_SLOTS.
_validate_lora_names.__signature__ = inspect.Signature(
    [
        inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in LORA_NAME_INPUTS),
    ]
)


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
            "LoRA patching (every format ComfyUI's LoraLoader applies). Errors, before patching, when a LoRA "
            "patches nothing in this model or any of its patches has the wrong shape (another model family); "
            "warns when it fits partly by name.",
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

    validate_inputs = classmethod(_validate_lora_names)

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
