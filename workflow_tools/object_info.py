"""Node schemas from ComfyUI's /object_info: reading, merging, and the input specs a workflow needs."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Input types the frontend shows as widgets (their values live in a node's widgets_values).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Values of the extra widget the frontend adds after a seed-like widget (control_after_generate).
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
# Values of the upload button the frontend adds after the required widgets of a file loader.
UPLOAD_VALUES = frozenset({"image", "video", "audio"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "upload")
LEGACY_SEED_NAMES = frozenset({"seed", "noise_seed"})


@dataclass(frozen=True)
class InputSpec:
    """One input of a node: its name, type ("INT", "COMBO", "MODEL", "*", ...) and options."""

    name: str
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: tuple[Any, ...] | None = None  # the COMBO list, None for other types
    required: bool = True

    @property
    def is_widget(self) -> bool:
        """True when the frontend gives this input a widget (so a slot in widgets_values)."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control_widget(self) -> bool:
        """True when the frontend adds a control_after_generate widget (fixed/randomize/...) after it.

        Old servers did not send the flag; their frontend added the widget to INTs named seed/noise_seed.
        """
        if self.options.get("control_after_generate", False):
            return True
        return self.type == "INT" and self.name in LEGACY_SEED_NAMES

    @property
    def has_upload_widget(self) -> bool:
        """True when the frontend adds an upload button for this input (LoadImage and the like)."""
        return any(self.options.get(key) is True for key in UPLOAD_OPTIONS)

    @property
    def multiselect(self) -> bool:
        return bool(self.options.get("multiselect", False))


def parse_input_spec(name: str, spec: Any, required: bool = True) -> InputSpec:
    """An /object_info input entry (`["INT", {...}]`, `[[choices], {...}]`, `["COMBO", {"options": [...]}]`)."""
    if isinstance(spec, str):  # tolerated: a bare type name
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not spec:
        return InputSpec(name, "*", {}, None, required)
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if isinstance(kind, (list, tuple)):
        return InputSpec(name, "COMBO", options, tuple(kind), required)
    kind = str(kind)
    if kind == "COMBO":
        return InputSpec(name, "COMBO", options, tuple(options.get("options", ())), required)
    return InputSpec(name, kind, options, None, required)


@dataclass(frozen=True)
class NodeSchema:
    """A node type as /object_info describes it."""

    type: str
    display_name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    output_names: tuple[str, ...]
    output_node: bool

    @property
    def widget_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(spec for spec in self.inputs if spec.is_widget)

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None


def _output_type(kind: Any) -> str:
    """An /object_info output type; a list of choices is a COMBO output."""
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def node_schema(node_type: str, entry: Mapping[str, Any]) -> NodeSchema:
    """Parses one /object_info entry; inputs come in the order the frontend makes widgets."""
    groups = entry.get("input", {}) or {}
    order = entry.get("input_order", {}) or {}
    inputs: list[InputSpec] = []
    for group in ("required", "optional"):
        specs = groups.get(group, {}) or {}
        names = [n for n in order.get(group, []) if n in specs]
        names += [n for n in specs if n not in names]
        inputs += [parse_input_spec(n, specs[n], required=group == "required") for n in names]
    outputs = tuple(_output_type(kind) for kind in entry.get("output", []) or [])
    names = tuple(entry.get("output_name") or outputs)
    return NodeSchema(
        type=node_type,
        display_name=str(entry.get("display_name") or node_type),
        inputs=tuple(inputs),
        outputs=outputs,
        output_names=names,
        output_node=bool(entry.get("output_node", False)),
    )


class ObjectInfo:
    """Several /object_info dicts merged (a later source wins for a node type it also defines)."""

    def __init__(self, *sources: Mapping[str, Any]) -> None:
        self.raw: dict[str, Any] = {}
        for source in sources:
            self.raw.update(source)
        self._schemas: dict[str, NodeSchema] = {}

    def __contains__(self, node_type: object) -> bool:
        return node_type in self.raw

    def __len__(self) -> int:
        return len(self.raw)

    def get(self, node_type: str) -> NodeSchema | None:
        """The schema of a node type, or None when no source defines it."""
        if node_type not in self.raw:
            return None
        if node_type not in self._schemas:
            self._schemas[node_type] = node_schema(node_type, self.raw[node_type])
        return self._schemas[node_type]


def object_info_url(source: str) -> str:
    """A server address as the URL of its /object_info (`http://host:8188` -> `.../object_info`)."""
    parts = urllib.parse.urlsplit(source)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/object_info"))
    return source


def load_object_info(source: str | Path, timeout: float = 60.0) -> dict[str, Any]:
    """Reads /object_info from a JSON file or from a server (an http(s) URL)."""
    text = str(source)
    if text.startswith(("http://", "https://")):
        url = object_info_url(text)
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
            data = json.loads(response.read())
    else:
        data = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{text} does not hold an /object_info dict (node type -> schema)")
    return data


def merged_object_info(sources: Iterable[str | Path | Mapping[str, Any]]) -> ObjectInfo:
    """One ObjectInfo from files, URLs and dicts, in order."""
    return ObjectInfo(*(s if isinstance(s, Mapping) else load_object_info(s) for s in sources))
