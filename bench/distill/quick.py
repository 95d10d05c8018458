"""The fast version of the benchmark (the suite runs it): the ring, one seed, a small teacher, no cache.

Trains a small teacher from scratch, checks the precondition, distils an LCM and a TCD student
with the same few hundred iterations and returns the distances the test asserts on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .run import Bench, Cell
from .setups import ring_setup
from .teacher import TeacherSpec

QUICK_TEACHER = TeacherSpec("ring-quick", dim=2, hidden=64, depth=2, iterations=2500, batch=256, lr=3e-3)


@dataclass(frozen=True)
class QuickResult:
    floor_swd: float
    teacher_ddim50_swd: float
    lcm_swd: dict[int, float]  # LCM student, LCM sampling, by steps
    tcd_swd: dict[int, float]  # TCD student, SSS gamma 0.3, by steps
    tcd_ddim_swd: dict[int, float]  # TCD student, SSS gamma 0 (deterministic), by steps

    @property
    def precondition_ratio(self) -> float:
        return self.teacher_ddim50_swd / self.floor_swd


def quick_ring(seed: int = 0, iterations: int = 300, n_eval: int = 4000, steps: tuple[int, ...] = (1, 8)) -> QuickResult:
    """Teacher, LCM student and TCD student on the ring; deterministic for a given seed."""
    torch.manual_seed(seed)
    setup = ring_setup(n_eval=n_eval, teacher_spec=TeacherSpec(**{**QUICK_TEACHER.__dict__, "seed": seed}))
    bench = Bench(setup, use_cache=False, log=lambda _: None)
    base = Cell(method="tcd", iterations=iterations, seed=seed)
    lcm = {n: bench.score(Cell(**{**base.__dict__, "method": "lcm"}), "lcm", n, seed)["swd"] for n in steps}
    tcd = {n: bench.score(base, "sss0.3", n, seed)["swd"] for n in steps}
    tcd_ddim = {n: bench.score(base, "sss0.0", n, seed)["swd"] for n in steps}
    teacher = bench.score(None, "sss0.0", 50, seed)["swd"]
    return QuickResult(setup.floor["swd"], teacher, lcm, tcd, tcd_ddim)
