"""The pack's node contract with users' saved workflows, as pinned in tests/fixtures/node_contract.json.

A UI workflow stores each node's widget values by position (`widgets_values`), and links by input
slot, so a node's id, its input names and order, their types, defaults, ranges and options, and its
outputs are a contract. This module reads that contract from a live ComfyUI's /object_info,
compares two of them, and refreshes the fixture:

    source dev/provision.sh
    $TCD_PYTHON -m devkit.node_contract            # compare the live server with the fixture
    $TCD_PYTHON -m devkit.node_contract --write    # refresh the fixture's "current" contract

The fixture holds two contracts: "released" (what the last release shipped, which users' saved
workflows were made with) and "current" (what the code defines now). The one allowed evolution
between them is growth: new inputs appended at the END of a node's inputs, each with a default
(or optional), new outputs after the old ones, and new nodes; each named in CHANGELOG.md. Anything
else (a reorder, rename, removal, type, default, range or option change) shifts or changes users'
saved values. `--release VERSION` makes the current contract the new baseline when cutting a release.

A combo that lists a model folder's files (a LoRA name) is pinned as `options_from_folder` (the
folder) plus `options` (the fixed choices before the files, e.g. "None"), not by the file names.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.host import PACK_DIR_NAME, REPO_ROOT, ComfyServer
from devkit.model_files import default_models_dir, ensure_test_models

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "node_contract.json"
CHANGELOG = REPO_ROOT / "CHANGELOG.md"
WRITE_COMMAND = "source dev/provision.sh && $TCD_PYTHON -m devkit.node_contract --write"
PACK_MODULE = f"custom_nodes.{PACK_DIR_NAME}"

# Input types the frontend draws as widgets, whose values a saved workflow stores by position.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# The input options that decide a saved value's position or meaning. Others (tooltips, display
# hints, and whatever keys newer hosts add) are free to change.
PINNED_OPTIONS = ("default", "min", "max", "step")
# Flags that add or remove a widget (and so a position in widgets_values): pinned when true.
PINNED_FLAGS = ("forceInput", "control_after_generate", "image_upload", "video_upload", "audio_upload", "upload")


# --- reading a contract from /object_info ----------------------------------------------------------------


def pack_entries(object_info: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The /object_info entries of this pack's nodes (every node its module defines, new ones too)."""
    return {node_id: entry for node_id, entry in object_info.items() if entry.get("python_module") == PACK_MODULE}


def _combo_options(kind: Any, options: Mapping[str, Any]) -> list[Any] | None:
    if isinstance(kind, (list, tuple)):  # the V1 form: [[choices], {...}]
        return list(kind)
    if kind == "COMBO":  # the V3 form: ["COMBO", {"options": [...]}]
        return list(options.get("options", []))
    return None


def _file_list_kind(choices: Sequence[Any], file_lists: Mapping[str, Sequence[str]]) -> tuple[str, list[Any]] | None:
    """(folder, fixed choices before the files) when a combo lists a model folder's files, else None.

    Such a combo's choices depend on the user's folder, so the contract pins the folder, not the names.
    """
    best: tuple[str, list[Any]] | None = None
    for folder, files in file_lists.items():
        if not files or not set(files) <= set(choices):
            continue
        extra = [c for c in choices if c not in set(files)]
        if choices[: len(extra)] != extra:
            continue  # the fixed choices (e.g. "None") must come first
        if best is None or len(files) > len(file_lists[best[0]]):
            best = (folder, extra)
    return best


def input_contract(name: str, spec: Any, required: bool, file_lists: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """What a saved workflow relies on in one /object_info input entry."""
    spec = [spec] if isinstance(spec, str) else list(spec or ["*"])
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    choices = _combo_options(kind, options)
    pinned: dict[str, Any] = {"name": name, "type": "COMBO" if choices is not None else str(kind)}
    if not required:
        pinned["optional"] = True
    for key in PINNED_OPTIONS:
        if key in options:
            pinned[key] = options[key]
    for key in PINNED_FLAGS:
        if options.get(key):
            pinned[key] = True
    if choices is not None:
        files = _file_list_kind(choices, file_lists)
        if files is not None:
            pinned["options_from_folder"], pinned["options"] = files
        else:
            pinned["options"] = choices
        if options.get("multiselect"):
            pinned["multiselect"] = True
    return pinned


def node_contract(entry: Mapping[str, Any], file_lists: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """A node's inputs in the frontend's widget order (required, then optional) and its outputs."""
    groups = entry.get("input", {}) or {}
    order = entry.get("input_order", {}) or {}
    inputs = []
    for group in ("required", "optional"):
        specs = groups.get(group, {}) or {}
        names = [n for n in order.get(group, []) if n in specs] + [n for n in specs if n not in order.get(group, [])]
        inputs += [input_contract(n, specs[n], group == "required", file_lists) for n in names]
    kinds = entry.get("output", []) or []
    names = entry.get("output_name") or kinds
    is_list = entry.get("output_is_list") or [False] * len(kinds)
    outputs = [
        {"type": "COMBO" if isinstance(k, (list, tuple)) else str(k), "name": str(n), "is_list": bool(li)}
        for k, n, li in zip(kinds, names, is_list, strict=False)
    ]
    return {"inputs": inputs, "outputs": outputs}


def contract(object_info: Mapping[str, Any], file_lists: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """{node id: node contract} for this pack's nodes in an /object_info."""
    return {node_id: node_contract(entry, file_lists) for node_id, entry in sorted(pack_entries(object_info).items())}


def server_file_lists(server: ComfyServer) -> dict[str, list[str]]:
    """The files of each model folder, as the server lists them (GET /models/<folder>)."""
    return {folder: server.get_json(f"/models/{folder}") for folder in server.get_json("/models")}


def live_contract(server: ComfyServer) -> dict[str, Any]:
    return contract(server.object_info(), server_file_lists(server))


# --- comparing two contracts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One difference between an old contract and a new one."""

    node: str
    what: str
    allowed: bool  # True for growth that keeps saved workflows as they were
    input: str | None = None

    def __str__(self) -> str:
        where = f"{self.node}.{self.input}" if self.input else self.node
        return f"{where}: {self.what}"


def _is_widget(spec: Mapping[str, Any]) -> bool:
    return spec["type"] in WIDGET_TYPES and not spec.get("forceInput")


def _spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = [k for k in dict.fromkeys([*old, *new]) if k != "name"]
    return [f"{k} {old.get(k, '(none)')!r} -> {new.get(k, '(none)')!r}" for k in keys if old.get(k) != new.get(k)]


def _appended_change(node: str, spec: Mapping[str, Any]) -> Change:
    name = spec["name"]
    if spec.get("optional"):
        return Change(node, "new optional input appended at the end", True, name)
    if _is_widget(spec) and "default" in spec:
        return Change(node, f"new input appended at the end with default {spec['default']!r}", True, name)
    if _is_widget(spec):
        return Change(node, "new required input appended without a default: old workflows lack its value", False, name)
    return Change(node, f"new required {spec['type']} socket: old workflows have nothing connected to it", False, name)


def _input_changes(node: str, old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[Change]:
    old_names = [s["name"] for s in old]
    new_names = [s["name"] for s in new]
    changes: list[Change] = []
    if new_names[: len(old_names)] == old_names:
        for before, after in zip(old, new, strict=False):
            for detail in _spec_changes(before, after):
                changes.append(Change(node, f"changed: {detail}", False, before["name"]))
        changes += [_appended_change(node, spec) for spec in new[len(old) :]]
        return changes
    removed = [n for n in old_names if n not in new_names]
    added = [n for n in new_names if n not in old_names]
    for name in removed:
        position = old_names.index(name)
        twin = new_names[position] if position < len(new_names) and new_names[position] in added else None
        what = f"renamed to {twin!r}" if twin else "removed"
        changes.append(Change(node, f"{what} (was input {position + 1} of {len(old_names)})", False, name))
    kept_old = [n for n in old_names if n in new_names]
    kept_new = [n for n in new_names if n in old_names]
    if kept_old != kept_new:
        changes.append(Change(node, f"inputs reordered: {kept_old} -> {kept_new}", False))
    for name in added:
        if new_names.index(name) < len(old_names):
            changes.append(Change(node, "new input inserted before existing inputs", False, name))
    return changes


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """Every difference from contract `old` to contract `new`, each marked allowed (growth) or not."""
    changes: list[Change] = []
    for node, before in old.items():
        after = new.get(node)
        if after is None:
            changes.append(Change(node, "node removed: saved workflows using it no longer load", False))
            continue
        changes += _input_changes(node, before["inputs"], after["inputs"])
        n = len(before["outputs"])
        if after["outputs"][:n] != before["outputs"]:
            changes.append(Change(node, f"outputs changed: {before['outputs']} -> {after['outputs'][:n]}", False))
        for output in after["outputs"][n:]:
            changes.append(Change(node, f"new output {output['name']} ({output['type']}) after the old ones", True))
    for node in new:
        if node not in old:
            changes.append(Change(node, "new node", True))
    return changes


# --- the fixture and the CHANGELOG ------------------------------------------------------------------------


def read_fixture(path: Path = FIXTURE) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_fixture(data: Mapping[str, Any], path: Path = FIXTURE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def changelog_since(version: str, path: Path = CHANGELOG) -> str:
    """CHANGELOG.md's text above the heading of `version` (what changed after that release)."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^##\s*\[?v?{re.escape(version)}\]?\b", text, flags=re.MULTILINE)
    return text[: match.start()] if match else text


def unannounced(changes: Sequence[Change], changelog_text: str) -> list[Change]:
    """The allowed changes that the CHANGELOG text does not name (an input as `name`, a node by its id)."""
    missing = []
    for change in changes:
        if not change.allowed:
            continue
        needle = f"`{change.input}`" if change.input else change.node
        if change.input is None and change.what.startswith("new output"):
            needle = change.node
        if needle not in changelog_text:
            missing.append(change)
    return missing


def explain(changes: Sequence[Change], against: str) -> str:
    """A failure message: what changed, why it matters to saved workflows, and what to do."""
    breaking = [c for c in changes if not c.allowed]
    growth = [c for c in changes if c.allowed]
    lines = [f"The TCD nodes' /object_info differs from {against}."]
    if breaking:
        lines += [
            "",
            "BREAKING: saved workflows store widget values by position and links by input slot, so these changes "
            "shift or change the values in users' saved workflows:",
            *(f"  - {c}" for c in breaking),
            "New inputs go only at the END of a node's inputs, with a default that keeps the old behaviour. If this "
            "change is really intended it needs a CHANGELOG entry and a major version, and then "
            f"`{WRITE_COMMAND} --release X.0.0`.",
        ]
    if growth:
        lines += [
            "",
            "Appended at the end with a default (allowed: saved workflows keep their values, the new inputs take "
            "their defaults), once the fixture is refreshed and CHANGELOG.md names each of them:",
            *(f"  - {c}" for c in growth),
        ]
    lines += ["", f"Refresh the fixture with: {WRITE_COMMAND}"]
    return "\n".join(lines)


def stale_fixture_message(fixture: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """None when the fixture's current contract is the live one; else what differs, judged against the release.

    Whether a difference is allowed depends on what users may have saved, so it is judged against the
    released contract, not against the fixture's current one (an unreleased input may still change).
    """
    stale = compare(fixture["current"]["nodes"], live)
    if not stale:
        return None
    released = fixture["released"]
    lines = [
        f"{FIXTURE.relative_to(REPO_ROOT)} does not pin the TCD nodes as /object_info shows them:",
        *(f"  - {c}" for c in stale),
        "",
        explain(compare(released["nodes"], live), f"what {released['version']} shipped"),
    ]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------


def read_live_contract(pack_dir: Path = REPO_ROOT) -> dict[str, Any]:
    """The contract of the pack in pack_dir, read from a ComfyUI server started for it with the test models."""
    ensure_test_models(default_models_dir())
    with ComfyServer(models_dir=default_models_dir(), pack_dir=pack_dir) as server:
        return live_contract(server)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.node_contract", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="refresh the fixture's current contract (this checkout)")
    parser.add_argument(
        "--release",
        metavar="VERSION",
        help="make the contract of --pack-dir (default: this checkout) the released baseline of VERSION",
    )
    parser.add_argument(
        "--pack-dir", type=Path, default=REPO_ROOT, help="with --release: the released pack (a git archive export)"
    )
    args = parser.parse_args(argv)
    fixture = read_fixture() if FIXTURE.exists() else {}
    live = read_live_contract()
    if args.release:
        released_nodes = live if args.pack_dir.resolve() == REPO_ROOT else read_live_contract(args.pack_dir)
        fixture["released"] = {"version": args.release, "nodes": released_nodes}
    if args.write:
        fixture["current"] = {"nodes": live}
    if args.write or args.release:
        fixture.setdefault("released", {"version": None, "nodes": {}})
        fixture.setdefault("current", {"nodes": live})
        about = f"The pack's node contract with saved workflows (devkit/node_contract.py); refresh: {WRITE_COMMAND}"
        write_fixture({"about": about, "released": fixture["released"], "current": fixture["current"]})
        print(f"wrote {FIXTURE.relative_to(REPO_ROOT)}: {', '.join(live)}")
    else:
        message = stale_fixture_message(fixture, live)
        print(message or "the fixture pins the live contract")
        return 1 if message else 0
    breaking = [c for c in compare(fixture["released"]["nodes"], live) if not c.allowed]
    if breaking:
        print(explain(breaking, f"what {fixture['released']['version']} shipped"), file=sys.stderr)
    return 1 if breaking else 0


if __name__ == "__main__":
    sys.exit(main())
