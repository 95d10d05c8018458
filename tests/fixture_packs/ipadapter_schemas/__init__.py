"""Test-only stand-in for ComfyUI_IPAdapter_plus: its node schemas, none of its behaviour.

The community pack cannot be installed on the test machines, yet one example workflow uses
its nodes. This pack registers a class per node of that pack, generated from the pack's
recorded /object_info (object_info.json beside this file, read from a real
ComfyUI 0.3.75 with ComfyUI_IPAdapter_plus loaded): same ids, display names, categories,
inputs in the same order (so UI widget values line up) and outputs. Executing any of them
raises NotImplementedError. Only the browser test's ComfyUI server loads it, under the real
pack's folder name (ComfyServer(extra_packs={"ComfyUI_IPAdapter_plus": this folder})), so that
its /object_info equals the recording, python_module included; it never ships with the pack.

Code outside the server names the same file as devkit.fixtures.IPADAPTER_OBJECT_INFO_PATH (ComfyUI's
server cannot import devkit, so this pack finds the file next to itself).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OBJECT_INFO_PATH = Path(__file__).resolve().with_name("object_info.json")


def input_types(entry: dict[str, Any]) -> dict[str, dict[str, tuple]]:
    """INPUT_TYPES from an /object_info entry, each section in the recorded input_order."""
    spec = {}
    for section, inputs in entry["input"].items():
        order = entry.get("input_order", {}).get(section, list(inputs))
        spec[section] = {name: tuple(inputs[name]) for name in order}
    return spec


def schema_only_node(name: str, entry: dict[str, Any]) -> type:
    """A V1 node class with the schema of `entry` whose execution raises NotImplementedError."""
    spec = input_types(entry)

    def run(self: Any, **inputs: Any) -> tuple:
        raise NotImplementedError(
            f"{name} is a schema-only test stand-in for ComfyUI_IPAdapter_plus "
            "(tests/fixture_packs/ipadapter_schemas): it cannot execute. Install ComfyUI_IPAdapter_plus to run it."
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
