"""python -m bench.product [--quick] [--out DIR]: train what is missing, score, write the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .env import threads
from .report import markdown, plot_losses
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
    out_dir = args.out or REPO_ROOT / "docs" / "benchmarks"
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.product" + (" --quick" if args.quick else "")
    result = run(plan, log=lambda text: print(text, flush=True))
    (out_dir / f"{prefix}_results.json").write_text(json.dumps(result, indent=1))
    plot_name = f"{prefix}_losses.png"
    plot_losses(result, out_dir / plot_name)
    report = out_dir / f"{prefix}_results.md"
    report.write_text(markdown(result, command, plot_name))
    print(f"wrote {report} (made by: {command})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
