"""python -m bench.product [--quick] [--out DIR]: train what is missing, score, write the report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .env import threads
from .report import markdown, write_outputs
from .run import run
from .specs import FULL, QUICK

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.product", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a couple of minutes (for a test)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default docs/benchmarks)")
    args = parser.parse_args(argv)
    threads()
    plan = QUICK if args.quick else FULL
    prefix = "product_quick" if args.quick else "product"
    command = "python -m bench.product" + (" --quick" if args.quick else "")
    result = run(plan, log=lambda text: print(text, flush=True))
    write_outputs(result, args.out or REPO_ROOT / "docs" / "benchmarks", prefix, command, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
