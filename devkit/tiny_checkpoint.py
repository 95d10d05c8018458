"""A tiny random-weight SD1.5-family single-file checkpoint, for trainer tests that must run many steps.

    path = build_tiny_sd15_checkpoint(out_dir)   # models/checkpoints layout: one .safetensors

ComfyUI detects it as SD1.5 (``comfy.supported_models.SD15``: 320 model channels, 768-wide context), but
its UNet has one resolution level, one res block and one transformer block (~6M parameters) instead of
four levels (860M), so a distillation step on 8x8 latents takes milliseconds on a CPU. The text encoder
and VAE are the real-size ones of the SD1.5 test checkpoint (devkit.model_files; ComfyUI's CLIP-L and SD
VAE have fixed shapes), copied over unchanged.
"""

from __future__ import annotations

from pathlib import Path

from devkit.build_test_models import SD15_UNET_CONFIG, fill_module, model_config_for

TINY_SD15_UNET_CONFIG = dict(
    SD15_UNET_CONFIG,
    num_res_blocks=[1],
    channel_mult=[1],
    transformer_depth=[1],
    transformer_depth_output=[1, 1],
    transformer_depth_middle=1,
)
TINY_SEED = 1502
NAME = "tcd-tiny-sd15.safetensors"


def save_model_file(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` (a .safetensors file) through a temporary file, so that an interrupted build
    never leaves a file the next run takes as finished; returns ``path``."""
    import comfy.utils

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    comfy.utils.save_torch_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def build_tiny_sd15_checkpoint(out_dir: Path | str, source_checkpoint: Path | str | None = None) -> Path:
    """Write ``out_dir/checkpoints/tcd-tiny-sd15.safetensors`` (once; reused when present)."""
    import torch
    from safetensors import safe_open

    from devkit.model_files import ensure_test_models

    path = Path(out_dir) / "checkpoints" / NAME
    if path.is_file():
        return path
    source = Path(source_checkpoint) if source_checkpoint else ensure_test_models()["checkpoint_sd15"]
    gen = torch.Generator().manual_seed(TINY_SEED)
    model_config = model_config_for(TINY_SD15_UNET_CONFIG, torch.float16)
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_module(model.diffusion_model, gen)
    tensors = {f"model.diffusion_model.{k}": v for k, v in model.diffusion_model.state_dict().items()}
    with safe_open(str(source), framework="pt") as f:
        for key in f.keys():
            if key.startswith(("cond_stage_model.", "first_stage_model.")):
                tensors[key] = f.get_tensor(key)
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    return save_model_file(tensors, path, metadata={"modelspec.architecture": "stable-diffusion-v1"})


UNET_NAME = "tcd-tiny-sd15-unet.safetensors"


def build_tiny_sd15_unet(out_dir: Path | str, source_checkpoint: Path | str | None = None) -> Path:
    """``out_dir/diffusion_models/tcd-tiny-sd15-unet.safetensors``: the tiny checkpoint's UNet alone, as
    diffusion-model files ship, for ComfyUI's UNETLoader (whose ``weight_dtype`` fp8_e4m3fn loads it with fp8
    weights, as users load fp8 Flux / SDXL files)."""
    import comfy.utils

    path = Path(out_dir) / "diffusion_models" / UNET_NAME
    if path.is_file():
        return path
    prefix = "model.diffusion_model."
    tensors = comfy.utils.load_torch_file(str(build_tiny_sd15_checkpoint(out_dir, source_checkpoint)))
    unet = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return save_model_file(unet, path)


SD3_FILES_VERSION = "1"  # bump when what build_tiny_sd3_files writes changes


def build_tiny_sd3_files(
    out_dir: Path | str, diffusion_model: dict, source_checkpoint: Path | str | None = None
) -> dict[str, Path]:
    """A tiny SD3.5-shaped model as users have it, in ``out_dir/sd3-v<version>/`` (written once, reused): the
    diffusion-model file (``diffusion_model``: the network's state dict, ComfyUI's MMDiT names, as in
    models/diffusion_models), CLIP-L (models/text_encoders: the SD1.5 test checkpoint's real-size CLIP-L) and a
    16-channel VAE (models/vae: the test checkpoint's SD VAE with SD3's 16-channel latent layers, seeded, no quant
    convs), and the single-file checkpoint holding all three under SD3's prefixes (models/checkpoints).

    ComfyUI detects an MMDiT of width 64 x depth from its shapes, so its loaders read these files as SD3; with CLIP-L
    alone its SD3 text encoder pads the features to T5's 4096 and the pooled output to 2048 with zeros."""
    import torch
    from safetensors import safe_open

    from devkit.model_files import ensure_test_models

    folder = Path(out_dir) / f"sd3-v{SD3_FILES_VERSION}"
    paths = {
        "diffusion_model": folder / "tcd-tiny-sd3-diffusion-model.safetensors",
        "clip_l": folder / "tcd-test-clip-l.safetensors",
        "vae": folder / "tcd-test-sd3-vae.safetensors",
        "checkpoint": folder / "tcd-tiny-sd35.safetensors",
    }
    if all(path.is_file() for path in paths.values()):
        return paths
    source = Path(source_checkpoint) if source_checkpoint else ensure_test_models()["checkpoint_sd15"]
    clip, vae = {}, {}
    with safe_open(str(source), framework="pt") as f:
        for key in f.keys():
            if key.startswith("cond_stage_model.transformer."):
                clip[key.removeprefix("cond_stage_model.transformer.")] = f.get_tensor(key)
            elif key.startswith("first_stage_model.") and "quant_conv" not in key:
                vae[key.removeprefix("first_stage_model.")] = f.get_tensor(key)
    gen = torch.Generator().manual_seed(TINY_SEED + 3)
    for key, shape in {"encoder.conv_out.weight": (32, 512, 3, 3), "encoder.conv_out.bias": (32,),
                       "decoder.conv_in.weight": (512, 16, 3, 3)}.items():  # fmt: skip
        vae[key] = torch.randn(shape, generator=gen) * 0.02
    half = {
        name: {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        for name, tensors in (("diffusion_model", diffusion_model), ("clip_l", clip), ("vae", vae))
    }
    checkpoint = {f"model.diffusion_model.{k}": v for k, v in half["diffusion_model"].items()}
    checkpoint |= {f"text_encoders.clip_l.transformer.{k}": v for k, v in half["clip_l"].items()}
    checkpoint |= {f"first_stage_model.{k}": v for k, v in half["vae"].items()}
    for name, tensors in (*half.items(), ("checkpoint", checkpoint)):
        save_model_file(tensors, paths[name])
    return paths
