"""Test-only stand-in for ComfyUI_IPAdapter_plus: its node schemas, none of its behaviour.

The community pack cannot be installed on the test machines, yet one example workflow uses
its nodes. This pack registers a class per node of that pack, generated from the pack's
recorded /object_info (shared/fixtures/ipadapter_plus_object_info.json, read from a real
ComfyUI 0.3.75 with ComfyUI_IPAdapter_plus loaded): same ids, display names, categories,
inputs in the same order (so UI widget values line up) and outputs. Executing any of them
raises NotImplementedError. Only the browser test's ComfyUI server loads it, under the real
pack's folder name (ComfyServer(extra_packs={"ComfyUI_IPAdapter_plus": this folder})), so that
its /object_info equals the recording, python_module included; it never ships with the pack.

$TCD_IPADAPTER_OBJECT_INFO names another recording; the default is the one in ../shared
beside this repository.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OBJECT_INFO_PATH = Path(
    os.environ.get("TCD_IPADAPTER_OBJECT_INFO")
    or Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "ipadapter_plus_object_info.json"
)


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


def _load_object_info() -> dict[str, dict[str, Any]]:
    if not OBJECT_INFO_PATH.is_file():
        raise FileNotFoundError(
            f"the ComfyUI_IPAdapter_plus schema recording {OBJECT_INFO_PATH} is missing: it lives in "
            "shared/fixtures beside this repository (or set $TCD_IPADAPTER_OBJECT_INFO)"
        )
    return json.loads(OBJECT_INFO_PATH.read_text(encoding="utf-8"))


OBJECT_INFO = _load_object_info()
NODE_CLASS_MAPPINGS = {name: schema_only_node(name, entry) for name, entry in OBJECT_INFO.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: entry["display_name"] for name, entry in OBJECT_INFO.items()}
