"""The fast version of the distillation benchmark (bench/distill): the 8-Gaussian ring, one seed.

It trains a small eps-prediction teacher from scratch (no cache), checks the benchmark's
precondition (teacher DDIM-50 within 1.5x of the data-vs-data distance), distils an LCM and a
TCD student with tcd_core.distill for a few hundred iterations each, and asserts the ordering
this budget shows reliably (margins checked over seeds 0, 1, 2; see BENCHMARKS.md).
The full benchmark is ``python -m bench.distill``.
"""

from __future__ import annotations

import functools

import pytest

from bench.distill.quick import QuickResult, quick_ring

SEED = 0
ITERATIONS = 300


@functools.cache
def result() -> QuickResult:
    return quick_ring(seed=SEED, iterations=ITERATIONS)


def test_teacher_meets_the_precondition() -> None:
    r = result()
    assert r.precondition_ratio <= 1.5, (
        f"teacher DDIM-50 SWD {r.teacher_ddim50_swd:.4f} is {r.precondition_ratio:.2f}x the data floor"
    )


def test_tcd_beats_lcm_at_8_steps() -> None:
    r = result()
    ratio = r.tcd_swd[8] / r.lcm_swd[8]
    assert ratio < 0.9, f"TCD (SSS gamma 0.3) / LCM (LCM sampling) SWD at 8 steps = {ratio:.3f}, expected < 0.9"


pytestmark = pytest.mark.timeout(300)
