"""The UI (graph) workflow format as the ComfyUI frontend saves it, and the issues found in one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
# Nodes that live only in the frontend: they never reach the server.
FRONTEND_ONLY_TYPES = NOTE_TYPES | {"Reroute", "PrimitiveNode"}
MUTED = 2  # LiteGraph's NEVER: the node and what flows out of it are left out
BYPASSED = 4  # ComfyUI's bypass: inputs are passed through to outputs of the same type

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Issue:
    """A problem in a workflow, naming the node (id, type, title) and input where there is one."""

    message: str
    node: str | None = None  # a node label, see node_label()
    input: str | None = None
    severity: str = ERROR

    def __str__(self) -> str:
        where = self.node or "workflow"
        if self.input is not None:
            where += f', input "{self.input}"'
        return f"{self.severity}: {where}: {self.message}"


class WorkflowError(ValueError):
    """A workflow that cannot be converted or that failed validation; `issues` says why."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


@dataclass(frozen=True)
class Link:
    """One entry of a workflow's `links`: [id, origin node, origin slot, target node, target slot, type]."""

    id: int
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: str


def parse_link(entry: Any) -> Link:
    """A link in the list form (workflow version 0.4) or the object form (version 1)."""
    if isinstance(entry, Mapping):
        fields = [entry.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
    else:
        fields = list(entry) + [None] * (6 - len(entry))
    link_id, origin_id, origin_slot, target_id, target_slot, kind = fields[:6]
    return Link(int(link_id), int(origin_id), int(origin_slot), int(target_id), int(target_slot), str(kind or "*"))


def node_label(node: Mapping[str, Any], display_name: str | None = None) -> str:
    """`node 7 "TCD Sampler" (TrajectoryConsistencySampler)`: id, title (or display name) and type."""
    node_type = str(node.get("type", "?"))
    title = node.get("title") or display_name or node_type
    return f'node {node.get("id")} "{title}" ({node_type})'


class UIGraph:
    """A UI-format workflow: its nodes by id and its links by id."""

    def __init__(self, workflow: Mapping[str, Any]) -> None:
        if (
            isinstance(workflow, Mapping)
            and workflow
            and all(isinstance(v, Mapping) and "class_type" in v for v in workflow.values())
        ):
            raise WorkflowError([Issue("this is an API-format prompt, not a UI (graph) workflow")])
        if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
            raise WorkflowError([Issue("not a UI-format workflow: it has no `nodes` list")])
        self.workflow = workflow
        self.nodes: dict[int, Mapping[str, Any]] = {}
        self.links: dict[int, Link] = {}
        self.issues: list[Issue] = []
        for node in workflow["nodes"]:
            try:
                node_id = int(node["id"])
            except (KeyError, TypeError, ValueError):
                self.issues.append(Issue(f"a node has no usable id: {dict(node)!r:.120}"))
                continue
            if node_id in self.nodes:
                self.issues.append(Issue(f"two nodes share the id {node_id}", node_label(node)))
            self.nodes[node_id] = node
        for entry in workflow.get("links") or []:
            try:
                link = parse_link(entry)
            except (TypeError, ValueError):
                self.issues.append(Issue(f"a link is malformed: {entry!r:.120}"))
                continue
            self.links[link.id] = link

    def input_link(self, node: Mapping[str, Any], index: int) -> int | None:
        """The link id into a node's input slot, or None."""
        entries = list(node.get("inputs") or [])
        if not 0 <= index < len(entries):
            return None
        link = entries[index].get("link")
        return None if link is None else int(link)

    def models(self) -> list[Mapping[str, Any]]:
        """The workflow's `models` list: files to download ({name, url, directory})."""
        return list(self.workflow.get("models") or [])
