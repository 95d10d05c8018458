"""Applying LoRAs through ComfyUI's own LoRA patching, counting what each one patches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.lora
import comfy.lora_convert
import comfy.utils
import folder_paths

log = logging.getLogger("comfyui-tcd-sampling")

NONE = "None"
# Key fragments that carry a LoRA module's weights (kohya, diffusers/PEFT, LyCORIS, full diffs).
_WEIGHT_MARKERS = (
    ".lora_up.", ".lora_down.", ".lora_A.", ".lora_B.", ".lora.up.", ".lora.down.", "_lora.up.", "_lora.down.",
    ".hada_w1_a", ".lokr_w1", ".diff",
)  # fmt: skip


@dataclass(frozen=True)
class LoraFit:
    name: str
    modules: int  # LoRA modules in the file
    patched: int  # model (and CLIP) weights it patched

    @property
    def is_partial(self) -> bool:
        return self.patched < self.modules


def lora_modules(lora: dict[str, Any]) -> set[str]:
    """The module names of a LoRA state dict (each key cut at its weight marker)."""
    modules = set()
    for key in lora:
        for marker in _WEIGHT_MARKERS:
            cut = key.find(marker)
            if cut > 0:
                modules.add(key[:cut])
                break
    return modules


def unlisted_lora_message(name: str) -> str | None:
    """Why ``name`` may not be loaded (it is not a file in ComfyUI's loras folders), or None if it may."""
    if name in folder_paths.get_filename_list("loras"):
        return None
    return f"LoRA {name!r} is not in ComfyUI's loras folders; pick one from the list"


def lora_path(name: str) -> str:
    """The file of a LoRA listed in ComfyUI's loras folders; any other name is refused."""
    message = unlisted_lora_message(name)
    if message is not None:
        raise ValueError(message)
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise ValueError(f"LoRA {name!r} is listed but its file is gone; refresh the node")
    return path


def read_lora(name: str) -> dict[str, Any]:
    path = lora_path(name)
    try:
        lora = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as error:  # a truncated or corrupt file raises library-specific errors
        raise ValueError(f"LoRA {name!r} could not be read ({type(error).__name__}: {error})") from None
    if not lora_modules(lora):
        raise ValueError(f"{name!r} is not a LoRA: none of its {len(lora)} tensors has LoRA weight keys")
    return lora


def apply_lora(model: Any, clip: Any, name: str, strength: float) -> tuple[Any, Any, LoraFit]:
    """Patch clones of ``model`` (and ``clip``) with one LoRA; raise if it patches nothing here."""
    lora = comfy.lora_convert.convert_lora(read_lora(name))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    model = model.clone()
    patched = set(model.add_patches(patches, strength))
    if clip is not None:
        clip = clip.clone()
        patched |= set(clip.add_patches(patches, strength))
    fit = LoraFit(name, len(lora_modules(lora)), len(patched))
    if fit.patched == 0:
        raise ValueError(
            f"LoRA {name!r} patches nothing in this model ({fit.modules} modules, none match): "
            "it was made for another model family (e.g. an SDXL LoRA on an SD1.5 checkpoint)"
        )
    if fit.is_partial:
        log.warning(
            "LoRA %r fits this model partly: %d of its %d modules patch it%s",
            name,
            fit.patched,
            fit.modules,
            "" if clip is not None else " (connect CLIP to apply its text-encoder part)",
        )
    else:
        log.info("LoRA %r: all %d modules applied at strength %g", name, fit.patched, strength)
    return model, clip, fit
