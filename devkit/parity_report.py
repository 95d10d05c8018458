"""Print tcd_core's worst deviation from diffusers' TCDScheduler over the parity test grid.

Run from the repo root with dev/test's python: `.dev/venv/bin/python -m devkit.parity_report`.
"""

from collections import defaultdict

from comfyui_tcd_sampling import tcd_core

from devkit.diffusers_reference import SAMPLING_GRID, reference_run, relative_error, tcd_core_run

worst: dict[tuple[str, float], float] = defaultdict(float)
for steps, gamma, prediction, strength, original_steps in SAMPLING_GRID:
    timesteps = tcd_core.tcd_timesteps(steps, original_steps, strength)
    seed = steps * 1000 + int(gamma * 10)
    reference = reference_run(timesteps, prediction, gamma, original_steps, strength, seed)
    ours = tcd_core_run(timesteps, prediction, gamma, seed)
    pairs = [*zip(ours.latents, reference.latents, strict=True), (ours.final, reference.final)]
    error = max(relative_error(a, b) for a, b in pairs)
    worst[(prediction, gamma)] = max(worst[(prediction, gamma)], error)

print(f"{len(SAMPLING_GRID)} runs (steps x gamma x prediction x strength x original_inference_steps)")
print("prediction     gamma  max relative error (every latent + final)")
for (prediction, gamma), error in sorted(worst.items()):
    print(f"{prediction:<14} {gamma:<6} {error:.2e}")
print(f"overall max: {max(worst.values()):.2e}")
