"""ComfyUI's real web UI, headless: Debian's chromium driven by Playwright (shared/docs/browser.md).

    seed_ui_settings(server.user_dir)                 # before the server starts
    with ComfyUIPage(server.url, profile_dir) as ui:  # opens the UI, waits until it is ready
        load = ui.load_workflow(path)                 # through the UI's own file input
        assert not load.problems(), load
        ui.screenshot(png_path)

Playwright only drives the system chromium (`/usr/bin/chromium`, or $TCD_CHROMIUM);
`playwright install` is never needed. dev/provision.sh installs both.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

READY = "() => Boolean(window.app?.graph && window.app.extensionManager?.workflow?.activeWorkflow)"

# Installed once the UI is ready. The afterConfigureGraph hook receives the frontend's own list
# of node types it could not create (subgraphs included); toasts record what the workflow
# validation and link fixing report.
INSTALL_PROBE = """() => {
  const probe = { loads: 0, missing: [], toasts: [] };
  window.__tcdProbe = probe;
  app.extensionManager.toast.$onAction(({ name, args }) => {
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
  errored: app.graph.nodes.filter((n) => n.has_errors).map((n) => n.type),
  nodeCount: app.graph.nodes.length,
  name: app.extensionManager.workflow.activeWorkflow?.filename ?? null,
})"""

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
MISSING_NODES_DIALOG = '[aria-labelledby="global-missing-nodes"]'
MISSING_NODES_ITEMS = MISSING_NODES_DIALOG + " .comfy-missing-nodes span"


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
    errored: list[str]  # types of loaded nodes with has_errors (placeholders for missing types)
    missing_dialog: list[str]  # types listed by the "This workflow has missing nodes" dialog
    toasts: list[dict[str, str]] = field(default_factory=list)  # validation alerts, "links fixed", ...
    page_errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page

    @property
    def missing(self) -> set[str]:
        """Every type that any of the signals reported missing."""
        return {*self.missing_hook, *self.unregistered, *self.errored, *self.missing_dialog}

    def problems(self) -> list[str]:
        """Everything wrong with the load; empty for a workflow the UI took as it is."""
        found = []
        if self.missing:
            found.append(
                f"missing node types {sorted(self.missing)} (hook {self.missing_hook}, unregistered "
                f"{self.unregistered}, has_errors {self.errored}, dialog {self.missing_dialog})"
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

    def __init__(self, url: str, profile_dir: Path, *, ready_timeout: float = 60.0) -> None:
        self.url = url
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

    def load_workflow(self, path: Path, timeout: float = 30.0, dialog_timeout: float = 0.0) -> WorkflowLoad:
        """Loads a workflow file through the UI's file input (as "Open" does) and reports what the UI
        made of it. The graph is then zoomed to fit, and other open workflows are closed, so that a
        screenshot does not depend on what was loaded before. dialog_timeout: how long to wait for
        the missing-nodes dialog (it is read at once by default)."""
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
        self.dismiss_dialogs()
        loads = self.page.evaluate("() => { window.__tcdProbe.toasts = []; return window.__tcdProbe.loads; }")
        del self.page_errors[:]
        self.page.set_input_files("#comfy-file-input", str(path))
        self.page.wait_for_function(f"() => window.__tcdProbe.loads > {loads}", timeout=timeout * 1000)
        self.page.evaluate(CLOSE_OTHER_WORKFLOWS)
        self.page.evaluate(FIT_GRAPH, FIT_MARGINS)
        self.page.evaluate(NEXT_FRAMES)
        if dialog_timeout:
            self.page.locator(MISSING_NODES_ITEMS).first.wait_for(timeout=dialog_timeout * 1000)
        graph = self.page.evaluate(LOADED_GRAPH, sorted(workflow_node_types(workflow)))
        probe = self.page.evaluate("() => window.__tcdProbe")
        return WorkflowLoad(
            name=graph["name"],
            node_count=len(workflow.get("nodes") or []),
            loaded_node_count=graph["nodeCount"],
            missing_hook=probe["missing"],
            unregistered=graph["unregistered"],
            errored=graph["errored"],
            missing_dialog=self.page.locator(MISSING_NODES_ITEMS).all_inner_texts(),
            toasts=probe["toasts"],
            page_errors=list(self.page_errors),
        )

    def screenshot(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path
