"""The main job: a TCD text-to-image workflow executed headless through a real ComfyUI server.

Uses the user's checkpoint and TCD LoRA when $COMFYUI_PATH/models holds them (any checkpoint,
and a LoRA whose name contains "tcd"); otherwise random-weight SD1.5 models built at run time
with ComfyUI's own classes (the picture is then noise-like, but every stage runs for real).
Prints where the image went and how long each stage took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))

from comfy_host import ComfyServer, comfyui_path  # noqa: E402
from model_files import default_models_dir, ensure_test_models  # noqa: E402

TIMINGS: list[tuple[str, float]] = []


@contextmanager
def stage(name: str):
    start = time.perf_counter()
    yield
    TIMINGS.append((name, time.perf_counter() - start))
    print(f"[run] {name}: {TIMINGS[-1][1]:.1f} s", flush=True)


def real_models(models_root: Path) -> tuple[str, str] | None:
    """(checkpoint, TCD LoRA) names from a real ComfyUI's models folder, or None."""
    checkpoints = sorted(p for p in (models_root / "checkpoints").glob("*.safetensors") if "tcd-test" not in p.name)
    loras = sorted(p for p in (models_root / "loras").glob("*.safetensors") if "tcd" in p.name.lower())
    loras = [p for p in loras if "tcd-test" not in p.name]
    if checkpoints and loras:
        return checkpoints[0].name, loras[0].name
    return None


def tcd_txt2img(ckpt: str, lora: str, *, prompt: str, seed: int, steps: int, gamma: float, size: int) -> dict:
    """API-format graph: checkpoint -> TCD LoRA Loader -> TCD Sampler + TCD Scheduler (CFG 1) -> image."""
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "lora": {
            "class_type": "TrajectoryConsistencyLoraLoader",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "tcd_lora": lora,
                "tcd_lora_strength": 1.0,
                **{f"style_lora_{i}": "None" for i in (1, 2, 3)},
                **{f"style_lora_{i}_strength": 1.0 for i in (1, 2, 3)},
            },
        },
        "prompt": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["lora", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["lora", 0], "conditioning": ["prompt", 0]}},
        "sampler": {
            "class_type": "TrajectoryConsistencySampler",
            "inputs": {"gamma": gamma, "gamma_schedule": "constant", "gamma_end": gamma, "gamma_list": "", "order": 1},
        },
        "sigmas": {
            "class_type": "TrajectoryConsistencyScheduler",
            "inputs": {"model": ["lora", 0], "steps": steps, "original_inference_steps": 50, "strength": 1.0},
        },
        "sample": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["noise", 0],
                "guider": ["guider", 0],
                "sampler": ["sampler", 0],
                "sigmas": ["sigmas", 0],
                "latent_image": ["latent", 0],
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "tcd"}},
    }


def image_stats(path: Path) -> str:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        stats = ImageStat.Stat(image.convert("L"))
        return f"{image.width}x{image.height}, luminance mean {stats.mean[0]:.1f}, std {stats.stddev[0]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="a papercut fox in a forest, best quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--gamma", type=float, default=0.3)
    parser.add_argument("--size", type=int, default=None, help="pixels (default 1024 real SDXL/512 real, 64 random)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out", help="folder for the image")
    args = parser.parse_args()

    comfy = comfyui_path()
    found = real_models(comfy / "models")
    with stage("models"):
        if found:
            models_dir, (ckpt, lora) = None, found
            print(f"[run] real models from {comfy / 'models'}: {ckpt} + {lora}")
        else:
            paths = ensure_test_models(default_models_dir())
            models_dir = default_models_dir()
            ckpt, lora = paths["checkpoint_sd15"].name, paths["lora_sd15"].name
            print(f"[run] no real checkpoint + TCD LoRA in {comfy / 'models'}: random-weight SD1.5 test models")
    size = args.size or (512 if found else 64)
    graph = tcd_txt2img(ckpt, lora, prompt=args.prompt, seed=args.seed, steps=args.steps, gamma=args.gamma, size=size)

    with stage("server start"):
        server = ComfyServer(models_dir=models_dir).start()
    try:
        with stage(f"workflow ({args.steps} TCD steps, {size}x{size})"):
            entry = server.run(graph, timeout=3600)
        images = server.output_images(entry, "save")
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / images[0].name
        shutil.copy(images[0], target)
    finally:
        with stage("server stop"):
            server.stop()
            server.cleanup()
    print(f"[run] image: {target} ({image_stats(target)})")
    print("[run] stages: " + json.dumps({name: round(seconds, 2) for name, seconds in TIMINGS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
