"""Recorded data the tests and dev tools read, kept in this repository.

``IPADAPTER_OBJECT_INFO_PATH``: ComfyUI_IPAdapter_plus's ``/object_info`` as a real ComfyUI 0.3.75 with
that pack loaded served it. That community pack cannot be installed on the test machines, yet one
example workflow uses its nodes; the recording lets the workflow tools validate that workflow, and the
test-only stand-in pack beside it (``tests/fixture_packs/ipadapter_schemas``) serves the same schemas
from a real server. The stand-in runs inside ComfyUI's server, where this package is not importable,
so it opens the file next to its own ``__init__.py``: that is this path.
"""

from __future__ import annotations

import json
from typing import Any

from devkit.host import REPO_ROOT

IPADAPTER_STAND_IN_PACK = REPO_ROOT / "tests" / "fixture_packs" / "ipadapter_schemas"
IPADAPTER_OBJECT_INFO_PATH = IPADAPTER_STAND_IN_PACK / "object_info.json"
# Test-only node packs ComfyUI loads beside the pack in the test servers and in process ({folder name: folder}):
# TCDTestTinyFlowModel builds tiny flow models (ComfyUI cannot detect them, so no loader of its own can).
TEST_PACKS = {"tcd-test-tiny-flow-models": REPO_ROOT / "tests" / "fixture_packs" / "tiny_flow_models"}
TINY_FLOW_MODEL_NODE = "TCDTestTinyFlowModel"


def ipadapter_object_info() -> dict[str, dict[str, Any]]:
    """The recorded ComfyUI_IPAdapter_plus ``/object_info``: node id -> entry."""
    return json.loads(IPADAPTER_OBJECT_INFO_PATH.read_text(encoding="utf-8"))
