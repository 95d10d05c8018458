"""Full-size SDXL and SD1.5 models with no weights: ComfyUI's own classes on the meta device.

    model, clip = sdxl_meta_model()     # ModelPatcher + comfy.sd.CLIP, real keys and shapes, ~0 bytes

Every tensor lives on PyTorch's meta device, so the key maps (comfy.lora.model_lora_keys_unet /
model_lora_keys_clip), the state-dict shapes and ModelPatcher.add_patches are exactly ComfyUI's for
the real model, while nothing is allocated. Weights cannot be computed on these models: use them for
what patches land where, and the SD1.5 test checkpoint for patched values. ComfyUI must already be
importable (devkit.inprocess.load_comfy, or COMFYUI_PATH on sys.path).
"""

from __future__ import annotations

from typing import Any

from devkit.build_test_models import SD15_UNET_CONFIG, SDXL_UNET_CONFIG, model_config_for


def meta_model(unet_config: dict) -> tuple[Any, Any]:
    """(ModelPatcher, CLIP) of the ComfyUI model that ``unet_config`` detects as, on the meta device."""
    import comfy.model_patcher
    import comfy.sd
    import torch

    meta, cpu = torch.device("meta"), torch.device("cpu")
    model_config = model_config_for(unet_config, torch.float16)
    model = model_config.get_model({}, device=meta)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    options = {"initial_device": meta, "load_device": cpu, "offload_device": cpu, "dtype": torch.float16}
    clip = comfy.sd.CLIP(model_config.clip_target(), model_options=options)
    return patcher, clip


def sdxl_meta_model() -> tuple[Any, Any]:
    """SDXL base: its UNet (comfy.model_base.SDXL) and CLIP-L + CLIP-G (comfy.sdxl_clip.SDXLClipModel)."""
    return meta_model(SDXL_UNET_CONFIG)


def sd15_meta_model() -> tuple[Any, Any]:
    """SD1.5: its UNet (comfy.model_base.BaseModel) and CLIP-L (comfy.sd1_clip.SD1ClipModel)."""
    return meta_model(SD15_UNET_CONFIG)
