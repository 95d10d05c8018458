"""Checks a UI workflow for what ComfyUI's own prompt validation does not see.

ComfyUI validates the API prompt when it is queued (POST /prompt answers `node_errors`): node types,
values against their type, range and choices (installed model files included), required inputs and
link types. What it cannot see is lost in the conversion or lives only in the UI file: a node type
no /object_info source defines (named with the pack hint), widget values that do not fit the node's
widgets (a workflow saved for another version of a node), links that do not hold together, and the
workflow's `models` list (what ComfyUI offers to download). Those are checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .convert import Conversion, convert_workflow
from .graph import ERROR, WARNING, Issue
from .object_info import ObjectInfo


@dataclass
class Report:
    """What validate_workflow found; `ok` when there is no error (warnings are allowed)."""

    issues: list[Issue]
    conversion: Conversion

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues) or "ok"


def _check_models(conversion: Conversion, issues: list[Issue]) -> None:
    for index, model in enumerate(conversion.graph.models()):
        missing = [key for key in ("name", "url", "directory") if not model.get(key)]
        if missing:
            issues.append(Issue(f"models[{index}] lacks {', '.join(missing)}: {dict(model)!r}"))
        elif not str(model["url"]).startswith("https://"):
            issues.append(Issue(f"models[{index}] ({model['name']}) has a non-https url: {model['url']}"))


def validate_workflow(workflow: Mapping[str, Any], info: ObjectInfo) -> Report:
    """The issues of a UI workflow against (merged) /object_info that ComfyUI's POST /prompt cannot report."""
    conversion = convert_workflow(workflow, info)
    issues = list(conversion.issues)
    _check_models(conversion, issues)
    return Report(issues, conversion)
