"""Fast checks of the distillation benchmark (bench/distill); the full run is ``python -m bench.distill``.

What runs here in seconds: the benchmark's measuring stick (sliced Wasserstein and mode coverage
on the 8-Gaussian ring against known answers) and its precondition, which must refuse a weak
teacher before any distillation. The TCD-vs-LCM ordering itself needs a good teacher (minutes of
CPU), so it lives in the full benchmark and BENCHMARKS.md, not in the suite.
"""

from __future__ import annotations

import torch

from bench.distill.__main__ import PRECONDITION, check_teacher
from bench.distill.data import RING_MODES, ring_centres, sample_ring
from bench.distill.metrics import mode_coverage, sliced_wasserstein
from bench.distill.report import Report
from bench.distill.run import Bench
from bench.distill.setups import ring_setup
from bench.distill.teacher import TeacherSpec


def test_sliced_wasserstein_knows_a_shift() -> None:
    """SW1 of a set against itself is 0; against the set shifted by d it is E|u . d| over unit u (2-D: 2|d|/pi)."""
    x = sample_ring(4000, torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x, x) == 0.0
    shift = torch.tensor([0.3, 0.0])
    swd = sliced_wasserstein(x, x + shift, directions=2048)
    assert abs(swd - 2 * 0.3 / torch.pi) < 0.01, swd


def test_mode_coverage_sees_a_collapse() -> None:
    gen = torch.Generator().manual_seed(1)
    covered, near = mode_coverage(sample_ring(4000, gen))
    assert covered == 1.0 and near > 0.97
    one_mode = ring_centres()[0] + 0.01 * torch.randn(4000, 2, generator=gen)
    covered, near = mode_coverage(one_mode)
    assert covered == 1.0 / RING_MODES and near == 1.0


def test_weak_teacher_is_refused(tmp_path) -> None:
    """A teacher trained for 150 iterations fails the precondition, and the benchmark says why."""
    spec = TeacherSpec("ring-weak", dim=2, hidden=32, depth=1, iterations=150, batch=256, lr=3e-3)
    bench = Bench(ring_setup(teacher_spec=spec), use_cache=False, log=lambda _: None)
    ratio = bench.precondition()["swd"]
    assert ratio > PRECONDITION
    message = check_teacher(bench, Report(tmp_path, [0], 0))
    assert message is not None and "too weak" in message and f"{ratio:.2f}x" in message
