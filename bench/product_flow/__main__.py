"""python -m bench.product_flow [--quick] [--teacher-only] [--out DIR]: train what is missing, score, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bench.product.env import threads
from bench.product.report import plot_losses
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
    out_dir = args.out or REPO_ROOT / "docs" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.product_flow" + "".join(
        flag for flag, on in ((" --quick", args.quick), (" --teacher-only", args.teacher_only)) if on
    )
    result = run(plan, log=lambda text: print(text, flush=True))
    (out_dir / f"{prefix}_results.json").write_text(json.dumps(result, indent=1))
    plot_name = f"{prefix}_losses.png" if result["students"] else None
    if plot_name:
        plot_losses(result, out_dir / plot_name)
    report = out_dir / f"{prefix}_results.md"
    report.write_text(markdown(result, command, plot_name))
    print(f"wrote {report} (made by: {command})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
