"""Example-workflow tools: UI (graph) workflow JSON -> API prompt, and validation against /object_info.

Standard library only: no ComfyUI or torch import. Command line:

    python -m workflow_tools validate WORKFLOW.json [--object-info FILE_OR_URL ...] [--strict-files]
    python -m workflow_tools convert WORKFLOW.json [--object-info FILE_OR_URL ...] > api.json
"""

from .convert import Conversion, convert_workflow, map_widget_values, to_api
from .graph import FRONTEND_ONLY_TYPES, Issue, UIGraph, WorkflowError, node_label
from .object_info import InputSpec, NodeSchema, ObjectInfo, load_object_info, merged_object_info, parse_input_spec
from .validate import Report, check_value, types_match, validate_workflow

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
    "check_value",
    "convert_workflow",
    "load_object_info",
    "map_widget_values",
    "merged_object_info",
    "node_label",
    "parse_input_spec",
    "to_api",
    "types_match",
    "validate_workflow",
]
