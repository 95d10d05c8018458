"""UI (graph) workflow -> API prompt (`{node_id: {"class_type", "inputs"}}`), as the frontend's "Save (API)".

Widget values are mapped onto input names with /object_info's widget order: the extra
control_after_generate value after seed-like widgets and the upload button value of file
loaders are skipped. Frontend-only nodes are resolved: notes dropped, Reroutes passed through,
a PrimitiveNode's value written into the widget it feeds; muted nodes (mode 2) are left out
and bypassed nodes (mode 4) pass each input on to the consumer of the same type.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .graph import (
    BYPASSED,
    FRONTEND_ONLY_TYPES,
    MUTED,
    NOTE_TYPES,
    Issue,
    Link,
    UIGraph,
    WorkflowError,
    node_label,
)
from .object_info import CONTROL_VALUES, UPLOAD_VALUES, InputSpec, NodeSchema, ObjectInfo


@dataclass(frozen=True)
class LinkedInput:
    """An input fed by another node's output, after Reroutes and bypassed nodes were passed through."""

    name: str
    origin: Mapping[str, Any]  # the UI node the value comes from
    slot: int
    link: Link  # the last hop, into the resolved origin


@dataclass(frozen=True)
class PrimitiveInput:
    """A widget input fed by a frontend PrimitiveNode: its value replaces the widget's."""

    name: str
    primitive: Mapping[str, Any]
    value: Any


@dataclass
class ConvertedNode:
    """One node of the API prompt with what it was made from."""

    ui: Mapping[str, Any]
    schema: NodeSchema
    label: str
    active: bool  # False for muted and bypassed nodes: checked, but left out of the prompt
    inputs: dict[str, Any] = field(default_factory=dict)
    linked: dict[str, LinkedInput] = field(default_factory=dict)
    primitives: dict[str, PrimitiveInput] = field(default_factory=dict)


@dataclass
class Conversion:
    """The API prompt, the converted nodes behind it, and the issues met on the way."""

    prompt: dict[str, dict[str, Any]]
    nodes: dict[str, ConvertedNode]
    issues: list[Issue]
    graph: UIGraph


def _is_one_of(values: list[Any], index: int, words: frozenset[str]) -> bool:
    return index < len(values) and isinstance(values[index], str) and values[index] in words


def _widget_default(spec: InputSpec) -> Any:
    """The value the frontend gives a widget the saved workflow has no value for: its default, else a
    single-choice combo's first choice (_MISSING when there is neither)."""
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO" and spec.choices and not spec.multiselect:
        return spec.choices[0]
    return _MISSING


_MISSING = object()


def map_widget_values(node: Mapping[str, Any], schema: NodeSchema, label: str) -> tuple[dict[str, Any], list[Issue]]:
    """A node's widgets_values as {input name: value}, in the frontend's widget order. Widgets the
    workflow holds no value for (inputs added to a node after it was saved) get what the frontend
    gives them on loading: their default."""
    mapped, issues = _saved_widget_values(node, schema, label)
    for spec in schema.widget_inputs:
        if spec.name not in mapped and (default := _widget_default(spec)) is not _MISSING:
            mapped[spec.name] = default
    return mapped, issues


def _saved_widget_values(node: Mapping[str, Any], schema: NodeSchema, label: str) -> tuple[dict[str, Any], list[Issue]]:
    values = node.get("widgets_values")
    if values is None:
        return {}, []
    widgets = schema.widget_inputs
    if isinstance(values, Mapping):  # some packs save widgets_values by name
        return {spec.name: values[spec.name] for spec in widgets if spec.name in values}, []
    values = list(values)
    mapped: dict[str, Any] = {}
    index = 0
    upload_pending = False
    last_required = max((i for i, spec in enumerate(widgets) if spec.required), default=-1)
    for position, spec in enumerate(widgets):
        if index >= len(values):
            break
        mapped[spec.name] = values[index]
        index += 1
        if spec.has_control_widget and _is_one_of(values, index, CONTROL_VALUES):
            index += 1
        upload_pending = upload_pending or spec.has_upload_widget
        # The frontend appends the upload button after the last required input's widget.
        if upload_pending and position == last_required and _is_one_of(values, index, UPLOAD_VALUES):
            index += 1
            upload_pending = False
    issues = []
    if index < len(values) and len(values) - index <= len(_saved_widgets_now_sockets(node, schema)):
        # Saved when these inputs were widgets (linked, so their values were never used); this version makes
        # them plain sockets. The frontend drops their values silently on loading; so does the conversion.
        index = len(values)
    if index < len(values):
        names = ", ".join(spec.name for spec in widgets) or "none"
        issues.append(
            Issue(
                f"has {len(values)} widget values but its widgets ({names}) take {index}: the extra values "
                f"{values[index:]!r} mean this workflow was saved for another version of the node",
                label,
            )
        )
    return mapped, issues


def _saved_widgets_now_sockets(node: Mapping[str, Any], schema: NodeSchema) -> list[str]:
    """Inputs the saved node marks as converted widgets (``"widget": {...}``) that this version of the
    node declares as sockets only (e.g. a STRING input that gained ``forceInput``)."""
    widget_names = {spec.name for spec in schema.widget_inputs}
    names = []
    for entry in node.get("inputs") or []:
        name = (entry.get("widget") or {}).get("name")
        if name and name not in widget_names and schema.input(name) is not None:
            names.append(name)
    return names


def _input_type(node: Mapping[str, Any], index: int, schema: NodeSchema | None) -> str:
    """The type of a node's input slot: as the UI recorded it, else from the schema."""
    entries = list(node.get("inputs") or [])
    if not 0 <= index < len(entries):
        return ""
    kind = entries[index].get("type")
    if kind is None and schema is not None:
        spec = schema.input(str(entries[index].get("name")))
        kind = spec.type if spec is not None else None
    return str(kind or "")


def _api_value(value: Any) -> Any:
    """A widget value as the frontend writes it: lists are wrapped so they cannot pass for links."""
    return {"__value__": value} if isinstance(value, list) else value


class _Converter:
    """One conversion: walks the UI graph once, collecting the prompt and the issues."""

    def __init__(self, workflow: Mapping[str, Any], info: ObjectInfo) -> None:
        self.graph = UIGraph(workflow)
        self.info = info
        self.issues: list[Issue] = list(self.graph.issues)

    def label(self, node: Mapping[str, Any]) -> str:
        """The node's label for messages, with its display name when it has no title."""
        schema = self.info.get(str(node.get("type")))
        return node_label(node, schema.display_name if schema else None)

    def resolve(self, link_id: int, want_type: str, target: str, name: str) -> LinkedInput | PrimitiveInput | None:
        """Follows a link back through Reroutes and bypassed nodes to what feeds the input."""
        seen: set[int] = set()
        while True:
            if link_id in seen:
                self.issues.append(Issue(f"link {link_id} loops through Reroute or bypassed nodes", target, name))
                return None
            seen.add(link_id)
            link = self.graph.links.get(link_id)
            if link is None:
                self.issues.append(Issue(f"names link {link_id}, which is not in the workflow's links", target, name))
                return None
            origin = self.graph.nodes.get(link.origin_id)
            if origin is None:
                self.issues.append(
                    Issue(f"link {link_id} comes from node {link.origin_id}, which does not exist", target, name)
                )
                return None
            origin_type = origin.get("type")
            if origin_type == "Reroute":
                next_link = self.graph.input_link(origin, 0)
                if next_link is None:
                    return None  # an unconnected Reroute feeds nothing
                link_id = next_link
                continue
            if origin_type == "PrimitiveNode":
                values = origin.get("widgets_values") or []
                if not values:
                    self.issues.append(Issue("the PrimitiveNode feeding it holds no value", target, name))
                    return None
                return PrimitiveInput(name, origin, values[0])
            if origin_type in NOTE_TYPES or origin.get("mode") == MUTED:
                return None
            if origin.get("mode") == BYPASSED:
                next_link = self._bypass(origin, link.origin_slot, want_type)
                if next_link is None:
                    return None
                link_id = next_link
                continue
            return LinkedInput(name, origin, link.origin_slot, link)

    def _bypass(self, node: Mapping[str, Any], slot: int, want_type: str) -> int | None:
        """The link into a bypassed node that the frontend passes on: the input at the output's
        index if its type matches, else the first input of the wanted type."""
        schema = self.info.get(str(node.get("type")))
        count = len(node.get("inputs") or [])
        for index in [slot, *range(count)]:
            if 0 <= index < count and _input_type(node, index, schema).upper() == want_type.upper():
                return self.graph.input_link(node, index)
        return None

    def convert_node(self, node: Mapping[str, Any], schema: NodeSchema) -> ConvertedNode:
        """A node's API inputs: widget values by name, then links (and PrimitiveNode values) over them."""
        label = self.label(node)
        active = node.get("mode") not in (MUTED, BYPASSED)
        converted = ConvertedNode(node, schema, label, active)
        values, issues = map_widget_values(node, schema, label)
        self.issues += issues
        converted.inputs = {name: _api_value(value) for name, value in values.items()}
        for entry in node.get("inputs") or []:
            name = str(entry.get("name"))
            spec: InputSpec | None = schema.input(name)
            link_id = entry.get("link")
            if spec is None:
                if link_id is not None:
                    known = ", ".join(s.name for s in schema.inputs) or "none"
                    self.issues.append(Issue(f"the node has no input of this name (its inputs: {known})", label, name))
                continue
            if link_id is None:
                continue
            link = self.graph.links.get(int(link_id))
            if link is not None and link.target_id != int(node["id"]):
                self.issues.append(
                    Issue(f"link {link_id} is recorded as going to node {link.target_id}, not here", label, name)
                )
            want = str(entry.get("type") or spec.type)
            resolved = self.resolve(int(link_id), want, label, name)
            if isinstance(resolved, PrimitiveInput):
                converted.primitives[name] = resolved
                converted.inputs[name] = _api_value(resolved.value)
            elif isinstance(resolved, LinkedInput):
                converted.linked[name] = resolved
                converted.inputs[name] = [str(resolved.origin["id"]), resolved.slot]
        return converted

    def unknown_type_message(self, node_type: str) -> str:
        """Why a node type is not in /object_info, as far as the workflow tells."""
        subgraphs = (self.graph.workflow.get("definitions") or {}).get("subgraphs") or []
        if any(isinstance(sub, Mapping) and sub.get("id") == node_type for sub in subgraphs):
            return f'node type "{node_type}" is a subgraph: subgraphs are not supported; unpack it in the editor'
        if node_type.startswith(("workflow>", "workflow/")):
            return f'node type "{node_type}" is a group node: group nodes are not supported; convert it to nodes'
        return (
            f'unknown node type "{node_type}": no /object_info source defines it '
            "(is the custom node pack that provides it installed?)"
        )

    def run(self) -> Conversion:
        """Converts every node in id order; frontend-only and unknown nodes stay out of the prompt."""
        prompt: dict[str, dict[str, Any]] = {}
        nodes: dict[str, ConvertedNode] = {}
        for node_id in sorted(self.graph.nodes):
            node = self.graph.nodes[node_id]
            node_type = str(node.get("type"))
            if node_type in FRONTEND_ONLY_TYPES:
                continue
            schema = self.info.get(node_type)
            if schema is None:
                self.issues.append(Issue(self.unknown_type_message(node_type), self.label(node)))
                continue
            converted = self.convert_node(node, schema)
            nodes[str(node_id)] = converted
            if converted.active:
                title = node.get("title") or schema.display_name
                prompt[str(node_id)] = {"inputs": converted.inputs, "class_type": node_type, "_meta": {"title": title}}
        return Conversion(prompt, nodes, self.issues, self.graph)


def convert_workflow(workflow: Mapping[str, Any], info: ObjectInfo) -> Conversion:
    """Converts without judging values: the prompt plus the issues that conversion itself met."""
    return _Converter(workflow, info).run()


def to_api(workflow: Mapping[str, Any], info: ObjectInfo) -> dict[str, dict[str, Any]]:
    """The API prompt of a workflow; raises WorkflowError when the conversion met errors."""
    conversion = convert_workflow(workflow, info)
    if conversion.issues:
        raise WorkflowError(conversion.issues)
    return conversion.prompt
