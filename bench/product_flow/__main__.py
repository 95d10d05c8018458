"""python -m bench.product_flow [--quick] [--teacher-only] [--out DIR]: train what is missing, score, report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bench.product.env import threads
from bench.product.report import write_outputs
from bench.product.run import run

from .report import markdown
from .specs import FULL, QUICK

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.product_flow", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, well under a minute (for a test)")
    parser.add_argument("--teacher-only", action="store_true", help="the teacher's rows and no-LoRA controls only")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default docs/benchmarks)")
    args = parser.parse_args(argv)
    threads()
    plan = QUICK if args.quick else FULL
    if args.teacher_only:
        plan = dataclasses.replace(plan, students=False)
    prefix = "product_flow_quick" if args.quick else "product_flow"
    command = "python -m bench.product_flow" + "".join(
        flag for flag, on in ((" --quick", args.quick), (" --teacher-only", args.teacher_only)) if on
    )
    result = run(plan, log=lambda text: print(text, flush=True))
    write_outputs(result, args.out or REPO_ROOT / "docs" / "benchmarks", prefix, command, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
