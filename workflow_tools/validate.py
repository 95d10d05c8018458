"""Checks a UI workflow against /object_info: node types, widget values, required inputs, link types."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .convert import Conversion, ConvertedNode, convert_workflow
from .graph import ERROR, WARNING, Issue
from .object_info import InputSpec, ObjectInfo

# Values with these suffixes name files (models, input images): a file missing from this
# ComfyUI's list is reported as a warning (it may just not be downloaded yet) unless strict.
FILE_SUFFIXES = frozenset(
    ".safetensors .sft .ckpt .pt .pth .bin .gguf .onnx .pkl .yaml "
    ".png .jpg .jpeg .webp .gif .bmp .tif .tiff .mp4 .webm .mov .wav .mp3 .flac .glb".split()
)
NO_FILE = frozenset({"None", "none", ""})
MAX_CHOICES_SHOWN = 8


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


def types_match(output_type: str, input_type: str) -> bool:
    """Whether an output may feed an input: equal types, "*" on either side, or comma lists sharing one."""
    if not output_type or not input_type or "*" in (output_type, input_type):
        return True
    outputs = {t.strip().upper() for t in output_type.split(",")}
    inputs = {t.strip().upper() for t in input_type.split(",")}
    return bool(outputs & inputs) or "*" in outputs | inputs


def is_file_name(value: Any) -> bool:
    return isinstance(value, str) and PurePosixPath(value).suffix.lower() in FILE_SUFFIXES


def _is_file_list(spec: InputSpec) -> bool:
    """A COMBO listing files (models, input images), whose choices depend on what is installed."""
    if spec.has_upload_widget:
        return True
    return all(is_file_name(choice) for choice in spec.choices or () if choice not in NO_FILE)


def _shown(choices: tuple[Any, ...]) -> str:
    shown = ", ".join(repr(c) for c in choices[:MAX_CHOICES_SHOWN])
    more = len(choices) - MAX_CHOICES_SHOWN
    return shown + (f", ... ({more} more)" if more > 0 else "") if choices else "none"


def _number_issue(spec: InputSpec, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expects a number ({spec.type}), got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"expects a finite number, got {value!r}"
    if spec.type == "INT" and isinstance(value, float) and not value.is_integer():
        return f"expects an integer (INT), got {value!r}"
    low, high = spec.options.get("min"), spec.options.get("max")
    if low is not None and value < low:
        return f"{value!r} is below the minimum {low!r}"
    if high is not None and value > high:
        return f"{value!r} is above the maximum {high!r}"
    return None


def check_value(spec: InputSpec, value: Any, strict_files: bool = False) -> tuple[str, str] | None:
    """(severity, message) when a widget value does not fit its input, else None."""
    if spec.type in ("INT", "FLOAT"):
        message = _number_issue(spec, value)
        return None if message is None else (ERROR, message)
    if spec.type == "STRING":
        return None if isinstance(value, str) else (ERROR, f"expects a string (STRING), got {value!r}")
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else (ERROR, f"expects true or false (BOOLEAN), got {value!r}")
    if spec.type != "COMBO":
        return None
    choices = spec.choices or ()
    items = value if spec.multiselect and isinstance(value, list) else [value]
    for item in items:
        try:
            if item in choices:
                continue
        except TypeError:  # an unhashable value compared with the choices
            pass
        if is_file_name(item) and _is_file_list(spec) and not strict_files:
            return WARNING, f'file "{item}" is not installed in this ComfyUI (its list: {_shown(choices)})'
        return ERROR, f"{item!r} is not one of its choices: {_shown(choices)}"
    return None


def _check_widgets(node: ConvertedNode, issues: list[Issue], strict_files: bool) -> None:
    for spec in node.schema.widget_inputs:
        if spec.name in node.linked or spec.name not in node.inputs:
            continue
        value = node.inputs[spec.name]
        if isinstance(value, Mapping) and "__value__" in value:
            value = value["__value__"]
        found = check_value(spec, value, strict_files)
        if found is not None:
            severity, message = found
            if spec.name in node.primitives:
                primitive = node.primitives[spec.name].primitive
                message += f" (the value comes from PrimitiveNode {primitive.get('id')})"
            issues.append(Issue(message, node.label, spec.name, severity))


def _check_links(node: ConvertedNode, info: ObjectInfo, issues: list[Issue]) -> None:
    for name, linked in node.linked.items():
        spec = node.schema.input(name)
        origin_schema = info.get(str(linked.origin.get("type")))
        if spec is None or origin_schema is None:
            continue
        origin_label = f'node {linked.origin.get("id")} "{linked.origin.get("title") or origin_schema.display_name}"'
        origin_label += f" ({origin_schema.type})"
        if not 0 <= linked.slot < len(origin_schema.outputs):
            issues.append(
                Issue(
                    f"is linked to output {linked.slot} of {origin_label}, which has only "
                    f"{len(origin_schema.outputs)} outputs",
                    node.label,
                    name,
                )
            )
            continue
        output_type = origin_schema.outputs[linked.slot]
        if not types_match(output_type, spec.type):
            output_name = origin_schema.output_names[linked.slot]
            issues.append(
                Issue(
                    f"link {linked.link.id} brings {output_type} from output {linked.slot} "
                    f'"{output_name}" of {origin_label}, but this input takes {spec.type}: types do not match',
                    node.label,
                    name,
                )
            )


def _check_required(node: ConvertedNode, issues: list[Issue]) -> None:
    for spec in node.schema.inputs:
        if not spec.required or spec.name in node.inputs:
            continue
        if spec.is_widget:
            message = f"required widget ({spec.type}) has no value"
        else:
            message = f"required input ({spec.type}) is not connected"
        issues.append(Issue(message, node.label, spec.name))


def _check_models(conversion: Conversion, issues: list[Issue]) -> None:
    for index, model in enumerate(conversion.graph.models()):
        missing = [key for key in ("name", "url", "directory") if not model.get(key)]
        if missing:
            issues.append(Issue(f"models[{index}] lacks {', '.join(missing)}: {dict(model)!r}"))
        elif not str(model["url"]).startswith("https://"):
            issues.append(Issue(f"models[{index}] ({model['name']}) has a non-https url: {model['url']}"))


def validate_workflow(workflow: Mapping[str, Any], info: ObjectInfo, strict_files: bool = False) -> Report:
    """All issues of a UI workflow against (merged) /object_info.

    Missing model and input files are warnings (ComfyUI offers to download what `models`
    lists); with strict_files they are errors.
    """
    conversion = convert_workflow(workflow, info)
    issues = list(conversion.issues)
    for node in conversion.nodes.values():
        _check_widgets(node, issues, strict_files)
        if node.active:
            _check_links(node, info, issues)
            _check_required(node, issues)
    if not any(node.active and node.schema.output_node for node in conversion.nodes.values()):
        issues.append(Issue("has no output node (such as SaveImage or PreviewImage): ComfyUI would run nothing"))
    _check_models(conversion, issues)
    return Report(issues, conversion)
