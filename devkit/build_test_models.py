"""Builds random-weight but correctly keyed test models with ComfyUI's own classes.

    COMFYUI_PATH=/path/to/ComfyUI $TCD_PYTHON -m devkit.build_test_models OUT_DIR [--force]

Nothing here is downloaded: every model is built from ComfyUI's model classes and filled
from seeded generators, so the files are the same on every machine. Files land in
OUT_DIR/checkpoints, OUT_DIR/loras and OUT_DIR/controlnet. A manifest, OUT_DIR/MANIFEST_NAME,
records the version and size of each file built; a file whose entry matches is not rebuilt.
Bump an entry's version in ARTIFACTS when the way it is built changes.

This module imports neither torch nor ComfyUI at import time: tests load it to read
ARTIFACTS and `stale_artifacts` without paying for those imports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from devkit.comfy_import import import_comfyui

MANIFEST_NAME = "tcd-test-models.json"

# key -> (path relative to OUT_DIR, version). The keys are what `ensure_test_models` returns.
ARTIFACTS: dict[str, tuple[str, int]] = {
    "checkpoint_sd15": ("checkpoints/tcd-test-sd15.safetensors", 1),
    "lora_sd15": ("loras/tcd-test-lora-sd15.safetensors", 1),
    "lora_style_sd15": ("loras/tcd-test-style-lora-sd15.safetensors", 1),
    "lora_sdxl": ("loras/tcd-test-lora-sdxl.safetensors", 1),
    "lora_sdxl_kohya": ("loras/tcd-test-lora-sdxl-kohya.safetensors", 1),
    "not_a_lora": ("loras/not-a-lora.safetensors", 1),
    "corrupt_lora": ("loras/corrupt.safetensors", 1),
    "controlnet_sd15": ("controlnet/tcd-test-controlnet-sd15.safetensors", 1),
}

# Seeds, one per artifact, so that rebuilding one file never changes another.
SEEDS = {
    "checkpoint_sd15": 1501,
    "lora_sd15": 2501,
    "lora_style_sd15": 2502,
    "lora_sdxl": 2503,
    "lora_sdxl_kohya": 2505,
    "not_a_lora": 2504,
    "controlnet_sd15": 3501,
}

# ComfyUI's own SD1.5 and SDXL UNet configs (comfy/model_detection.py, unet_config_from_diffusers_unet).
SD15_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

SDXL_UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# The SD1.x VAE (comfy/sd.py, "default SD1.x/SD2.x VAE parameters").
SD_VAE_DDCONFIG = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}

WEIGHT_STD = 0.02  # every weight except norms: N(0, WEIGHT_STD); biases 0; norm weights 1
LORA_RANK = 8
LORA_FACTOR_STD = 0.1  # lora_up and lora_down entries; with alpha == rank, delta std ~ 0.028
# Linear layers of every transformer block that the SD1.5 LoRAs patch (diffusers names).
LORA_TARGET_SUFFIXES = (
    ".attn1.to_q.weight",
    ".attn1.to_k.weight",
    ".attn1.to_v.weight",
    ".attn1.to_out.0.weight",
    ".attn2.to_q.weight",
    ".attn2.to_k.weight",
    ".attn2.to_v.weight",
    ".attn2.to_out.0.weight",
    ".ff.net.0.proj.weight",
    ".ff.net.2.weight",
)


# --- cache bookkeeping (no torch needed) ------------------------------------------------------


def _read_manifest(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}


def stale_artifacts(out_dir: Path) -> list[str]:
    """Keys of ARTIFACTS whose file is missing or does not match its manifest entry."""
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    stale = []
    for key, (rel, version) in ARTIFACTS.items():
        entry = manifest.get(rel)
        path = out_dir / rel
        if not entry or entry.get("version") != version or not path.is_file() or path.stat().st_size != entry["size"]:
            stale.append(key)
    return stale


def artifact_paths(out_dir: Path) -> dict[str, Path]:
    return {key: Path(out_dir) / rel for key, (rel, _version) in ARTIFACTS.items()}


def _record(out_dir: Path, key: str) -> None:
    rel, version = ARTIFACTS[key]
    manifest = _read_manifest(out_dir)
    manifest[rel] = {"version": version, "size": (out_dir / rel).stat().st_size}
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(out_dir / MANIFEST_NAME)


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialises concurrent builders (two pytest sessions) on the same OUT_DIR."""
    import fcntl

    with open(out_dir / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- ComfyUI set-up ------------------------------------------------------------------------------


def _import_comfy():
    import_comfyui(cpu=True)
    import comfy.model_detection  # noqa: F401
    import comfy.model_management  # noqa: F401
    import comfy.sd  # noqa: F401
    import comfy.utils  # noqa: F401


# --- weight filling ------------------------------------------------------------------------------


def fill_module(module, generator, weight_std: float = WEIGHT_STD) -> None:
    """ComfyUI's ops leave weights uninitialised: give every tensor a deterministic value."""
    import torch

    norm_types = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)
    with torch.no_grad():
        for _name, sub in module.named_modules():
            is_norm = isinstance(sub, norm_types)
            for pname, param in sub.named_parameters(recurse=False):
                if pname == "bias":
                    param.zero_()
                elif is_norm:
                    param.fill_(1.0)
                else:
                    param.normal_(0.0, weight_std, generator=generator)
            for bname, buf in sub.named_buffers(recurse=False):
                if buf is None or not buf.is_floating_point():
                    continue
                if bname == "running_var":
                    buf.fill_(1.0)
                elif bname == "running_mean":
                    buf.zero_()


def _save(tensors: dict, out_dir: Path, key: str, metadata: dict[str, str] | None = None) -> Path:
    import comfy.utils
    import torch

    rel, version = ARTIFACTS[key]
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    meta = {"tcd_test_model": key, "tcd_test_model_version": str(version)}
    meta.update(metadata or {})
    tmp = path.with_name(path.name + ".tmp")
    comfy.utils.save_torch_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(path)
    _record(out_dir, key)
    return path


# --- models --------------------------------------------------------------------------------------


def model_config_for(unet_config: dict, dtype):
    import comfy.model_detection

    config = dict(unet_config, dtype=dtype)
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    if model_config is None:
        raise RuntimeError(f"ComfyUI matched no model config for {config}")
    return model_config


def meta_model(unet_config: dict):
    """A ComfyUI model whose tensors live on the meta device: keys and shapes, no memory."""
    import torch

    model_config = model_config_for(unet_config, torch.float16)
    return model_config.get_model({}, device=torch.device("meta"))


def build_checkpoint_sd15(out_dir: Path) -> Path:
    import comfy.sd
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    gen = torch.Generator().manual_seed(SEEDS["checkpoint_sd15"])
    model_config = model_config_for(SD15_UNET_CONFIG, torch.float16)
    model = model_config.get_model({}, device=torch.device("cpu"))
    fill_module(model.diffusion_model, gen)

    clip = comfy.sd.CLIP(model_config.clip_target(), model_options={"dtype": torch.float16})
    fill_module(clip.cond_stage_model, gen)
    clip_sd = clip.get_sd()

    vae = AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    vae.to(torch.float16)
    fill_module(vae, gen)

    state_dict = model.state_dict_for_saving(clip_sd, vae.state_dict())
    return _save(state_dict, out_dir, "checkpoint_sd15", {"modelspec.architecture": "stable-diffusion-v1"})


def _sd15_lora_targets() -> list[tuple[str, tuple[int, ...]]]:
    """(kohya key prefix, target weight shape) for each SD1.5 transformer linear layer."""
    import comfy.lora
    import comfy.utils

    model = meta_model(SD15_UNET_CONFIG)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    targets = []
    for diffusers_key in sorted(comfy.utils.unet_to_diffusers(model.model_config.unet_config)):
        if not diffusers_key.endswith(LORA_TARGET_SUFFIXES):
            continue
        lora_key = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
        unet_key = key_map[lora_key]  # comfy.lora must resolve every key this file writes
        targets.append((lora_key, shapes[unet_key]))
    if not targets:
        raise RuntimeError("found no SD1.5 LoRA targets")
    return targets


def _lora_tensors(targets, generator, rank: int = LORA_RANK, factor_std: float = LORA_FACTOR_STD) -> dict:
    import torch

    tensors = {}
    for lora_key, shape in targets:
        out_features, in_features = shape[0], shape[1]
        down = torch.randn(rank, in_features, generator=generator) * factor_std
        up = torch.randn(out_features, rank, generator=generator) * factor_std
        tensors[f"{lora_key}.lora_down.weight"] = down
        tensors[f"{lora_key}.lora_up.weight"] = up
        tensors[f"{lora_key}.alpha"] = torch.tensor(float(rank))
    return tensors


def build_loras_sd15(out_dir: Path, keys: list[str]) -> list[Path]:
    import torch

    targets = _sd15_lora_targets()
    built = []
    for key in keys:
        gen = torch.Generator().manual_seed(SEEDS[key])
        meta = {"ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora"}
        meta.update({"ss_network_dim": str(LORA_RANK), "ss_network_alpha": str(LORA_RANK)})
        built.append(_save(_lora_tensors(targets, gen), out_dir, key, meta))
    return built


def build_lora_sdxl(out_dir: Path) -> Path:
    """A LoRA keyed for SDXL's UNet, restricted to layers that SD1.5 does not have.

    Real SDXL LoRAs in kohya's "lora_unet_input_blocks_..." naming partly resolve against an
    SD1.5 UNet in ComfyUI (input_blocks.4.1.transformer_blocks.0 exists in both, same shapes):
    only SDXL layers absent from SD1.5's key map are kept, so this file patches nothing there.
    Shapes come from a meta-device SDXL model: no SDXL weights are allocated.
    """
    import comfy.lora
    import torch

    sd15_keys = comfy.lora.model_lora_keys_unet(meta_model(SD15_UNET_CONFIG), {})
    sdxl = meta_model(SDXL_UNET_CONFIG)
    sdxl_keys = comfy.lora.model_lora_keys_unet(sdxl, {})
    shapes = {k: tuple(v.shape) for k, v in sdxl.state_dict().items()}
    targets = []
    for unet_key, shape in sorted(shapes.items()):
        if len(shape) != 2 or not unet_key.endswith(".weight"):
            continue  # linear layers only
        lora_key = "lora_unet_" + unet_key[len("diffusion_model.") : -len(".weight")].replace(".", "_")
        if sdxl_keys.get(lora_key) != unet_key or lora_key in sd15_keys:
            continue
        targets.append((lora_key, shape))
    gen = torch.Generator().manual_seed(SEEDS["lora_sdxl"])
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora"}
    return _save(_lora_tensors(targets, gen, rank=4), out_dir, "lora_sdxl", meta)


def build_lora_sdxl_kohya(out_dir: Path) -> Path:
    """A realistic SDXL LoRA in kohya's SGM naming: every transformer projection, lora_te1_ and lora_te2_.

    Most of its names resolve against SD1.5 too (lora_unet_input_blocks_4_1_transformer_blocks_0_*,
    lora_te1_* is CLIP-L), but about a quarter of those patches have SDXL shapes (2048-wide cross-
    attention, 1280-wide blocks where SD1.5 has 640): the TCD LoRA Loader must refuse it by shape.
    Keys and shapes come from a meta-device SDXL model and CLIP (devkit.sdxl_test_model).
    """
    from devkit.lora_formats import build_format, lora_targets
    from devkit.sdxl_test_model import sdxl_meta_model

    tensors = build_format("kohya-lora-ldm-names", lora_targets(*sdxl_meta_model()), seed=SEEDS["lora_sdxl_kohya"])
    meta = {"ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "networks.lora"}
    return _save(tensors, out_dir, "lora_sdxl_kohya", meta)


def build_not_a_lora(out_dir: Path) -> Path:
    import torch

    gen = torch.Generator().manual_seed(SEEDS["not_a_lora"])
    tensors = {
        "model.embed.weight": torch.randn(16, 8, generator=gen),
        "model.head.weight": torch.randn(4, 16, generator=gen),
        "model.head.bias": torch.zeros(4),
    }
    return _save(tensors, out_dir, "not_a_lora")


def build_corrupt_lora(out_dir: Path) -> Path:
    """A LoRA file cut short: its header parses, its tensor data is missing."""
    rel, _version = ARTIFACTS["corrupt_lora"]
    source = out_dir / ARTIFACTS["lora_sd15"][0]
    data = source.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    path = out_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: 8 + header_len + 1024])
    _record(out_dir, "corrupt_lora")
    return path


def build_controlnet_sd15(out_dir: Path) -> Path:
    """An SD1.5 ControlNet in the original "control_model." layout (as control_v11p_sd15_*).

    Its zero convolutions are filled like every other weight, so applying it changes the output.
    """
    import comfy.cldm.cldm
    import torch

    config = dict(SD15_UNET_CONFIG, dtype=torch.float16, device=torch.device("cpu"), hint_channels=3)
    config.pop("out_channels")
    control = comfy.cldm.cldm.ControlNet(**config)
    fill_module(control, torch.Generator().manual_seed(SEEDS["controlnet_sd15"]))
    tensors = {f"control_model.{k}": v for k, v in control.state_dict().items()}
    return _save(tensors, out_dir, "controlnet_sd15")


BUILDERS = {
    "checkpoint_sd15": lambda out: [build_checkpoint_sd15(out)],
    "lora_sdxl": lambda out: [build_lora_sdxl(out)],
    "lora_sdxl_kohya": lambda out: [build_lora_sdxl_kohya(out)],
    "not_a_lora": lambda out: [build_not_a_lora(out)],
    "controlnet_sd15": lambda out: [build_controlnet_sd15(out)],
}


def build(out_dir: Path, force: bool = False) -> dict[str, Path]:
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_dir):
        stale = list(ARTIFACTS) if force else stale_artifacts(out_dir)
        if not stale:
            print(f"test models up to date in {out_dir}")
            return artifact_paths(out_dir)
        started = time.perf_counter()
        if set(stale) - {"corrupt_lora"}:
            _import_comfy()
            print(f"imported ComfyUI in {time.perf_counter() - started:.1f} s", flush=True)
        loras = [k for k in ("lora_sd15", "lora_style_sd15") if k in stale]
        steps: list[tuple[str, object]] = []
        if loras:
            steps.append((", ".join(loras), lambda: build_loras_sd15(out_dir, loras)))
        for key, builder in BUILDERS.items():
            if key in stale:
                steps.append((key, lambda builder=builder: builder(out_dir)))
        if "corrupt_lora" in stale or "lora_sd15" in stale:  # cut from the SD1.5 LoRA
            steps.append(("corrupt_lora", lambda: [build_corrupt_lora(out_dir)]))
        for label, step in steps:
            t0 = time.perf_counter()
            paths = step()
            sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in paths)
            print(f"built {label} in {time.perf_counter() - t0:.1f} s ({sizes})", flush=True)
        print(f"built test models in {time.perf_counter() - started:.1f} s into {out_dir}")
        return artifact_paths(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--force", action="store_true", help="rebuild every file")
    options = parser.parse_args(argv)
    build(options.out_dir, force=options.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
