"""Random-weight test models (see devkit/build_test_models.py), built once and cached.

    paths = ensure_test_models()            # into $TCD_DEV_DIR/models: .dev/models (or $TCD_TEST_MODELS_DIR)
    paths["checkpoint_sd15"].name           # "tcd-test-sd15.safetensors", as ComfyUI lists it

Keys: checkpoint_sd15, lora_sd15, lora_style_sd15, lora_sdxl, lora_sdxl_kohya, not_a_lora, corrupt_lora,
controlnet_sd15. The folder holds checkpoints/, loras/ and controlnet/, the layout that
ComfyServer(models_dir=...) maps into ComfyUI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from devkit import build_test_models as builder
from devkit.host import REPO_ROOT, comfyui_path, dev_dir


def default_models_dir() -> Path:
    """$TCD_TEST_MODELS_DIR, else models/ in the provisioned environment (shared by clones: .ci/run)."""
    return Path(os.environ.get("TCD_TEST_MODELS_DIR") or dev_dir() / "models")


def sd15_unet_config() -> dict:
    """ComfyUI's SD1.5 UNet config, as the test checkpoint is built with it."""
    return dict(builder.SD15_UNET_CONFIG)


def ensure_test_models(out_dir: Path | str | None = None, timeout: float = 900.0) -> dict[str, Path]:
    """Builds whatever test model is missing or outdated in out_dir; returns {key: file path}."""
    out_dir = Path(out_dir) if out_dir is not None else default_models_dir()
    out_dir = out_dir.resolve()
    if builder.stale_artifacts(out_dir):
        env = dict(os.environ, COMFYUI_PATH=str(comfyui_path()))
        result = subprocess.run(
            [sys.executable, "-m", "devkit.build_test_models", str(out_dir)],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            output = f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
            raise RuntimeError(f"building test models failed (exit {result.returncode}):\n{output}")
        print(result.stdout, file=sys.stderr)  # the builder's timings, shown by pytest -s or on failure
        stale = builder.stale_artifacts(out_dir)
        if stale:
            raise RuntimeError(f"the model builder left these test models missing: {stale}\n{result.stdout}")
    return builder.artifact_paths(out_dir)


# ComfyUI's SD1.5 UNet layout, shrunk: one level, 32 channels, one transformer block (about 250k weights).
TINY_SD15_UNET_CONFIG = {
    **builder.SD15_UNET_CONFIG,
    "model_channels": 32,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "channel_mult": [1],
    "context_dim": 32,
    "num_heads": 2,
    "transformer_depth_output": [1, 1],
}


def tiny_sd15_patcher(generator: Any, weight_std: float = 0.05) -> Any:
    """ComfyUI's SD1.5 model class (its scaled-linear eps schedule) around a tiny UNet of TINY_SD15_UNET_CONFIG,
    weights N(0, weight_std) from ``generator`` (biases and norms 0), in a real ModelPatcher on the CPU.

    Needs ComfyUI imported (devkit.inprocess.load_comfy)."""
    import torch
    from comfy import model_patcher, supported_models

    cpu = torch.device("cpu")
    model = supported_models.SD15(dict(TINY_SD15_UNET_CONFIG, dtype=torch.float32)).get_model({}, device=cpu)
    with torch.no_grad():
        for param in model.diffusion_model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, weight_std, generator=generator)
            else:
                param.zero_()
    return model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
