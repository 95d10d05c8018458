"""Where the TCD Scheduler's sigmas of a flow model sit on the distillation grid.

``python -m bench.product_flow.checks`` (output: docs/benchmarks/product_flow_checks.txt). The node trains a flow
model on entries of its own table, sigma[t] = shift((t + 1) / 1000) for SD3 (``model_sampling.sigmas``); the TCD
Scheduler maps the same timestep t as ``percent_to_sigma(1 - t / 999)`` = shift(t / 999). Both give 1 at t = 999;
below, the scheduler's sigma lies between table entries t - 1 and t, at most one table step below the entry the
student was trained at. Printed: both sigmas at the TCD timesteps of 1, 2, 4 and 8 steps, the gap in table steps,
and ComfyUI's ``simple`` schedule at 50 steps (the teacher's reference) against the 50 grid entries.
The benchmark's ``tcd gamma 0 (table sigmas)`` rows measure what the gap does to the students' samples.
"""

from __future__ import annotations

import torch

from bench.product.env import comfy as load_host
from bench.product.env import threads

from .specs import QUICK


def fractional_index(table: torch.Tensor, sigma: float) -> float:
    """Where ``sigma`` falls on the rising table, as a fractional index (linear between entries)."""
    i = int(torch.searchsorted(table, torch.tensor(sigma, dtype=table.dtype)))
    if i == 0:
        return 0.0
    if i >= len(table):
        return float(len(table) - 1)
    lo, hi = float(table[i - 1]), float(table[i])
    return i - 1 + (sigma - lo) / (hi - lo)


def main() -> None:
    threads()
    host = load_host()
    import comfy.samplers

    tcd_core = host.pack.tcd_core
    sampling = host.pack.tcd_comfy.sampling
    patcher = QUICK.teachers[0].build_patcher()
    ms = patcher.get_model_object("model_sampling")
    table = ms.sigmas.detach().double().cpu()
    print(f"SD3 model_sampling: {type(ms).__name__}, shift {ms.shift}, {len(table)} entries")
    print("1. TCD Scheduler sigma shift(t / 999) vs the node's training sigma sigma[t] = shift((t + 1) / 1000):")
    worst = 0.0
    for steps in (1, 2, 4, 8):
        timesteps = tcd_core.tcd_timesteps(steps, 50, 1.0)
        sched = sampling.tcd_sigmas(ms, steps, 50)
        for t, s in zip(timesteps, sched[:-1].tolist(), strict=True):
            trained = float(table[t])
            gap = t - fractional_index(table, s)
            worst = max(worst, gap)
            print(
                f"   {steps} steps, t {t:3d}: scheduler {s:.5f}  table {trained:.5f}  diff {s - trained:+.5f} "
                f"({(s - trained) / trained:+.2%}), {gap:.3f} table steps below"
            )
    print(f"   largest gap at 1-8 steps: {worst:.3f} table steps (the grid's spacing is 20 table steps)")
    grid = [(i + 1) * 20 - 1 for i in range(50)]
    full = sampling.tcd_sigmas(ms, 50, 50)[:-1].double().flip(0)
    rel = (full - table[grid]) / table[grid]
    gaps = [t - fractional_index(table, float(s)) for t, s in zip(grid, full.tolist(), strict=True)]
    print(f"   all 50 grid timesteps (TCD at 50 steps): t 19: scheduler {float(full[0]):.5f} table "
          f"{float(table[19]):.5f} ({float(rel[0]):+.2%}); largest relative diff {float(rel.abs().max()):.2%}, "
          f"largest gap {max(gaps):.3f} table steps")  # fmt: skip
    simple = comfy.samplers.calculate_sigmas(ms, "simple", 50).double().cpu()[:-1].flip(0)
    err = float((simple - table[grid]).abs().max())
    print(f"2. ComfyUI 'simple' at 50 steps vs the 50 grid entries sigma[19], sigma[39], ..., sigma[999]: max |diff| "
          f"{err:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
