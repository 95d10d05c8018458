"""ComfyUI's real web UI, headless: Debian's chromium driven by Playwright.

    frontend = newest_frontend()                      # or pinned_frontend(): the one the host pins
    with ui_server(work_dir, frontend) as server:     # this pack plus the stand-in packs
        with ComfyUIPage(server.url, profile_dir) as ui:  # opens the UI, waits until it is ready
            load = ui.load_workflow(path)             # through the UI's own file input
            assert not load.problems(), load
            ui.serialize(); ui.graph_to_prompt()      # what "Save" writes; what "Queue" posts
            ui.screenshot(png_path)

Playwright only drives the system chromium (`/usr/bin/chromium`, or $TCD_CHROMIUM);
`playwright install` is never needed. dev/provision.sh installs both. The newest frontend on the
package index is installed on first use into .dev/frontends/<version> and reused.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.fixtures import IPADAPTER_STAND_IN_PACK
from devkit.host import REPO_ROOT, ComfyServer

CHROMIUM = Path(os.environ.get("TCD_CHROMIUM") or "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1600, "height": 1000}

# Read by the UI from <user-dir>/default/comfy.settings.json when it starts.
UI_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # else the Templates dialog covers the first graph
    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",  # no tab bar: a screenshot names only its own workflow
    "Comfy.Minimap.Visible": False,  # it would cover part of the graph
    "Comfy.Graph.CanvasInfo": False,  # the fps counter in the corner
    "LiteGraph.Canvas.MinFontSizeForLOD": 1,  # keep titles and widget values drawn when a graph is zoomed to fit
    "Comfy.Workflow.ShowMissingModelsWarning": False,  # the test host has none of the workflows' model files
}

PACK_NODE_TYPES = ("TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader")
READY = "() => Boolean(window.app?.graph && window.app.extensionManager?.workflow?.activeWorkflow)"
# The node definitions arrive after the first workflow is shown: wait for these types too.
TYPES_REGISTERED = "(types) => types.every((t) => t in LiteGraph.registered_node_types)"
FRONTEND_VERSION = "() => window.__COMFYUI_FRONTEND_VERSION__ ?? null"

# Installed once the UI is ready. The afterConfigureGraph hook receives the frontend's own list
# of node types it could not create (subgraphs included). Toasts record what the workflow
# validation and link fixing report: the toast store is read from the Pinia registry (up to
# 1.32 extensionManager.toast is that store; later it is a wrapper without $onAction).
INSTALL_PROBE = """() => {
  const probe = { loads: 0, missing: [], toasts: [] };
  window.__tcdProbe = probe;
  const toastStore = app.extensionManager._p?._s?.get('toast') ?? app.extensionManager.toast;
  toastStore.$onAction(({ name, args }) => {
    if (name === 'addAlert') probe.toasts.push({ severity: 'warn', summary: 'Alert', detail: String(args[0]) });
    if (name === 'add') {
      const { severity, summary, detail } = args[0] ?? {};
      probe.toasts.push({ severity, summary, detail: String(detail ?? '') });
    }
  });
  app.registerExtension({
    name: 'tcd.test.missingNodeProbe',
    afterConfigureGraph(missing) {
      probe.missing = (missing ?? []).map((t) => (typeof t === 'string' ? t : t.type));
      probe.loads += 1;
    },
  });
}"""

LOADED_GRAPH = """(types) => ({
  unregistered: types.filter((t) => !(t in LiteGraph.registered_node_types)),
  nodeCount: app.graph.nodes.length,
  name: app.extensionManager.workflow.activeWorkflow?.filename ?? null,
})"""
# What "Save" writes (the change tracker's state is app.graph.serialize()), as JSON text: values
# left undefined are dropped as in the saved file, not turned into nulls by Playwright.
SERIALIZE = "() => JSON.stringify(app.graph.serialize())"
# What "Queue" posts to /prompt: the API prompt.
GRAPH_TO_PROMPT = "async () => JSON.stringify((await app.graphToPrompt()).output)"

# Workflows opened earlier stay open (a count on the sidebar): close all but the active one.
CLOSE_OTHER_WORKFLOWS = """async () => {
  const store = app.extensionManager.workflow;
  for (const workflow of [...store.openWorkflows]) if (!store.isActive(workflow)) await store.closeWorkflow(workflow);
}"""
# Zooms the graph (nodes and groups) to fill the canvas between the sidebar, the top bar and the
# zoom controls, at most to 100%. The UI's own "Fit view" leaves a quarter of the window empty.
FIT_GRAPH = """({ left, top, right, bottom }) => {
  const rects = [...app.graph.nodes, ...(app.graph.groups ?? [])].map((item) => item.boundingRect);
  if (!rects.length) return null;
  const x0 = Math.min(...rects.map((r) => r[0]));
  const y0 = Math.min(...rects.map((r) => r[1]));
  const x1 = Math.max(...rects.map((r) => r[0] + r[2]));
  const y1 = Math.max(...rects.map((r) => r[1] + r[3]));
  const width = window.innerWidth - left - right;
  const height = window.innerHeight - top - bottom;
  const ds = app.canvas.ds;
  ds.scale = Math.min(1, width / (x1 - x0), height / (y1 - y0));
  ds.offset[0] = (left + (width - (x1 - x0) * ds.scale) / 2) / ds.scale - x0;
  ds.offset[1] = (top + (height - (y1 - y0) * ds.scale) / 2) / ds.scale - y0;
  app.canvas.setDirty(true, true);
  return ds.scale;
}"""
FIT_MARGINS = {"left": 80, "top": 90, "right": 30, "bottom": 80}  # CSS pixels kept clear of the UI's panels
NEXT_FRAMES = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"


def seed_ui_settings(user_dir: Path, settings: dict[str, Any] = UI_SETTINGS) -> Path:
    """Writes the UI settings for ComfyUI's default user; call it before the server starts."""
    path = Path(user_dir) / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    current = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**current, **settings}, indent=1))
    return path


def workflow_node_types(workflow: dict[str, Any]) -> set[str]:
    """The node types a UI-format workflow uses, subgraph contents included (not the subgraph ids)."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    nodes = list(workflow.get("nodes") or [])
    for subgraph in subgraphs:
        nodes += subgraph.get("nodes") or []
    subgraph_ids = {subgraph.get("id") for subgraph in subgraphs}
    return {node["type"] for node in nodes if node.get("type") and node["type"] not in subgraph_ids}


@dataclass
class WorkflowLoad:
    """What the UI reported while loading one workflow file."""

    name: str | None  # the workflow's name in the UI (the file stem)
    node_count: int  # top-level nodes in the file
    loaded_node_count: int  # top-level nodes in the UI's graph
    missing_hook: list[str]  # afterConfigureGraph(missing): the frontend's own list
    unregistered: list[str]  # used types absent from LiteGraph.registered_node_types
    toasts: list[dict[str, str]] = field(default_factory=list)  # validation alerts, "links fixed", ...
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    @property
    def missing(self) -> set[str]:
        """Every type that the frontend reported missing, by either of its signals."""
        return {*self.missing_hook, *self.unregistered}

    def problems(self) -> list[str]:
        """Everything wrong with the load; empty for a workflow the UI took as it is."""
        found = []
        if self.missing:
            found.append(
                f"missing node types {sorted(self.missing)} "
                f"(afterConfigureGraph {self.missing_hook}, unregistered {self.unregistered})"
            )
        if self.loaded_node_count != self.node_count:
            found.append(f"the UI holds {self.loaded_node_count} nodes, the file {self.node_count}")
        toasts = [toast for toast in self.toasts if toast["severity"] != "info"]
        found += [f"{toast['severity']} toast {toast['summary']!r}: {toast['detail']}" for toast in toasts]
        found += [f"page error: {error}" for error in self.page_errors]
        return found


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError(
            "the browser tests need Playwright for Python (dev/requirements-dev.txt): run them with dev/test, "
            "which installs it. Never `playwright install`: it drives Debian's chromium."
        ) from exc
    return sync_playwright


class ComfyUIPage:
    """One headless chromium tab on a ComfyUI server's web UI, with the missing-node probe installed."""

    def __init__(
        self,
        url: str,
        profile_dir: Path,
        *,
        ready_timeout: float = 60.0,
        wait_for_types: tuple[str, ...] = PACK_NODE_TYPES,
    ) -> None:
        self.url = url
        self.wait_for_types = list(wait_for_types)
        self.profile_dir = Path(profile_dir)
        self.ready_timeout = ready_timeout
        self.page_errors: list[str] = []
        self._playwright = None
        self._context = None
        self.page = None

    def open(self) -> ComfyUIPage:
        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(
                f"no chromium at {CHROMIUM}: dev/provision.sh installs Debian's package "
                "(apt-get install --no-install-recommends chromium), or set $TCD_CHROMIUM"
            )
        self._playwright = _sync_playwright()().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                str(self.profile_dir),
                executable_path=str(CHROMIUM),
                headless=True,
                args=list(CHROMIUM_ARGS),
                viewport=VIEWPORT,
            )
            self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
            self.page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")  # "Nodes 2.0" banner
            self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
            self.page.goto(self.url)
            self.page.wait_for_function(READY, timeout=self.ready_timeout * 1000)
            self.page.wait_for_function(TYPES_REGISTERED, arg=self.wait_for_types, timeout=self.ready_timeout * 1000)
            self.page.evaluate(INSTALL_PROBE)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._context = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def __enter__(self) -> ComfyUIPage:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def registered(self, node_types: list[str]) -> dict[str, bool]:
        """Whether the frontend registered each node type (LiteGraph.registered_node_types)."""
        return self.page.evaluate(
            "(types) => Object.fromEntries(types.map((t) => [t, t in LiteGraph.registered_node_types]))", node_types
        )

    def dismiss_dialogs(self) -> None:
        for _ in range(5):
            if not self.page.locator(".p-dialog").count():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(100)

    def load_workflow(self, path: Path, timeout: float = 30.0) -> WorkflowLoad:
        """Loads a workflow file through the UI's file input (as "Open" does) and reports what the UI
        made of it. The graph is then zoomed to fit, and other open workflows are closed, so that a
        screenshot does not depend on what was loaded before."""
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
        self.dismiss_dialogs()
        loads = self.page.evaluate("() => { window.__tcdProbe.toasts = []; return window.__tcdProbe.loads; }")
        del self.page_errors[:]
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(f"() => window.__tcdProbe.loads > {loads}", timeout=timeout * 1000)
        if any("Unable to find workflow" in str(t) for t in self.page.evaluate("() => window.__tcdProbe.toasts")):
            # Frontend 1.47 (ComfyUI 0.30) now and then reads a re-picked file as holding no workflow; the
            # file is fine (it loads on the next pick), so pick it once more, as a user would.
            loads = self.page.evaluate("() => { window.__tcdProbe.toasts = []; return window.__tcdProbe.loads; }")
            self.page.evaluate("() => { document.querySelector('#comfy-file-input').value = ''; }")
            self.page.set_input_files("#comfy-file-input", str(path))
            self.page.wait_for_function(f"() => window.__tcdProbe.loads > {loads}", timeout=timeout * 1000)
        self.page.evaluate(CLOSE_OTHER_WORKFLOWS)
        self.page.evaluate(FIT_GRAPH, FIT_MARGINS)
        self.page.evaluate(NEXT_FRAMES)
        graph = self.page.evaluate(LOADED_GRAPH, sorted(workflow_node_types(workflow)))
        probe = self.page.evaluate("() => window.__tcdProbe")
        return WorkflowLoad(
            name=graph["name"],
            node_count=len(workflow.get("nodes") or []),
            loaded_node_count=graph["nodeCount"],
            missing_hook=probe["missing"],
            unregistered=graph["unregistered"],
            toasts=probe["toasts"],
            page_errors=list(self.page_errors),
        )

    def frontend_version(self) -> str:
        """The version the loaded frontend reports (window.__COMFYUI_FRONTEND_VERSION__)."""
        return str(self.page.evaluate(FRONTEND_VERSION))

    def serialize(self) -> dict[str, Any]:
        """The loaded graph as the frontend saves it (app.graph.serialize())."""
        return json.loads(self.page.evaluate(SERIALIZE))

    def graph_to_prompt(self) -> dict[str, dict[str, Any]]:
        """The API prompt the frontend posts to /prompt for the loaded graph (app.graphToPrompt())."""
        return json.loads(self.page.evaluate(GRAPH_TO_PROMPT))

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


# --- the frontends and the server the UI tests use ------------------------------------------------

FRONTEND_PACKAGE = "comfyui-frontend-package"
FRONTENDS_DIR = REPO_ROOT / ".dev" / "frontends"  # newest frontend installs: <version>/comfyui_frontend_package
NEWEST_RECHECK_S = 24 * 3600  # how long the newest version found on the index is trusted
ANIMATEDIFF_STAND_IN_PACK = REPO_ROOT / "tests" / "fixture_packs" / "animatediff_schemas"
ANIMATEDIFF_OBJECT_INFO_PATH = ANIMATEDIFF_STAND_IN_PACK / "object_info.json"
# Test-only schema stand-ins for community packs the example workflows use, by the real packs'
# folder names (their /object_info names python_module custom_nodes.<folder>).
STAND_IN_PACKS = {
    "ComfyUI_IPAdapter_plus": IPADAPTER_STAND_IN_PACK,
    "ComfyUI-AnimateDiff-Evolved": ANIMATEDIFF_STAND_IN_PACK,
}


@dataclass(frozen=True)
class Frontend:
    """A ComfyUI frontend build: the host's own (root None) or one served with --front-end-root."""

    label: str  # "pinned" or "newest"
    version: str
    root: Path | None = None  # the static/ folder of a comfyui_frontend_package install

    def server_args(self) -> list[str]:
        return [] if self.root is None else ["--front-end-root", str(self.root)]


def pinned_frontend() -> Frontend:
    """The frontend package installed beside the host (the version its requirements.txt pins)."""
    return Frontend("pinned", importlib.metadata.version(FRONTEND_PACKAGE))


def _pip(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def newest_frontend_version() -> str:
    """The newest comfyui-frontend-package on the package index (asks pip)."""
    result = _pip("index", "versions", FRONTEND_PACKAGE, "--disable-pip-version-check", timeout=120)
    match = re.search(rf"^{re.escape(FRONTEND_PACKAGE)} \(([^)]+)\)", result.stdout, re.MULTILINE)
    if result.returncode or not match:
        raise RuntimeError(f"pip could not list {FRONTEND_PACKAGE} on the index:\n{result.stdout}{result.stderr}")
    return match.group(1)


def install_frontend(version: str, frontends_dir: Path = FRONTENDS_DIR) -> Path:
    """comfyui-frontend-package==version in frontends_dir/<version> (once); returns its static/ folder."""
    target = frontends_dir / version
    static = target / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    partial = frontends_dir / f"{version}.partial"
    result = _pip(
        "install", "--quiet", "--no-deps", "--upgrade", "--target", str(partial), f"{FRONTEND_PACKAGE}=={version}"
    )
    if result.returncode or not (partial / "comfyui_frontend_package" / "static" / "index.html").is_file():
        raise RuntimeError(f"pip could not install {FRONTEND_PACKAGE}=={version}:\n{result.stdout}{result.stderr}")
    partial.rename(target)
    return static


def newest_frontend(frontends_dir: Path = FRONTENDS_DIR) -> Frontend:
    """The newest frontend on the package index, installed on first use under frontends_dir and reused.

    The version found is kept for NEWEST_RECHECK_S in frontends_dir/newest.json; $TCD_NEWEST_FRONTEND
    names a version instead. Never skips: no index and no earlier install is an error.
    """
    frontends_dir.mkdir(parents=True, exist_ok=True)
    stamp = frontends_dir / "newest.json"
    version = os.environ.get("TCD_NEWEST_FRONTEND")
    if not version and stamp.is_file():
        seen = json.loads(stamp.read_text())
        if time.time() - seen["checked"] < NEWEST_RECHECK_S:
            version = seen["version"]
    if not version:
        version = newest_frontend_version()
        stamp.write_text(json.dumps({"version": version, "checked": time.time()}))
    return Frontend("newest", version, install_frontend(version, frontends_dir))


def ui_server(work_dir: Path, frontend: Frontend | None = None, **server_options: Any) -> ComfyServer:
    """A ComfyServer (not started) with this pack, the stand-in packs and the UI settings seeded, serving
    `frontend` (default: the host's own). The UI needs no model files."""
    frontend = frontend or pinned_frontend()
    server = ComfyServer(
        work_dir=work_dir, extra_packs=STAND_IN_PACKS, extra_args=frontend.server_args(), **server_options
    )
    seed_ui_settings(server.user_dir)
    return server
