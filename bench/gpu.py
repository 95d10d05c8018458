"""GPU benchmark: TCD against ComfyUI's `lcm` and `euler_ancestral` on an SDXL-architecture UNet.

Run on the lent GPU machine through the device tool (see BENCHMARKS.md for the exact call):

    COMFYUI_PATH=<carried ComfyUI source> python -m bench.gpu      (from the repo root)

Random weights, built in-process with ComfyUI's classes, fp16, 1024x1024 (latent 128x128),
batch 1, CFG 1, the same TCD sigmas for every sampler; medians of interleaved repeats,
host-device synchronisations counted with torch.cuda.set_sync_debug_mode, peak memory.
`--dry-run` runs the same code tiny on the CPU to check the script before spending GPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import (
    count_syncs,
    import_comfy_and_pack,
    interleaved_medians,
    median,
    paired_ratio,
    spread,
)
from devkit import build_test_models


def build_patcher(unet_config: dict, device: torch.device, dtype: torch.dtype) -> Any:
    """A ModelPatcher around a random-weight UNet (seeded; ComfyUI's ops leave weights uninitialised)."""
    import comfy.model_detection
    import comfy.model_patcher

    model_config = comfy.model_detection.model_config_from_unet_config(dict(unet_config, dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, device=device)
    model.diffusion_model.to(device=device, dtype=dtype)
    build_test_models.fill_module(model.diffusion_model, torch.Generator(device=device).manual_seed(0))
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def conditioning(sdxl: bool, device: torch.device) -> list:
    g = torch.Generator().manual_seed(1)
    if sdxl:
        return [[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]]
    return [[torch.randn(1, 77, 768, generator=g), {}]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--dry-run", action="store_true", help="tiny SD1.5-size run on the CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    cpu = args.dry_run or not torch.cuda.is_available()
    pack = import_comfy_and_pack(cpu=cpu)
    import comfy.sample
    import comfy.samplers

    adapter = pack.tcd_comfy.sampling
    gamma = pack.tcd_core.DEFAULT_GAMMA
    device = torch.device("cpu" if cpu else "cuda")
    unet_config = build_test_models.SD15_UNET_CONFIG if args.dry_run else build_test_models.SDXL_UNET_CONFIG
    dtype = torch.float32 if cpu else torch.float16
    size = 64 if args.dry_run else 1024
    repeats = 1 if args.dry_run else args.repeats

    start = time.perf_counter()
    patcher = build_patcher(unet_config, device, dtype)
    build_s = time.perf_counter() - start
    name = torch.cuda.get_device_name() if not cpu else "CPU (dry run)"
    print(f"{name}, torch {torch.__version__}, model built in {build_s:.1f} s, {size}x{size}, {dtype}, batch 1")

    positive = conditioning(not args.dry_run, device)
    latent = torch.zeros(1, 4, size // 8, size // 8)
    model_sampling = patcher.get_model_object("model_sampling")
    samplers = {
        "lcm": comfy.samplers.sampler_object("lcm"),
        "euler_ancestral": comfy.samplers.sampler_object("euler_ancestral"),
        "tcd order 1": comfy.samplers.KSAMPLER(adapter.ksampler_tcd_sampler, {"gamma": gamma, "order": 1}),
        "tcd order 2": comfy.samplers.KSAMPLER(adapter.ksampler_tcd_sampler, {"gamma": gamma, "order": 2}),
    }
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "size": size, "runs": {}}
    for steps in (4, 8):
        sigmas = adapter.tcd_sigmas(model_sampling, steps)
        noise = comfy.sample.prepare_noise(latent, 0)

        def run(sampler: Any, sigmas: torch.Tensor = sigmas, noise: torch.Tensor = noise) -> Any:
            return lambda: comfy.sample.sample_custom(
                patcher, noise, 1.0, sampler, sigmas, positive, [], latent, disable_pbar=True, seed=0
            )

        runs = {label: run(sampler) for label, sampler in samplers.items()}
        times = interleaved_medians(runs, repeats, device, warmup=1 if args.dry_run else 3)
        lcm = median(times["lcm"])
        print(f"\n{steps} steps (median of {repeats}, interleaved; spread = half IQR / median)")
        for label in runs:
            t = median(times[label])
            print(f"  {label:<16} {t * 1e3:8.1f} ms  spread {spread(times[label]) if repeats > 3 else 0:5.1%}  "
                  f"{t / lcm:6.3f}x lcm  {t / median(times['euler_ancestral']):6.3f}x euler_ancestral")  # fmt: skip
            ratio, ratio_spread = paired_ratio(times[label], times["lcm"])
            print(f"  {'':<16} paired per-round ratio to lcm: {ratio:.3f} +- {ratio_spread:.3f}")
            results["runs"][f"{label}, {steps} steps"] = {
                "median_s": t,
                "all_s": times[label],
                "paired_ratio_to_lcm": ratio,
                "paired_ratio_half_iqr": ratio_spread,
            }
        if not cpu:
            for label in ("lcm", "tcd order 1"):
                syncs = count_syncs(runs[label])
                torch.cuda.reset_peak_memory_stats()
                runs[label]()
                peak = torch.cuda.max_memory_allocated() / 2**30
                print(f"  {label:<16} host-device syncs in one run: {syncs}, peak GPU memory {peak:.2f} GiB")
                results["runs"][f"{label}, {steps} steps"].update(syncs=syncs, peak_gib=peak)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
