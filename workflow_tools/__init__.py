"""Workflow tools: UI (graph) workflow JSON -> API prompt, and the checks ComfyUI's own validation cannot make.

Standard library only: no ComfyUI or torch import. Shipped with the pack (users may run it from the
pack's folder). Command line:

    python -m workflow_tools validate WORKFLOW.json [--object-info FILE_OR_URL ...]
    python -m workflow_tools convert WORKFLOW.json [--object-info FILE_OR_URL ...] > api.json

Values, ranges, choices, required inputs and link types are ComfyUI's to check: POST the converted
prompt to /prompt, whose answer names them in `node_errors`.
"""

from .convert import Conversion, convert_workflow, map_widget_values, to_api
from .graph import FRONTEND_ONLY_TYPES, Issue, UIGraph, WorkflowError, node_label
from .object_info import InputSpec, NodeSchema, ObjectInfo, load_object_info, merged_object_info, parse_input_spec
from .validate import Report, validate_workflow

__all__ = [
    "FRONTEND_ONLY_TYPES",
    "Conversion",
    "InputSpec",
    "Issue",
    "NodeSchema",
    "ObjectInfo",
    "Report",
    "UIGraph",
    "WorkflowError",
    "convert_workflow",
    "load_object_info",
    "map_widget_values",
    "merged_object_info",
    "node_label",
    "parse_input_spec",
    "to_api",
    "validate_workflow",
]
