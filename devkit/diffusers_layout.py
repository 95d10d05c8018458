"""The same SD1.5-family checkpoint in diffusers' folder layout, for diffusers' own training scripts.

    folder = write_diffusers_layout(single_file, out_dir, unet_config)   # unet/ vae/ text_encoder/ ...

Benchmarks that run diffusers' LCM-LoRA script beside the pack's trainer need one model in both
layouts, with no download and no script outside the diffusers wheel. The UNet keys are renamed by
ComfyUI's own map (``comfy.utils.unet_to_diffusers``, which takes any UNet config, the one-level tiny
test UNet included), the VAE and CLIP-L text encoder by diffusers' single-file converters
(``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``); every module is loaded strictly,
so a key that does not map fails here. The tokenizer is ComfyUI's copy of CLIP-L's
(``comfy/sd1_tokenizer``, with SD1.5's 77-token limit), the scheduler SD's (DDPM, scaled_linear
0.00085-0.012, 1000 steps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
CLIP_L_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SD_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
}


def diffusers_unet_config(unet_config: dict) -> dict:
    """diffusers' UNet2DConditionModel config for a ComfyUI SD1.x UNet config (levels, blocks, attention)."""
    mult = unet_config["channel_mult"]
    levels = len(mult)
    blocks = unet_config["num_res_blocks"]
    if len(set(blocks)) != 1:
        raise ValueError(f"num_res_blocks {blocks}: diffusers' UNet takes one count for every level")
    attention = [unet_config["transformer_depth"][2 * i] > 0 for i in range(levels)]
    channels = [unet_config["model_channels"] * m for m in mult]
    return {
        "sample_size": 64,
        "in_channels": unet_config["in_channels"],
        "out_channels": unet_config["out_channels"],
        "layers_per_block": blocks[0],
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": unet_config["context_dim"],
        "attention_head_dim": unet_config["num_heads"],
        "norm_num_groups": 32,
        "use_linear_projection": unet_config["use_linear_in_transformer"],
    }


def _load_strict(module, state: dict, name: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{name}: keys that do not map: missing {missing[:5]}, unexpected {unexpected[:5]}")


def write_diffusers_layout(checkpoint: Path | str, out_dir: Path | str, unet_config: dict) -> Path:
    """Write ``checkpoint`` (ComfyUI single-file SD1.x) to ``out_dir`` in diffusers' layout; reused when present."""
    import comfy.utils
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_ldm_vae_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    out = Path(out_dir)
    if (out / "model_index.json").is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    sd = comfy.utils.load_torch_file(str(checkpoint))

    unet = UNet2DConditionModel(**diffusers_unet_config(unet_config))
    prefix = "model.diffusion_model."
    renames = comfy.utils.unet_to_diffusers(unet_config)
    _load_strict(unet, {d: sd[prefix + ldm] for d, ldm in renames.items() if prefix + ldm in sd}, "unet")
    vae = AutoencoderKL(**SD_VAE_CONFIG)
    _load_strict(vae, convert_ldm_vae_checkpoint(sd, dict(SD_VAE_CONFIG)), "vae")
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L_CONFIG))
    clip = convert_ldm_clip_checkpoint(sd)
    clip.pop("text_model.embeddings.position_ids", None)
    if not any(k.startswith("text_model.") for k in text.state_dict()):  # transformers 5 names drop the prefix
        clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    _load_strict(text, clip, "text_encoder")

    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        module.to(torch.float16).save_pretrained(partial / name)
    DDPMScheduler(**SD_SCHEDULER).save_pretrained(partial / "scheduler")
    tokenizer = Path(comfy.utils.__file__).parent / "sd1_tokenizer"
    shutil.copytree(tokenizer, partial / "tokenizer")
    config_path = partial / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 77  # as SD1.5's tokenizer folder (ComfyUI's copy says 8192: it chunks prompts)
    config_path.write_text(json.dumps(config, indent=2))
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"]}  # fmt: skip
    (partial / "model_index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    partial.replace(out)
    return out
