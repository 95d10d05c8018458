"""Test-only node pack: tiny random-weight flow-matching models of each family the TCD Distill LoRA node distils,
built with ComfyUI's own classes (``comfy.supported_models.<Family>(unet_config).get_model({})``) in a real
ModelPatcher, and the node ``TCDTestTinyFlowModel`` that builds one inside ComfyUI.

ComfyUI's model detection cannot see models this small (Flux's heads and rope sizes are fixed there, Z-Image is
recognised only at width 3840), so neither can its loaders: each model is built from its family's config class
directly, with the family's real module names and small widths (few blocks, widths of 64-256). ComfyUI leaves
parameters uninitialised (MMDiT's ``pos_embed``, Flux's RMSNorm ``scale``, Z-Image's pad tokens):
``fill_flow_module`` gives each a seeded value, norm scales 1. The text side takes 768-wide features with a 768-wide
pooled vector (the test checkpoint's CLIP-L), so that a real ``CLIPTextEncode`` feeds them in a server; a real model
takes T5-XXL / Qwen2.5-VL / Qwen3 features, which only changes the width of its text input layer.

ComfyUI loads this pack beside the pack under test, in the test servers (tests/conftest.py) and in process
(devkit.inprocess.load_comfy); the tests reach the builder through the loaded module (``tiny_flow_model``). It never
ships with the pack. In a server the model is built under ``torch.inference_mode``, as a loader node builds one.
"""

from __future__ import annotations

from typing import Any

import torch

TEXT_DIM = 768  # CLIP-L's hidden width and pooled width, as the test checkpoint's CLIP-L gives them

# Flux.1-dev: one double-stream and two single-stream blocks, rope axes summing to width / heads.
FLUX_DEV_CONFIG = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": TEXT_DIM,
    "context_in_dim": TEXT_DIM,
    "hidden_size": 64,
    "mlp_ratio": 4.0,
    "num_heads": 2,
    "depth": 1,
    "depth_single_blocks": 2,
    "axes_dim": [4, 14, 14],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}

# {family: (comfy.supported_models class name, unet_config)}; the widths are the smallest each class accepts.
FLOW_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    # SD3.5 (MMDiT-X): width 64 x depth, heads = depth, the last block's context half reduced; qk RMSNorm and the
    # second x-attention of SD3.5 medium on block 0.
    "SD3": (
        "SD3",
        {
            "in_channels": 16,
            "out_channels": 16,
            "patch_size": 2,
            "depth": 2,
            "input_size": None,
            "adm_in_channels": TEXT_DIM,
            "context_embedder_config": {
                "target": "torch.nn.Linear",
                "params": {"in_features": TEXT_DIM, "out_features": 128},
            },
            "pos_embed_max_size": 16,
            "num_patches": 256,
            "qk_norm": "rms",
            "x_block_self_attn_layers": [0],
            "pos_embed_scaling_factor": None,
        },
    ),
    "Flux": ("Flux", FLUX_DEV_CONFIG),
    "FluxSchnell": ("FluxSchnell", {**FLUX_DEV_CONFIG, "guidance_embed": False}),
    # Qwen-Image: two MMDiT blocks, head width 32 = the rope axes' sum; its latents are 5-D [B, 16, 1, H, W].
    "QwenImage": (
        "QwenImage",
        {
            "image_model": "qwen_image",
            "patch_size": 2,
            "in_channels": 64,
            "out_channels": 16,
            "num_layers": 2,
            "attention_head_dim": 32,
            "num_attention_heads": 2,
            "joint_attention_dim": TEXT_DIM,
            "axes_dims_rope": (8, 12, 12),
        },
    ),
    # Z-Image (ComfyUI's Lumina2 class, NextDiT with Z-Image's modulation): width 256 (its smallest: the time
    # embedding is 256 wide), two layers and one refiner layer of each kind, Z-Image's pad tokens.
    "ZImage": (
        "ZImage",
        {
            "image_model": "lumina2",
            "patch_size": 2,
            "in_channels": 16,
            "dim": 256,
            "cap_feat_dim": TEXT_DIM,
            "n_layers": 2,
            "n_refiner_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 2,
            "qk_norm": True,
            "axes_dims": [32, 48, 48],
            "axes_lens": [1536, 512, 512],
            "rope_theta": 256.0,
            "ffn_dim_multiplier": 8.0 / 3.0,
            "z_image_modulation": True,
            "time_scale": 1000.0,
            "pad_tokens_multiple": 32,
        },
    ),
    # Wan 2.2 TI2V 5B: two blocks of width 128 (its head width), 48-channel video latents [B, 48, T, H, W].
    "WAN22_T2V": (
        "WAN22_T2V",
        {
            "image_model": "wan2.1",
            "model_type": "t2v",
            "in_dim": 48,
            "out_dim": 48,
            "dim": 128,
            "ffn_dim": 256,
            "num_heads": 1,
            "num_layers": 2,
            "text_dim": TEXT_DIM,
            "freq_dim": 256,
            "patch_size": (1, 2, 2),
            "window_size": (-1, -1),
            "qk_norm": True,
            "cross_attn_norm": True,
            "eps": 1e-6,
        },
    ),
}
# Families the node refuses by name, for its tests: Lumina Image 2.0 (Z-Image's class, Gemma text features).
UNSUPPORTED_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "Lumina2": (
        "Lumina2",
        {
            "image_model": "lumina2",
            "patch_size": 2,
            "in_channels": 16,
            "dim": 64,
            "cap_feat_dim": TEXT_DIM,
            "n_layers": 1,
            "n_refiner_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 1,
            "qk_norm": True,
            "axes_dims": [8, 12, 12],
            "axes_lens": [300, 512, 512],
        },
    ),
}
TINY_MODELS = {**FLOW_FAMILIES, **UNSUPPORTED_FAMILIES}


def fill_flow_module(module: torch.nn.Module, generator: torch.Generator, weight_std: float = 0.05) -> None:
    """Give every parameter and floating buffer a seeded value: norm scales 1 (``*.scale``, norm modules' weights),
    biases 0, everything else (weights, ``pos_embed``, pad tokens) normal with ``weight_std``."""
    with torch.no_grad():
        for name, sub in module.named_modules():
            is_norm = "norm" in type(sub).__name__.lower() or name.rsplit(".", 1)[-1].startswith(("norm", "ln_"))
            tensors = [*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)]
            for pname, tensor in tensors:
                if tensor is None or not tensor.is_floating_point():
                    continue
                if pname == "bias":
                    tensor.zero_()
                elif pname == "scale" or (is_norm and pname == "weight" and tensor.ndim == 1):
                    tensor.fill_(1.0)
                else:
                    value = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * weight_std
                    tensor.copy_(value.to(tensor.dtype))


def host_unet_config(unet_config: dict[str, Any]) -> dict[str, Any]:
    """``unet_config`` with what the running ComfyUI's detection adds for the family: 0.30.0's Flux takes
    ``txt_ids_dims`` ([] for Flux.1, as its detection sets)."""
    config = dict(unet_config)
    if config.get("image_model") == "flux":
        import comfy.ldm.flux.model

        if "txt_ids_dims" in getattr(comfy.ldm.flux.model.FluxParams, "__dataclass_fields__", {}):
            config.setdefault("txt_ids_dims", [])
    return config


def tiny_flow_model(
    family: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    manual_cast: torch.dtype | None = None,
    unet_overrides: dict[str, Any] | None = None,
) -> Any:
    """A random-weight ``family`` model (a key of ``TINY_MODELS``) in a ModelPatcher on ComfyUI's device.

    ``dtype``: the weights' dtype; ``manual_cast``: the dtype it computes in when the weights are narrower (fp8
    weights computed in fp32, as ComfyUI loads an fp8 file). The weights are the same for every dtype (filled in
    fp32, then stored). ``unet_overrides``: config entries to change (e.g. a real text encoder's widths). Build it
    under ``torch.inference_mode`` to get what a ComfyUI server's loader node makes.
    """
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    class_name, unet_config = TINY_MODELS[family]
    unet_config = host_unet_config({**unet_config, **(unet_overrides or {})})
    config = getattr(comfy.supported_models, class_name)(dict(unet_config, dtype=torch.float32))
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    fill_flow_module(base.diffusion_model, torch.Generator().manual_seed(seed))
    if dtype != torch.float32:
        state = base.diffusion_model.state_dict()
        config = getattr(comfy.supported_models, class_name)(dict(unet_config, dtype=dtype))
        config.set_inference_dtype(dtype, manual_cast)
        base = config.get_model({})
        base.diffusion_model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


WEIGHT_DTYPES = {"fp32": (torch.float32, None), "fp8_e4m3fn": (torch.float8_e4m3fn, torch.float32)}


class TinyFlowModel:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (list(TINY_MODELS),),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "weight_dtype": (list(WEIGHT_DTYPES),),
            }
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"
    CATEGORY = "_for_testing"

    def build(self, family: str, seed: int, weight_dtype: str):
        dtype, manual_cast = WEIGHT_DTYPES[weight_dtype]
        return (tiny_flow_model(family, seed, dtype, manual_cast),)


NODE_CLASS_MAPPINGS = {"TCDTestTinyFlowModel": TinyFlowModel}
NODE_DISPLAY_NAME_MAPPINGS = {"TCDTestTinyFlowModel": "Tiny flow model (TCD tests)"}
