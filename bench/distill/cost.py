"""Cost of one distillation iteration, TCD against LCM, beside the passes it must make.

Per iteration Eq. 29 needs one forward + backward of the student at t_{n+k}, the teacher's guided
forward (prompt and empty prompt: two forwards) and one no-grad forward of the target at t_n.
The ratio ``iteration / (sum of those passes)`` says how much the loss code adds on top.
Peak memory: bytes of tensor storage alive at once during the iteration (torch dispatch mode,
CPU and GPU alike), the optimiser state excluded (it exists before the iteration starts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from bench.harness import PeakLiveTensorBytes
from tcd_core.distill import DistillConfig, distill_loss, draw_training_points

from .sampling import ALPHAS_CUMPROD
from .train import TrainSpec, model_fns


def _median_time(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_bytes(fn: Callable[[], object]) -> int:
    with PeakLiveTensorBytes() as tracker:
        fn()
    return tracker.peak


def measure(teacher: nn.Module, dim: int, batch: int = 256, lora_rank: int = 0, rounds: int = 30) -> dict[str, dict]:
    """Median seconds and peak live bytes: an iteration of each method and each pass, on one model and batch."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(batch, dim, generator=gen)
    noise = torch.randn(batch, dim, generator=gen)
    t = torch.full((batch,), 499, dtype=torch.int64)
    out: dict[str, dict] = {}
    steps: dict[str, Callable[[], object]] = {}
    for method in ("tcd", "lcm"):
        config = DistillConfig(method=method, loss="huber")  # guided 3..15: two teacher forwards
        student, params, student_fn, teacher_fn = model_fns(teacher, TrainSpec(lora_rank=lora_rank))
        opt = torch.optim.AdamW(params, lr=1e-5)
        points = draw_training_points(config, batch, gen)

        def iteration(config=config, student_fn=student_fn, teacher_fn=teacher_fn, opt=opt, points=points) -> None:
            loss = distill_loss(config, ALPHAS_CUMPROD, x0, noise, points, student_fn, teacher_fn, student_fn, "c", "u")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        iteration()  # optimiser state allocated before timing
        steps[method] = iteration
        if method == "tcd":

            def student_pass(student_fn=student_fn) -> None:
                student_fn(x0, t, None).square().mean().backward()

            def teacher_pass(teacher_fn=teacher_fn) -> None:
                with torch.no_grad():
                    teacher_fn(x0, t, "c")
                    teacher_fn(x0, t, "u")

            def target_pass(student_fn=student_fn) -> None:
                with torch.no_grad():
                    student_fn(x0, t, None)

            steps.update(student_fwd_bwd=student_pass, teacher_guided_fwd=teacher_pass, target_fwd=target_pass)
    for fn in steps.values():
        fn()  # warm up
    # Interleave rounds so machine noise hits every measurement alike.
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            samples[name].append(_median_time(fn, 1))
    for name, fn in steps.items():
        out[name] = {"seconds": statistics.median(samples[name]), "peak_bytes": _peak_bytes(fn)}
    passes = sum(out[n]["seconds"] for n in ("student_fwd_bwd", "teacher_guided_fwd", "target_fwd"))
    for method in ("tcd", "lcm"):
        out[method]["ratio_to_passes"] = out[method]["seconds"] / passes
    out["passes_sum"] = {"seconds": passes}
    return out
