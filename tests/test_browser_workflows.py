"""The example workflows in ComfyUI's real web UI, headless (Debian's chromium driven by Playwright), on two
frontends: the one the host pins (its comfyui-frontend-package) and the newest on the package index,
served with ComfyUI's own --front-end-root (installed once into .dev/frontends/<version>).

Per frontend, one real ComfyUI server with this pack and the stand-in packs loaded, and one chromium
tab on its web UI. Each workflows/*.json is opened through the UI's own file input, as "Open" does,
and must load with no missing node type by either of the frontend's own reports: the list it hands to
extensions' afterConfigureGraph(missing), and LiteGraph.registered_node_types; nor with workflow
validation toasts (schema, links fixed) or page errors. Then:
- workflow_tools' UI->API conversion must equal the frontend's own app.graphToPrompt() (what "Queue"
  posts), node for node: class_type and inputs;
- the frontend's own serialization (app.graph.serialize(), what "Save" writes) must keep every node,
  link, widget value and the models list of the file.
A negative control opens a copy with one of this pack's nodes renamed to an unknown type, which both
reports must name. A good load leaves a screenshot in the test's temporary folder (refreshing the
committed docs/screenshots is `python -m devkit.refresh_workflows --screenshots`).

Stand-in packs: ComfyUI_IPAdapter_plus and ComfyUI-AnimateDiff-Evolved cannot be installed on the
test machines, so the server also loads tests/fixture_packs/ipadapter_schemas and
tests/fixture_packs/animatediff_schemas, test-only packs whose node classes are generated from those
packs' /object_info entries: the same node ids, display names, categories, inputs (in order) and
outputs, under the real packs' folder names. Executing one of their nodes raises NotImplementedError:
they show that a workflow needs nothing beyond that pack and this one, not that it runs.

Chromium, Playwright or the newest frontend missing, or no workflow files, fail these tests; they never skip.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.browser import (
    PACK_NODE_TYPES,
    STAND_IN_PACKS,
    ComfyUIPage,
    Frontend,
    newest_frontend,
    pinned_frontend,
    ui_server,
)
from devkit.host import REPO_ROOT, ComfyServer
from workflow_tools import ObjectInfo, to_api

WORKFLOW_FILES = sorted((REPO_ROOT / "workflows").glob("*.json"))
UNKNOWN_TYPE = "TCDNegativeControlNoSuchNode"
FRONTENDS = {"pinned": pinned_frontend, "newest": newest_frontend}


def stand_in_object_info(pack: str) -> dict[str, Any]:
    """The /object_info entries a stand-in pack was made from (its OBJECT_INFO)."""
    return importlib.import_module(f"fixture_packs.{STAND_IN_PACKS[pack].name}").OBJECT_INFO


@pytest.fixture(scope="module", params=list(FRONTENDS))
def frontend(request: pytest.FixtureRequest) -> Frontend:
    found = FRONTENDS[request.param]()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown in the test output, with -q too
        print(f"\n[browser] {found.label} frontend: comfyui-frontend-package {found.version}", flush=True)
    return found


@pytest.fixture(scope="module")
def ui_host(frontend: Frontend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """ComfyUI with this pack and the stand-in packs, serving `frontend`; no models (the UI needs none)."""
    server = ui_server(tmp_path_factory.mktemp(f"browser-host-{frontend.label}"), frontend)
    server.start()
    try:
        imports = server.custom_node_imports()
        for link in [server.pack_link, *(server.custom_nodes_dir / name for name in STAND_IN_PACKS)]:
            assert imports.get(str(link)), f"ComfyUI did not import {link.name}\n{server.log_tail()}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ui(ui_host: ComfyServer, frontend: Frontend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyUIPage]:
    """A fresh headless chromium profile on the server's web UI, ready, with the missing-node probe."""
    with ComfyUIPage(ui_host.url, tmp_path_factory.mktemp(f"chromium-{frontend.label}")) as page:
        assert page.frontend_version() == frontend.version, "the server serves another frontend than asked for"
        yield page


@pytest.fixture(scope="module")
def info(ui_host: ComfyServer) -> ObjectInfo:
    return ObjectInfo(ui_host.object_info())


def test_stand_in_packs_serve_the_recorded_schemas(ui_host: ComfyServer) -> None:
    served = ui_host.object_info()
    for pack in STAND_IN_PACKS:
        for name, recorded in stand_in_object_info(pack).items():
            # Newer hosts add keys of their own (search_aliases, ...): compare what was recorded.
            assert {key: served[name].get(key) for key in recorded} == recorded, (pack, name)


def open_cleanly(ui: ComfyUIPage, workflow: Path, tmp_path: Path) -> None:
    load = ui.load_workflow(workflow)
    problems = load.problems()
    if problems:
        shot = ui.screenshot(tmp_path / f"{workflow.stem}.png")
        pytest.fail(f"{workflow.name} in the UI (screenshot {shot}):\n" + "\n".join(problems))
    assert load.name == workflow.stem


workflows = pytest.mark.parametrize(
    "workflow", WORKFLOW_FILES or [pytest.param(None, id="no-workflows")], ids=lambda path: path.stem
)


@workflows
def test_workflow_opens_in_the_ui_without_missing_nodes(ui: ComfyUIPage, workflow: Path | None, tmp_path: Path) -> None:
    assert workflow is not None, f"{REPO_ROOT / 'workflows'} holds no *.json: there is nothing to open"
    open_cleanly(ui, workflow, tmp_path)
    assert ui.registered(list(PACK_NODE_TYPES)) == dict.fromkeys(PACK_NODE_TYPES, True)
    ui.screenshot(tmp_path / f"{workflow.stem}.png")


def prompt_nodes(prompt: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What ComfyUI executes of an API prompt: class_type and inputs per node (_meta is for display)."""
    return {node_id: {"class_type": e["class_type"], "inputs": e["inputs"]} for node_id, e in prompt.items()}


@workflows
def test_workflow_tools_converts_as_the_frontend_does(
    ui: ComfyUIPage, info: ObjectInfo, workflow: Path | None, tmp_path: Path
) -> None:
    assert workflow is not None, f"{REPO_ROOT / 'workflows'} holds no *.json"
    open_cleanly(ui, workflow, tmp_path)
    ours = prompt_nodes(to_api(json.loads(workflow.read_text(encoding="utf-8")), info))
    theirs = prompt_nodes(ui.graph_to_prompt())
    assert ours.keys() == theirs.keys()
    for node_id in ours:
        assert ours[node_id] == theirs[node_id], (workflow.stem, node_id)


def saved_content(workflow: dict[str, Any], widget_counts: dict[int, int] | None = None) -> dict[str, Any]:
    """The parts of a UI workflow that must survive a save: nodes (type, mode, title, widget values,
    linked inputs, model files) and links. Layout and per-version extras are left out. widget_counts
    keeps only the first values of each node: those of the widgets a file was saved with (a node may
    have gained inputs since; the frontend appends their defaults)."""
    counts = widget_counts or {}
    nodes = {
        node["id"]: {
            "type": node["type"],
            "mode": node.get("mode", 0),
            "title": node.get("title"),
            "widgets_values": (node.get("widgets_values") or [])[: counts.get(node["id"])],
            "inputs": {i["name"]: i.get("link") for i in node.get("inputs") or [] if i.get("link") is not None},
            "models": (node.get("properties") or {}).get("models"),
        }
        for node in workflow["nodes"]
    }
    return {"nodes": nodes, "links": sorted(map(tuple, workflow["links"]))}


@workflows
def test_the_frontend_saves_the_workflow_as_committed(ui: ComfyUIPage, workflow: Path | None, tmp_path: Path) -> None:
    """The frontend's own save keeps all of the file (the top-level models list aside: the frontend
    does not write it; devkit.refresh_workflows keeps the file's)."""
    assert workflow is not None, f"{REPO_ROOT / 'workflows'} holds no *.json"
    open_cleanly(ui, workflow, tmp_path)
    committed = json.loads(workflow.read_text(encoding="utf-8"))
    saved = ui.serialize()
    counts = {node["id"]: len(node.get("widgets_values") or []) for node in committed["nodes"]}
    # A newer ComfyUI may make a linked widget input a plain socket (MakeTrainingDataset's `texts` on 0.30):
    # the frontend then drops that input's saved value, and so must the comparison.
    saved_nodes = {node["id"]: node for node in saved["nodes"]}
    for node in committed["nodes"]:
        dropped = widget_markers(node) - widget_markers(saved_nodes.get(node["id"], node))
        if dropped and node.get("widgets_values"):
            node["widgets_values"] = node["widgets_values"][: -len(dropped)]
            counts[node["id"]] -= len(dropped)
    assert saved_content(saved, counts) == saved_content(committed)


def widget_markers(node: dict[str, Any]) -> set[str]:
    """The node's inputs that the saved file marks as converted widgets."""
    return {entry["name"] for entry in node.get("inputs") or [] if entry.get("widget")}


def test_negative_control_an_unknown_node_type_is_reported_missing(ui: ComfyUIPage, tmp_path: Path) -> None:
    assert WORKFLOW_FILES, f"{REPO_ROOT / 'workflows'} holds no *.json to copy"
    workflow = copy.deepcopy(json.loads(WORKFLOW_FILES[0].read_text(encoding="utf-8")))
    node = next((n for n in workflow["nodes"] if n.get("type") in PACK_NODE_TYPES), workflow["nodes"][0])
    node["type"] = UNKNOWN_TYPE  # as if this pack were not installed
    copy_path = tmp_path / f"negative-control-{WORKFLOW_FILES[0].stem}.json"
    copy_path.write_text(json.dumps(workflow))
    load = ui.load_workflow(copy_path)
    assert load.missing_hook == [UNKNOWN_TYPE]
    assert load.unregistered == [UNKNOWN_TYPE]
    assert load.problems() and UNKNOWN_TYPE in load.problems()[0]
