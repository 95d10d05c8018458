"""The three targets, judged from the result rows (FD to the teacher's 50-step reference unless named)."""

from __future__ import annotations

from dataclasses import dataclass

from .sampling import LCM_SAMPLERS, REFERENCE_SAMPLER, TCD_SAMPLERS, TEACHER_SAMPLERS

Rows = list[dict]


def cells(rows: Rows, teacher: str, who: str, sampler: str, steps: int) -> dict[int, dict]:
    """{seed: row} of one cell."""
    return {
        r["seed"]: r
        for r in rows
        if (r["teacher"], r["who"], r["sampler"], r["steps"]) == (teacher, who, sampler, steps)
    }


def mean(cell: dict[int, dict], metric: str) -> float:
    return sum(r[metric] for r in cell.values()) / len(cell)


def best(rows: Rows, teacher: str, who: str, samplers: list[str], steps: int, metric: str = "fd_ref") -> str:
    """The sampler with the lowest 3-seed mean of ``metric`` at ``steps``."""
    return min(samplers, key=lambda s: mean(cells(rows, teacher, who, s, steps), metric))


@dataclass
class Verdict:
    target: str
    teacher: str
    steps: int
    passed: bool
    detail: str


def per_seed(cell: dict[int, dict], metric: str) -> str:
    return ", ".join(f"s{seed} {row[metric]:.2f}" for seed, row in sorted(cell.items()))


def judge(rows: Rows, teacher: str, step_counts: tuple[int, ...], reference_steps: int) -> list[Verdict]:
    tcd = [c.label for c in TCD_SAMPLERS]
    lcm = [c.label for c in LCM_SAMPLERS]
    own = [c.label for c in TEACHER_SAMPLERS]
    out: list[Verdict] = []
    for steps in [s for s in (1, 2, 4) if s in step_counts]:
        g = best(rows, teacher, "tcd", tcd, steps)
        t = best(rows, teacher, "teacher", own, steps)
        a, b = cells(rows, teacher, "tcd", g, steps), cells(rows, teacher, "teacher", t, steps)
        ok = all(a[s]["fd_ref"] < b[s]["fd_ref"] for s in a)
        out.append(
            Verdict(
                "a", teacher, steps, ok, f"TCD ({g}) {per_seed(a, 'fd_ref')} vs teacher ({t}) {per_seed(b, 'fd_ref')}"
            )
        )
    for steps in [s for s in (4, 8) if s in step_counts]:
        g = best(rows, teacher, "tcd", tcd, steps)
        m = best(rows, teacher, "lcm", lcm, steps)
        a, b = cells(rows, teacher, "tcd", g, steps), cells(rows, teacher, "lcm", m, steps)
        ok = mean(a, "fd_ref") <= mean(b, "fd_ref")
        out.append(
            Verdict(
                "b",
                teacher,
                steps,
                ok,
                f"TCD ({g}) mean {mean(a, 'fd_ref'):.2f} [{per_seed(a, 'fd_ref')}]"
                f" vs LCM ({m}) mean {mean(b, 'fd_ref'):.2f} "
                f"[{per_seed(b, 'fd_ref')}]",
            )
        )
    if 4 in step_counts:
        g = best(rows, teacher, "tcd", tcd, 4)
        a = cells(rows, teacher, "tcd", g, 4)
        b = cells(rows, teacher, "teacher", REFERENCE_SAMPLER.label, reference_steps)
        ratio = mean(a, "fd_test") / mean(b, "fd_test")
        out.append(
            Verdict(
                "c",
                teacher,
                4,
                ratio <= 1.25,
                f"TCD ({g}) FD to held-out mean {mean(a, 'fd_test'):.2f} "
                f"[{per_seed(a, 'fd_test')}] = {ratio:.2f}x teacher "
                f"{reference_steps}-step {mean(b, 'fd_test'):.2f} "
                f"[{per_seed(b, 'fd_test')}]",
            )
        )
    return out


TARGET_TEXT = {
    "a": "TCD student closer to the teacher's 50-step samples than the teacher's own sampling at the same steps, "
    "every seed",
    "b": "TCD student (best gamma) at or below the LCM student (best schedule), 3-seed mean",
    "c": "TCD student at 4 steps within 1.25x of the teacher's 50-step FD to held-out data (3-seed means)",
}
