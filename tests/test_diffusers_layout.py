"""devkit.diffusers_layout: the trainer benchmark's one model in both layouts is really the same model.

diffusers' LCM-LoRA script reads a diffusers folder, the pack's trainer a single file; the benchmark compares
their speed and memory on the same weights, so the converted UNet, text encoder and VAE must compute what
ComfyUI computes from the single file (diffusers' classes against ComfyUI's, same inputs, fp32).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from devkit.comfy_import import import_comfyui
from devkit.host import dev_dir


@pytest.fixture(scope="module")
def both_layouts(test_models: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import_comfyui(cpu=True)
    from devkit.diffusers_layout import write_diffusers_layout
    from devkit.tiny_checkpoint import TINY_SD15_UNET_CONFIG, build_tiny_sd15_checkpoint

    single = build_tiny_sd15_checkpoint(dev_dir() / "trainer-models", test_models["checkpoint_sd15"])
    return single, write_diffusers_layout(single, tmp_path_factory.mktemp("diffusers") / "tiny", TINY_SD15_UNET_CONFIG)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def test_the_diffusers_folder_computes_what_comfyui_computes_from_the_single_file(both_layouts) -> None:
    import comfy.sd
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    single, folder = both_layouts
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(single))[:3]
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 700])
    context = torch.randn(2, 77, 768, generator=gen)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    text = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    autoencoder = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    pixels = torch.rand(1, 64, 64, 3, generator=gen)
    with torch.no_grad():
        eps_comfy = model.model.diffusion_model.float()(x, t, context=context)
        eps_diffusers = unet(x, t, encoder_hidden_states=context).sample
        ids = tokenizer(["a red square"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden_diffusers = text(ids)[0]
        hidden_comfy = clip.encode_from_tokens(clip.tokenize("a red square"))
        latent_comfy = vae.encode(pixels)
        latent_diffusers = autoencoder.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean
    assert tokenizer.model_max_length == 77
    # fp16 weights in both; the rest is fp32 summation order (measured 6e-7 .. 8e-7)
    assert _rel(eps_comfy, eps_diffusers) < 1e-5
    assert _rel(hidden_comfy, hidden_diffusers) < 1e-5
    assert _rel(latent_comfy, latent_diffusers) < 1e-5
