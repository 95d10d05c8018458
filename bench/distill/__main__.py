"""Distillation benchmark: TCD against LCM distillation of the same small real teacher.

    .dev/venv/bin/python -m bench.distill            # the full benchmark (cached under .dev/bench-cache/distill/)
    .dev/venv/bin/python -m bench.distill --quick    # one seed, the ring only, fewer iterations

Prints every table, writes them to docs/benchmarks/distill_results.md and the plots to
docs/benchmarks/distill_<case>.png. Exits with status 2 if a teacher fails the precondition (its tables are
printed for information, with no target judged; --strict skips them).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .report import Report
from .run import Bench, Cell, MissingCell
from .setups import digits_setup, ring_setup
from .teacher import REPO_ROOT

PRECONDITION = 1.5


def check_teacher(bench: Bench, report: Report, seeds: tuple[int, ...] = (0,)) -> str | None:
    """None if the teacher's DDIM-50 (mean over ``seeds``) is within PRECONDITION x the data-vs-data
    distance, else the abort message."""
    ratios = bench.precondition(seeds)
    setup = bench.setup
    primary = ratios[setup.primary]
    line = ", ".join(f"{m.upper()} {r:.2f}x" for m, r in ratios.items())
    report.line(
        f"Precondition ({setup.name}): teacher DDIM-50 / data-vs-data = {line} "
        f"(required <= {PRECONDITION}x in {setup.primary.upper()}): {'met' if primary <= PRECONDITION else 'FAILED'}"
    )
    report.line()
    if primary > PRECONDITION:
        message = (
            f"ABORT: the {setup.name} teacher is too weak (DDIM-50 {setup.primary.upper()} {primary:.2f}x the "
            f"data-vs-data distance, above {PRECONDITION}x); a student of a weak teacher inherits its errors "
            "and the TCD-vs-LCM comparison means nothing: the tables below are for information, no target is "
            "judged. Train a better teacher (TeacherSpec)."
        )
        report.line(message)
        report.line()
        return message
    return None


def run_part(report: Report, name: str, part, bench: Bench, base: Cell, seeds: list[int]) -> None:
    """One section; with --cache-only and a student missing, the section on seed 0 alone, or a note."""
    for attempt in (seeds, seeds[:1]):
        mark = len(report.lines)
        try:
            part(bench, base, attempt)
            if attempt != seeds:
                report.line(f"(above: seed {attempt[0]} only; the students of seeds {seeds[1:]} are not cached)")
                report.line()
            return
        except MissingCell as missing:
            report.rewind(mark)
            reason = str(missing)
        if len(seeds) == 1:
            break
    report.line(f"({bench.setup.name} {name}: not run, no cached student {reason})")
    report.line()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.distill", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ring only, one seed, 500 iterations")
    parser.add_argument("--cases", default="ring,digits", help="comma list of ring, digits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the main TCD-vs-LCM tables")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds of the ablations and the LoRA rows")
    parser.add_argument("--digits-seeds", type=int, default=3, help="seeds of every digits table")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-cache", action="store_true", help="retrain teachers and students")
    parser.add_argument("--cache-only", action="store_true", help="train no student: report what is cached")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: ablation, lr, srule, lora, cost")
    parser.add_argument("--strict", action="store_true", help="skip a case whose teacher fails the precondition")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.cases, args.seeds, args.ablation_seeds, args.iterations = "ring", 1, 1, 500
    skip = set(filter(None, args.skip.split(",")))
    seeds = list(range(args.seeds))
    ablation_seeds = list(range(min(args.ablation_seeds, args.seeds)))
    started = time.time()
    report = Report(args.out, seeds, args.iterations)
    report.header(" ".join(["python -m bench.distill", *(argv if argv is not None else sys.argv[1:])]))

    failures: list[str] = []
    passed: Bench | None = None
    for case in args.cases.split(","):
        setup = ring_setup() if case == "ring" else digits_setup()
        base = Cell(method="tcd", iterations=args.iterations, batch=256 if case == "ring" else 128)
        if case == "digits":
            seeds = list(range(args.digits_seeds))
            ablation_seeds = seeds[: args.ablation_seeds]
        bench = Bench(setup, use_cache=not args.no_cache, log=report.progress, train=not args.cache_only)
        report.teacher(bench)
        failure = check_teacher(bench, report, tuple(seeds))
        report.judging = failure is None
        if failure is not None:
            failures.append(failure)
            if args.strict:
                continue
        else:
            passed = bench
        parts = [("main", report.main_table, seeds)]
        if "lora" not in skip:
            parts.append(("lora", report.lora, ablation_seeds))
        if case == "ring" and "ablation" not in skip:
            parts.append(("ablation", report.ablation_target_loss, ablation_seeds))
        if "lr" not in skip:
            parts.append(("lr", report.learning_rate, ablation_seeds))
        if case == "ring" and "srule" not in skip:
            parts.append(("srule", report.ablation_s_rule, ablation_seeds))
        parts.append(("plot", report.plot, seeds))
        for name, part, part_seeds in parts:
            run_part(report, name, part, bench, base, part_seeds)
    if "cost" not in skip and passed is not None:
        report.cost(passed)
    report.line(f"Total time {time.time() - started:.0f} s.")
    report.flush()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
