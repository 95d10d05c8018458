"""Test-only stand-in for ComfyUI-AnimateDiff-Evolved (Kosinkadink): its node schemas, none of its behaviour.

The community pack cannot be installed on the test machines, yet the AnimateDiff example workflow uses
its Gen2 nodes. object_info.json beside this file holds the /object_info entries of the nodes that
workflow uses, transcribed from the pack's INPUT_TYPES (version 1.5.7, commit d8d163c): the same ids,
display names, categories, inputs in the same order (so UI widget values line up), hidden inputs and
outputs; the descriptions the pack generates from its documentation are left empty, and the motion
model list is empty (no motion model is installed here). Executing any of these nodes raises
NotImplementedError. Only the browser test's ComfyUI server loads this, under the real pack's folder
name (devkit.browser.STAND_IN_PACKS), so that python_module matches; it never ships with the pack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PACK = "ComfyUI-AnimateDiff-Evolved"
OBJECT_INFO_PATH = Path(__file__).resolve().parent / "object_info.json"


def input_types(entry: dict[str, Any]) -> dict[str, dict[str, tuple]]:
    """INPUT_TYPES from an /object_info entry, each section in the recorded input_order."""
    return {
        section: {name: tuple(inputs[name]) for name in entry["input_order"].get(section, list(inputs))}
        for section, inputs in entry["input"].items()
    }


def schema_only_node(name: str, entry: dict[str, Any]) -> type:
    """A V1 node class with the schema of `entry` whose execution raises NotImplementedError."""
    spec = input_types(entry)

    def run(self: Any, **inputs: Any) -> tuple:
        raise NotImplementedError(
            f"{name} is a schema-only test stand-in for {PACK} (tests/fixture_packs/animatediff_schemas): "
            f"it cannot execute. Install {PACK} to run it."
        )

    return type(
        name,
        (),
        {
            "INPUT_TYPES": classmethod(lambda cls: spec),
            "RETURN_TYPES": tuple(entry["output"]),
            "RETURN_NAMES": tuple(entry["output_name"]),
            "OUTPUT_IS_LIST": tuple(entry["output_is_list"]),
            "OUTPUT_NODE": entry["output_node"],
            "CATEGORY": entry["category"],
            "DESCRIPTION": entry["description"],
            "FUNCTION": "run",
            "run": run,
        },
    )


OBJECT_INFO: dict[str, dict[str, Any]] = json.loads(OBJECT_INFO_PATH.read_text(encoding="utf-8"))
NODE_CLASS_MAPPINGS = {name: schema_only_node(name, entry) for name, entry in OBJECT_INFO.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: entry["display_name"] for name, entry in OBJECT_INFO.items()}
