"""The TCD nodes' contract with users' saved workflows: /object_info pinned, old workflows load and run the same.

A UI workflow stores widget values by position, so each TCD node's inputs (order, types, defaults,
ranges, options) and outputs are pinned in tests/fixtures/node_contract.json (devkit/node_contract.py
reads and compares them; `python -m devkit.node_contract --write` refreshes the fixture). The one
allowed evolution is growth at the end with defaults; tests/fixtures/saved_workflows/ holds a
workflow saved with pack 1.0.0 (and a copy with every TCD widget changed), with the API prompts 1.0.0
made of them, to show that such growth leaves old workflows' values and pictures as they were.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from devkit import node_contract as nc
from devkit.host import ComfyServer
from workflow_tools import ObjectInfo, to_api

SAVED_DIR = Path(__file__).parent / "fixtures" / "saved_workflows"
SAVED_AS_SHIPPED = "v1.0.0_sd15.json"  # workflows/tcd_sd15_text_to_image.json as 1.0.0 shipped it
SAVED_CUSTOM = "v1.0.0_sd15_custom.json"  # the same, every TCD widget moved off its default
SAVED = (SAVED_AS_SHIPPED, SAVED_CUSTOM)
TCD_NODES = {"TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader"}
SIZE, STEPS = 64, 2


def saved_workflow(name: str) -> dict[str, Any]:
    return json.loads((SAVED_DIR / name).read_text(encoding="utf-8"))


def v1_prompt(name: str) -> dict[str, Any]:
    """The API prompt pack 1.0.0 made of a saved workflow: what each widget value meant then."""
    return json.loads((SAVED_DIR / "v1.0.0_api.json").read_text(encoding="utf-8"))["prompts"][name]


@pytest.fixture(scope="module")
def live_info(comfy_server: ComfyServer) -> dict[str, Any]:
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def live(comfy_server: ComfyServer, live_info: dict[str, Any]) -> dict[str, Any]:
    return nc.contract(live_info, nc.server_file_lists(comfy_server))


# --- the pinned contract -----------------------------------------------------------------------------------


def test_live_contract_is_the_pinned_one(live: dict[str, Any]) -> None:
    assert TCD_NODES <= set(live), f"the pack's nodes are not all in /object_info: {sorted(live)}"
    message = nc.stale_fixture_message(nc.read_fixture(), live)
    assert message is None, message


def test_the_contract_only_grew_since_the_release_and_the_changelog_says_how() -> None:
    fixture = nc.read_fixture()
    released = fixture["released"]
    changes = nc.compare(released["nodes"], fixture["current"]["nodes"])
    breaking = [c for c in changes if not c.allowed]
    assert not breaking, nc.explain(breaking, f"what {released['version']} shipped")
    missing = nc.unannounced(changes, nc.changelog_since(released["version"]))
    assert not missing, (
        f"CHANGELOG.md (above its {released['version']} heading) must name each input added since "
        f"{released['version']} as `input_name`, and each new node by its id:\n"
        + "\n".join(f"  - {c}" for c in missing)
    )


def test_file_list_combos_are_pinned_by_folder_and_host_added_keys_are_ignored(
    live_info: dict[str, Any], live: dict[str, Any]
) -> None:
    pinned = {"TrajectoryConsistencyLoraLoader": live["TrajectoryConsistencyLoraLoader"]}
    entry = copy.deepcopy(live_info["TrajectoryConsistencyLoraLoader"])
    # Another user's loras folder, and keys that newer hosts add to /object_info.
    entry.update(has_intermediate_output=False, is_input_list=False, search_aliases=["tcd lora"])
    for group in entry["input"].values():
        for name, spec in group.items():
            spec[1]["advanced"] = False
            if name.startswith(("tcd_lora", "style_lora")) and not name.endswith("strength"):
                fixed = [o for o in spec[1]["options"] if o == "None"]
                spec[1]["options"] = [*fixed, "x.safetensors"]
    other = nc.contract({"TrajectoryConsistencyLoraLoader": entry}, {"loras": ["x.safetensors"]})
    assert other == pinned
    inputs = {spec["name"]: spec for spec in pinned["TrajectoryConsistencyLoraLoader"]["inputs"]}
    assert inputs["style_lora_1"]["options_from_folder"] == "loras"
    assert inputs["style_lora_1"]["options"] == ["None"]


def _released() -> dict[str, Any]:
    return copy.deepcopy(nc.read_fixture()["released"]["nodes"])


def _inputs(contract: dict[str, Any], node: str) -> list[dict[str, Any]]:
    return contract[node]["inputs"]


def test_the_comparison_tells_growth_from_changes_that_shift_saved_values() -> None:
    sampler, scheduler = "TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler"

    def changed(edit) -> list[nc.Change]:
        new = _released()
        edit(new)
        return nc.compare(_released(), new)

    def verdicts(edit) -> list[bool]:
        return [c.allowed for c in changed(edit)]

    widget = {"name": "extra", "type": "BOOLEAN", "default": False}
    assert verdicts(lambda c: _inputs(c, sampler).append(dict(widget))) == [True]
    assert verdicts(lambda c: _inputs(c, sampler).append({"name": "hint", "type": "STRING", "optional": True})) == [
        True
    ]
    assert verdicts(lambda c: _inputs(c, sampler).append({"name": "extra", "type": "BOOLEAN"})) == [False]
    assert verdicts(lambda c: _inputs(c, sampler).append({"name": "vae", "type": "VAE"})) == [False]
    assert verdicts(lambda c: _inputs(c, sampler).insert(0, dict(widget))) == [False]
    assert verdicts(lambda c: c.update(NewNode={"inputs": [], "outputs": []})) == [True]
    assert verdicts(lambda c: c.pop(scheduler)) == [False]
    assert verdicts(lambda c: c[sampler]["outputs"].append({"type": "FLOAT", "name": "x", "is_list": False})) == [True]
    assert verdicts(lambda c: c[sampler]["outputs"][0].update(type="SIGMAS")) == [False]

    def swap(c: dict[str, Any]) -> None:
        inputs = _inputs(c, sampler)
        inputs[0], inputs[2] = inputs[2], inputs[0]  # gamma <-> gamma_end: same type, values land swapped

    assert [str(c) for c in changed(swap)] == [
        f"{sampler}: inputs reordered: ['gamma', 'gamma_schedule', 'gamma_end', 'gamma_list', 'order'] -> "
        "['gamma_end', 'gamma_schedule', 'gamma', 'gamma_list', 'order']"
    ]
    renamed = changed(lambda c: _inputs(c, sampler)[4].update(name="solver_order"))
    assert [(c.input, c.what.split(" (")[0], c.allowed) for c in renamed][0] == (
        "order",
        "renamed to 'solver_order'",
        False,
    )
    assert [str(c) for c in changed(lambda c: _inputs(c, sampler)[0].update(default=0.5))] == [
        f"{sampler}.gamma: changed: default 0.3 -> 0.5"
    ]
    assert [str(c) for c in changed(lambda c: _inputs(c, scheduler)[1].update(max=50))] == [
        f"{scheduler}.steps: changed: max 1000 -> 50"
    ]
    assert verdicts(lambda c: _inputs(c, sampler)[1]["options"].remove("list")) == [False]

    message = nc.explain(changed(swap) + changed(lambda c: _inputs(c, sampler).append(dict(widget))), "the fixture")
    assert "shift or change the values in users' saved workflows" in message
    assert "CHANGELOG" in message and nc.WRITE_COMMAND in message
    assert "Appended at the end with a default" in message and f"{sampler}.extra" in message


def test_an_appended_input_must_be_named_in_the_changelog() -> None:
    new = _released()
    _inputs(new, "TrajectoryConsistencySampler").append({"name": "extra_knob", "type": "FLOAT", "default": 0.0})
    changes = nc.compare(_released(), new)
    assert nc.unannounced(changes, "## Unreleased\n- TCD Sampler: `extra_knob`, off by default.\n") == []
    assert nc.unannounced(changes, "## Unreleased\n- TCD Sampler: a new knob.\n") == changes


# --- an old saved workflow still loads and runs the same ----------------------------------------------------


def _defaults(info: ObjectInfo, class_type: str) -> dict[str, Any]:
    schema = info.get(class_type)
    assert schema is not None, f"{class_type} is not in /object_info"
    return {spec.name: spec.options["default"] for spec in schema.inputs if "default" in spec.options}


@pytest.mark.parametrize("name", SAVED)
def test_saved_v1_workflow_widgets_land_on_the_same_inputs(name: str, live_info: dict[str, Any]) -> None:
    info = ObjectInfo(live_info)
    expected = v1_prompt(name)
    prompt = to_api(saved_workflow(name), info)
    assert sorted(prompt) == sorted(expected)
    assert TCD_NODES <= {entry["class_type"] for entry in prompt.values()}
    for node_id, was in expected.items():
        now = prompt[node_id]
        where = f"{name} node {node_id} ({was['class_type']})"
        assert now["class_type"] == was["class_type"], where
        for key, value in was["inputs"].items():
            assert key in now["inputs"], f"{where}: input {key} is gone"
            assert now["inputs"][key] == value, (
                f"{where}: {key} was saved as {value!r}, now reads {now['inputs'][key]!r}"
            )
        # Inputs added since 1.0.0 are not in the saved widgets: they take their defaults.
        defaults = _defaults(info, was["class_type"])
        for key in set(now["inputs"]) - set(was["inputs"]):
            assert key in defaults and now["inputs"][key] == defaults[key], (
                f"{where}: new input {key} is not its default"
            )
        schema = info.get(was["class_type"])
        required = {spec.name for spec in schema.inputs if spec.required}
        missing = sorted(required - set(now["inputs"]))
        assert not missing, f"{where}: required inputs {missing} have no value: POST /prompt would refuse the workflow"


def for_test_models(prompt: dict[str, Any], test_models: dict[str, Path]) -> dict[str, Any]:
    """The prompt on the random-weight test models, SIZE x SIZE, STEPS steps."""
    names = {
        "v1-5-pruned-emaonly.safetensors": test_models["checkpoint_sd15"].name,
        "TCD-SD15-LoRA.safetensors": test_models["lora_sd15"].name,
        "papercut.safetensors": test_models["lora_style_sd15"].name,
    }
    prompt = copy.deepcopy(prompt)
    for entry in prompt.values():
        inputs = entry["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in names:
                inputs[key] = names[value]
        if entry["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = SIZE
        if entry["class_type"] == "TrajectoryConsistencyScheduler":
            inputs["steps"] = STEPS
    return prompt


def explicit_prompt(was: dict[str, Any], info: ObjectInfo) -> dict[str, Any]:
    """The 1.0.0 prompt with every input the nodes have now written out: the added ones at their defaults."""
    prompt = copy.deepcopy(was)
    for entry in prompt.values():
        entry["inputs"] = {**_defaults(info, entry["class_type"]), **entry["inputs"]}
    return prompt


def run(server: ComfyServer, prompt: dict[str, Any]) -> bytes:
    """Runs a prompt, checks that its sampler executed (was not served from ComfyUI's cache), and returns
    the saved image's pixels (the PNG file also holds the prompt, which differs between the graphs)."""
    entry = server.run(prompt)
    cached = [set(data["nodes"]) for event, data in entry["status"]["messages"] if event == "execution_cached"]
    samplers = {nid for nid, e in prompt.items() if e["class_type"] == "SamplerCustomAdvanced"}
    assert cached and not cached[0] & samplers, f"the sampler was served from ComfyUI's cache: {cached}"
    save = [nid for nid, e in prompt.items() if e["class_type"] == "SaveImage"]
    (path,) = server.output_images(entry, save[0])
    with Image.open(path) as image:
        assert image.size == (SIZE, SIZE)
        return image.convert("RGB").tobytes()


def test_saved_v1_workflows_run_as_the_graphs_with_every_current_input_written_out(
    comfy_server: ComfyServer, live_info: dict[str, Any], test_models: dict[str, Path]
) -> None:
    """Each saved workflow, loaded now, gives the picture of its 1.0.0 prompt with every input the nodes
    have now written out (added ones at their defaults), seed for seed. A control with one widget value
    changed (the TCD Sampler's gamma) gives another picture, so the comparison can fail.

    ComfyUI keeps only the last prompt's outputs in its cache, so running another graph between two
    graphs with the same inputs makes the second one execute too (run() checks that it did)."""
    info = ObjectInfo(live_info)
    loaded = {name: for_test_models(to_api(saved_workflow(name), info), test_models) for name in SAVED}
    explicit = {name: for_test_models(explicit_prompt(v1_prompt(name), info), test_models) for name in SAVED}
    for prompt in explicit.values():
        for entry in prompt.values():
            if entry["class_type"] in TCD_NODES:
                widgets = {spec.name for spec in info.get(entry["class_type"]).widget_inputs}
                assert widgets <= set(entry["inputs"]), entry
    control = copy.deepcopy(explicit[SAVED_AS_SHIPPED])
    (sampler,) = [e["inputs"] for e in control.values() if e["class_type"] == "TrajectoryConsistencySampler"]
    sampler["gamma"] = round(sampler["gamma"] + 0.1, 2)

    pictures_loaded = {name: run(comfy_server, loaded[name]) for name in SAVED}
    picture_control = run(comfy_server, control)
    pictures_explicit = {name: run(comfy_server, explicit[name]) for name in SAVED}
    for name in SAVED:
        assert pictures_loaded[name] == pictures_explicit[name], f"{name} no longer runs as it did"
    assert picture_control != pictures_explicit[SAVED_AS_SHIPPED]
