"""Command line: validate UI workflows, or convert one to an API prompt on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
from pathlib import Path
from typing import Any

from .object_info import ObjectInfo, merged_object_info
from .validate import validate_workflow

DEFAULT_SERVER = "http://127.0.0.1:8188"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m workflow_tools",
        description="Check ComfyUI UI-format workflows against /object_info for what ComfyUI's own prompt "
        "validation cannot see (unknown node types, widget values that do not fit, broken links, the models list), "
        "or convert them to API format; ComfyUI checks values, choices and link types when the prompt is queued.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sources = {
        "action": "append",
        "metavar": "FILE_OR_URL",
        "help": "an /object_info JSON file or a ComfyUI server URL; repeat to merge several "
        f"(default: {DEFAULT_SERVER})",
    }
    validate = commands.add_parser("validate", help="check workflows; exit status 1 on any error")
    validate.add_argument("workflows", nargs="+", type=Path, metavar="WORKFLOW.json")
    validate.add_argument("--object-info", dest="object_info", **sources)
    validate.add_argument("--quiet", "-q", action="store_true", help="print errors only")
    convert = commands.add_parser("convert", help="print the API-format prompt of a workflow")
    convert.add_argument("workflow", type=Path, metavar="WORKFLOW.json")
    convert.add_argument("--object-info", dest="object_info", **sources)
    return parser


def _read_workflow(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _object_info(sources: list[str] | None) -> ObjectInfo:
    return merged_object_info(sources or [DEFAULT_SERVER])


def _validate(options: argparse.Namespace, info: ObjectInfo) -> int:
    failed = 0
    for path in options.workflows:
        try:
            report = validate_workflow(_read_workflow(path), info)
        except (OSError, ValueError) as error:  # unreadable file, bad JSON, not a UI workflow
            print(f"{path}: FAILED: {error}")
            failed += 1
            continue
        for issue in report.errors if options.quiet else report.issues:
            print(f"{path}: {issue}")
        if report.ok:
            if not options.quiet:
                print(f"{path}: ok ({len(report.conversion.prompt)} nodes, {len(report.warnings)} warnings)")
        else:
            print(f"{path}: FAILED with {len(report.errors)} errors")
            failed += 1
    return 1 if failed else 0


def _convert(options: argparse.Namespace, info: ObjectInfo) -> int:
    try:
        report = validate_workflow(_read_workflow(options.workflow), info)
    except (OSError, ValueError) as error:
        print(f"{options.workflow}: {error}", file=sys.stderr)
        return 1
    for issue in report.issues:
        print(f"{options.workflow}: {issue}", file=sys.stderr)
    if not report.ok:
        return 1
    json.dump(report.conversion.prompt, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (0 ok, 1 workflow errors, 2 usage or source errors)."""
    options = _parser().parse_args(argv)
    try:
        info = _object_info(options.object_info)
    except (OSError, ValueError, urllib.error.URLError) as error:
        print(f"cannot read /object_info: {error}", file=sys.stderr)
        return 2
    if options.command == "validate":
        return _validate(options, info)
    return _convert(options, info)


__all__ = ["main"]
