"""The example workflows in ComfyUI's real web UI, headless (Debian's chromium driven by Playwright).

One real ComfyUI server with this pack loaded and one chromium tab on its web UI serve the whole
module. Each workflows/*.json is opened through the UI's own file input, as "Open" does. The
test fails when the frontend reports a missing node type by any of its signals: the list it
hands to extensions' afterConfigureGraph(missing), LiteGraph.registered_node_types, nodes drawn
as error placeholders, and the "This workflow has missing nodes" dialog. It also fails on
workflow validation toasts (zod schema, links fixed) and page errors. A good load leaves a
1600x1000 screenshot of the graph, zoomed to fit, in docs/screenshots/<workflow stem>.png
(committed: the README shows them). A negative control opens a copy of a workflow with one of
this pack's nodes renamed to an unknown type, which every signal must report.

ComfyUI_IPAdapter_plus stand-in: that community pack cannot be installed on the test machines,
so this module's server also loads tests/fixture_packs/ipadapter_schemas, a test-only pack whose
node classes are generated from the real pack's recorded /object_info
(shared/fixtures/ipadapter_plus_object_info.json): the same node ids, display names, categories,
inputs (in order) and outputs. It is loaded under the real pack's folder name, so its
/object_info equals the recording and the UI builds and draws the IP-Adapter workflow (source
badges included) as with the real pack. The stand-in has no behaviour: executing one of its
nodes raises NotImplementedError. It shows that the workflow needs nothing beyond that pack and
this one, not that it runs.

Chromium or Playwright missing, or no workflow files, fail these tests; they never skip.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.browser import ComfyUIPage, seed_ui_settings
from devkit.host import REPO_ROOT, ComfyServer

WORKFLOW_FILES = sorted((REPO_ROOT / "workflows").glob("*.json"))
SCREENSHOTS_DIR = REPO_ROOT / "docs" / "screenshots"
IPADAPTER_STAND_IN = Path(__file__).resolve().parent / "fixture_packs" / "ipadapter_schemas"
IPADAPTER_PACK = "ComfyUI_IPAdapter_plus"  # the real pack's folder: python_module custom_nodes.<this>
PACK_NODE_TYPES = ["TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader"]
UNKNOWN_TYPE = "TCDNegativeControlNoSuchNode"


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """ComfyUI with this pack and the IP-Adapter stand-in; no models (the UI needs none)."""
    server = ComfyServer(
        work_dir=tmp_path_factory.mktemp("browser-host"), extra_packs={IPADAPTER_PACK: IPADAPTER_STAND_IN}
    )
    seed_ui_settings(server.user_dir)
    server.start()
    try:
        imports = server.custom_node_imports()
        for link in (server.pack_link, server.custom_nodes_dir / IPADAPTER_PACK):
            assert imports.get(str(link)), f"ComfyUI did not import {link.name}\n{server.log_tail()}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ui(ui_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUIPage]:
    """A fresh headless chromium profile on the server's web UI, ready, with the missing-node probe."""
    with ComfyUIPage(ui_server.url, tmp_path_factory.mktemp("chromium-profile")) as page:
        yield page


def test_ipadapter_stand_in_serves_the_recorded_schemas(ui_server: ComfyServer) -> None:
    from fixture_packs.ipadapter_schemas import OBJECT_INFO

    served = ui_server.object_info()
    for name, recorded in OBJECT_INFO.items():
        assert served[name] == recorded, name


@pytest.mark.parametrize(
    "workflow", WORKFLOW_FILES or [pytest.param(None, id="no-workflows")], ids=lambda path: path.stem
)
def test_workflow_opens_in_the_ui_without_missing_nodes(ui: ComfyUIPage, workflow: Path | None, tmp_path: Path) -> None:
    assert workflow is not None, f"{REPO_ROOT / 'workflows'} holds no *.json: there is nothing to open"
    load = ui.load_workflow(workflow)
    problems = load.problems()
    if problems:
        shot = ui.screenshot(tmp_path / f"{workflow.stem}.png")
        pytest.fail(f"{workflow.name} in the UI (screenshot {shot}):\n" + "\n".join(problems))
    assert load.name == workflow.stem
    assert ui.registered(PACK_NODE_TYPES) == dict.fromkeys(PACK_NODE_TYPES, True)
    ui.screenshot(SCREENSHOTS_DIR / f"{workflow.stem}.png")


def test_negative_control_an_unknown_node_type_is_reported_missing(ui: ComfyUIPage, tmp_path: Path) -> None:
    assert WORKFLOW_FILES, f"{REPO_ROOT / 'workflows'} holds no *.json to copy"
    workflow = json.loads(WORKFLOW_FILES[0].read_text(encoding="utf-8"))
    node = next((n for n in workflow["nodes"] if n.get("type") in PACK_NODE_TYPES), workflow["nodes"][0])
    node["type"] = UNKNOWN_TYPE  # as if this pack were not installed
    copy = tmp_path / f"negative-control-{WORKFLOW_FILES[0].stem}.json"
    copy.write_text(json.dumps(workflow))
    load = ui.load_workflow(copy, dialog_timeout=10.0)
    assert load.missing_hook == [UNKNOWN_TYPE]
    assert load.unregistered == [UNKNOWN_TYPE]
    assert load.errored == [UNKNOWN_TYPE]
    assert load.missing_dialog == [UNKNOWN_TYPE]
    assert load.problems() and UNKNOWN_TYPE in load.problems()[0]
