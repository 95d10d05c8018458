"""CPU benchmark: TCD against ComfyUI's own `lcm` and `euler_ancestral`, side by side in one run.

    dev/bench            (or, from the repo root: .dev/venv/bin/python -m bench.cpu with COMFYUI_PATH set)

1. Sampler overhead per step with the model call excluded (a stand-in model that costs nothing).
2. End-to-end KSampler through the real host on the random-weight SD1.5 test checkpoint.
3. Model calls per run and peak live tensor memory against `lcm`.
Each line prints the measured ratio next to its target.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from bench.harness import (
    PeakLiveTensorBytes,
    StandInModel,
    discrete_model_sampling,
    import_comfy_and_pack,
    interleaved_medians,
    median,
    paired_ratio,
    spread,
)

SHAPES = {"SD1.5 1x4x64x64": (1, 4, 64, 64), "SDXL 1x4x128x128": (1, 4, 128, 128), "batch-4 4x4x64x64": (4, 4, 64, 64)}
OVERHEAD_TARGET = 1.10
END_TO_END_TARGET = 1.02


def sampler_runs(pack: Any, shape: tuple[int, ...], steps: int) -> tuple[dict, dict]:
    """Closures running each sampler once over `steps` TCD sigmas, and their stand-in models."""
    from comfy.k_diffusion import sampling as k

    adapter = pack.tcd_comfy.sampling
    tcd_core = pack.tcd_core
    model_sampling = discrete_model_sampling()
    sigmas = adapter.tcd_sigmas(model_sampling, steps)
    x = torch.randn(shape) * sigmas[0]
    ramp = tcd_core.GammaSchedule.linear(0.5, 0.1)
    gamma = tcd_core.DEFAULT_GAMMA
    sample_tcd = adapter.ksampler_tcd_sampler
    variants = {
        "lcm": (k.sample_lcm, {}),
        "euler_ancestral": (k.sample_euler_ancestral, {}),
        f"tcd order 1, gamma {gamma}": (sample_tcd, {"gamma": gamma}),
        "tcd order 1, gamma ramp": (sample_tcd, {"gamma": ramp}),
        f"tcd order 2, gamma {gamma}": (sample_tcd, {"gamma": gamma, "order": 2}),
        "tcd order 2, gamma ramp": (sample_tcd, {"gamma": ramp, "order": 2}),
    }
    models = {name: StandInModel(model_sampling, torch.randn(shape)) for name in variants}

    def run(name: str) -> Any:
        function, options = variants[name]
        return lambda: function(models[name], x, sigmas, {"seed": 0}, disable=True, **options)

    return {name: run(name) for name in variants}, models


def overhead(pack: Any, steps: int, repeats: int) -> bool:
    print(f"\n1. Sampler overhead per step, model call excluded ({steps} steps, median of {repeats}, interleaved)")
    print(f"   target: tcd order 1 <= {OVERHEAD_TARGET:.2f}x lcm")
    ok = True
    for label, shape in SHAPES.items():
        runs, models = sampler_runs(pack, shape, steps)
        times = interleaved_medians(runs, repeats, torch.device("cpu"))
        lcm, euler_a = median(times["lcm"]), median(times["euler_ancestral"])
        print(f"   {label}: lcm {lcm / steps * 1e6:.0f} us/step (spread {spread(times['lcm']):.1%}), "
              f"euler_ancestral {euler_a / steps * 1e6:.0f} us/step")  # fmt: skip
        for name in runs:
            if not name.startswith("tcd"):
                continue
            t = median(times[name])
            ratio, ratio_spread = paired_ratio(times[name], times["lcm"])
            verdict = ""
            if "order 1" in name:
                passed = ratio <= OVERHEAD_TARGET
                ok &= passed
                verdict = "  meets target" if passed else "  MISSES target"
            print(f"     {name:<24} {t / steps * 1e6:6.0f} us/step  {ratio:5.2f}x lcm (+-{ratio_spread:.2f}, paired)  "
                  f"{t / euler_a:5.2f}x euler_ancestral{verdict}")  # fmt: skip
    return ok


def calls_and_memory(pack: Any, steps: int) -> bool:
    print(f"\n3. Model calls and peak live tensor memory per run ({steps} steps, SD1.5 latent)")
    print("   target: order 1 calls == steps; peak <= lcm's + one latent")
    shape = SHAPES["SD1.5 1x4x64x64"]
    latent_bytes = torch.zeros(shape).nbytes
    runs, models = sampler_runs(pack, shape, steps)
    peaks = {}
    for name, run in runs.items():
        models[name].calls = 0
        with PeakLiveTensorBytes() as tracker:
            run()
        peaks[name] = tracker.peak
    ok = True
    for name in runs:
        extra = (peaks[name] - peaks["lcm"]) / latent_bytes
        peak = peaks[name] / latent_bytes
        line = f"   {name:<24} calls {models[name].calls:3d}   peak {peak:4.1f} latents ({extra:+.1f} vs lcm)"
        if name.startswith("tcd order 1"):
            passed = models[name].calls == steps and extra <= 1.0
            ok &= passed
            line += "  meets target" if passed else "  MISSES target"
        print(line)
    return ok


def end_to_end(steps_list: list[int], size: int, repeats: int) -> bool:
    from devkit.inprocess import load_comfy, run_node
    from devkit.model_files import default_models_dir, ensure_test_models

    ensure_test_models(default_models_dir())
    comfy = load_comfy(default_models_dir())
    import comfy.utils as comfy_utils

    comfy_utils.PROGRESS_BAR_ENABLED = False  # KSampler's console bar would drown the figures
    model, clip, _ = run_node(comfy.node("CheckpointLoaderSimple"), ckpt_name="tcd-test-sd15.safetensors")
    cond = run_node(comfy.node("CLIPTextEncode"), text="a papercut fox", clip=clip)[0]
    latent = run_node(comfy.node("EmptyLatentImage"), width=size, height=size, batch_size=1)[0]
    ksampler = comfy.node("KSampler")
    print(f"\n2. End-to-end KSampler, random-weight SD1.5, {size}x{size}, cfg 1 (median of {repeats}, interleaved)")
    print(f"   target: tcd/tcd <= {END_TO_END_TARGET:.2f}x lcm/sgm_uniform")
    ok = True
    for steps in steps_list:

        def run(sampler: str, scheduler: str, steps: int = steps) -> Any:
            return lambda: run_node(
                ksampler, model=model, seed=0, steps=steps, cfg=1.0, sampler_name=sampler, scheduler=scheduler,
                positive=cond, negative=cond, latent_image=latent, denoise=1.0,
            )  # fmt: skip

        runs = {"lcm": run("lcm", "sgm_uniform"), "tcd": run("tcd", "tcd")}
        times = interleaved_medians(runs, repeats, torch.device("cpu"), warmup=1)
        lcm, tcd = median(times["lcm"]), median(times["tcd"])
        ratio, ratio_spread = paired_ratio(times["tcd"], times["lcm"])
        passed = ratio <= END_TO_END_TARGET
        ok &= passed
        verdict = "meets target" if passed else "MISSES target"
        print(f"   {steps} steps: lcm {lcm:.2f} s (spread {spread(times['lcm']):.1%}), tcd {tcd:.2f} s "
              f"(spread {spread(times['tcd']):.1%}): {ratio:.3f}x (+-{ratio_spread:.3f}, paired)")  # fmt: skip
        print(f"   {verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--e2e-size", type=int, default=64, help="pixels of the end-to-end KSampler runs")
    parser.add_argument("--e2e-repeats", type=int, default=15)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    pack = import_comfy_and_pack(cpu=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    ok = True
    if not args.skip_overhead:
        ok &= overhead(pack, args.steps, args.repeats)
    if not args.skip_e2e:
        ok &= end_to_end([4, 8], args.e2e_size, args.e2e_repeats)
    ok &= calls_and_memory(pack, args.steps)
    print("\nall targets met" if ok else "\nsome targets missed (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
