"""The flow benchmark's targets (issue 20, section 4), judged from the result rows on FD to the teacher's 50-step
Euler samples, 3-seed means with every seed printed:

(a) the TCD student at 4 and 8 steps at most half the teacher's own Euler FD at the same steps (distillation works);
(b) the TCD student at or below the LCM-flow student at 4 and 8 steps.

As in bench/product, the TCD student is judged at its best gamma of the TCD Scheduler + TCD Sampler rows and the
LCM student at its best schedule.
"""

from __future__ import annotations

from bench.product.sampling import LCM_SAMPLERS, TCD_SAMPLERS
from bench.product.targets import Rows, Verdict, best, cells, mean, per_seed

from .sampling import EULER

JUDGED_TCD = [c.label for c in TCD_SAMPLERS]
JUDGED_LCM = [c.label for c in LCM_SAMPLERS]
TARGET_STEPS = (4, 8)
DISTILLATION_FACTOR = 2.0

TARGET_TEXT = {
    "a": f"TCD student (best gamma) at most 1/{DISTILLATION_FACTOR:g} of the teacher's own Euler FD at the same steps "
    "(3-seed means)",
    "b": "TCD student (best gamma) at or below the LCM-flow student (best schedule), 3-seed mean",
}


def judge(rows: Rows, teacher: str, step_counts: tuple[int, ...]) -> list[Verdict]:
    out: list[Verdict] = []
    for steps in [s for s in TARGET_STEPS if s in step_counts]:
        if not cells(rows, teacher, "tcd", JUDGED_TCD[0], steps):
            continue  # no students in this run (--teacher-only)
        g = best(rows, teacher, "tcd", JUDGED_TCD, steps)
        a, e = cells(rows, teacher, "tcd", g, steps), cells(rows, teacher, "teacher", EULER.label, steps)
        ratio = mean(e, "fd_ref") / mean(a, "fd_ref")
        out.append(
            Verdict(
                "a",
                teacher,
                steps,
                ratio >= DISTILLATION_FACTOR,
                f"TCD ({g}) mean {mean(a, 'fd_ref'):.2f} [{per_seed(a, 'fd_ref')}] vs teacher euler mean "
                f"{mean(e, 'fd_ref'):.2f} [{per_seed(e, 'fd_ref')}]: {ratio:.2f}x closer",
            )
        )
        m = best(rows, teacher, "lcm", JUDGED_LCM, steps)
        b = cells(rows, teacher, "lcm", m, steps)
        out.append(
            Verdict(
                "b",
                teacher,
                steps,
                mean(a, "fd_ref") <= mean(b, "fd_ref"),
                f"TCD ({g}) mean {mean(a, 'fd_ref'):.2f} [{per_seed(a, 'fd_ref')}] vs LCM ({m}) mean "
                f"{mean(b, 'fd_ref'):.2f} [{per_seed(b, 'fd_ref')}]",
            )
        )
    return out
