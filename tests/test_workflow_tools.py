"""workflow_tools on hand-made graphs: widget mapping, frontend-only nodes, modes, checks, messages.

No ComfyUI here: the /object_info entries below copy the shapes ComfyUI 0.3.75 serves (V1 lists,
V3 "COMBO" specs, control_after_generate, image_upload). tests/test_workflows.py checks the
shipped workflows against a real server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devkit.host import REPO_ROOT
from workflow_tools import (
    ObjectInfo,
    WorkflowError,
    convert_workflow,
    map_widget_values,
    parse_input_spec,
    to_api,
    validate_workflow,
)

INFO: dict[str, Any] = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"]]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint",
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}],
                "sampler_name": [["euler", "tcd"]],
                "scheduler": [["normal", "tcd"]],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}],
            }
        },
        "input_order": {
            "required": [
                "model",
                "seed",
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "positive",
                "negative",
                "latent_image",
                "denoise",
            ]
        },
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "KSampler",
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}},
        "output": ["CONDITIONING"],
        "output_name": ["CONDITIONING"],
        "display_name": "CLIP Text Encode (Prompt)",
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 16, "max": 16384}],
                "height": ["INT", {"default": 512, "min": 16, "max": 16384}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            }
        },
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "Empty Latent Image",
    },
    "LoraLoaderModelOnly": {
        "input": {"required": {"model": ["MODEL"], "lora_name": [["l.safetensors"]], "strength_model": ["FLOAT", {}]}},
        "output": ["MODEL"],
        "output_name": ["MODEL"],
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output": [],
        "output_name": [],
        "output_node": True,
        "display_name": "Save Image",
    },
    "VAEDecode": {
        "input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}},
        "output": ["IMAGE"],
        "output_name": ["IMAGE"],
    },
    "LoadImage": {
        "input": {"required": {"image": [["x.png"], {"image_upload": True}]}},
        "output": ["IMAGE", "MASK"],
        "output_name": ["IMAGE", "MASK"],
    },
    "LoadImageMask": {
        "input": {
            "required": {"image": [["m.png"], {"image_upload": True}], "channel": [["alpha", "red"]]},
        },
        "output": ["MASK"],
        "output_name": ["MASK"],
    },
    "V3Node": {  # a V3 schema: COMBO spelled out, an optional multiselect COMBO, an optional socket
        "input": {
            "required": {"mode": ["COMBO", {"options": ["constant", "linear"], "default": "constant"}]},
            "optional": {
                "tags": ["COMBO", {"options": ["a", "b", "c"], "multiselect": True}],
                "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0}],
                "anything": ["*"],
            },
        },
        "output": ["SAMPLER"],
        "output_name": ["SAMPLER"],
    },
    "ForceInput": {
        "input": {"required": {"value": ["INT", {"forceInput": True}], "label": ["STRING", {}]}},
        "output": ["INT"],
        "output_name": ["INT"],
    },
}


def node(
    node_id: int,
    node_type: str,
    widgets: list[Any] | dict[str, Any] | None = None,
    inputs: list[tuple[str, str, int | None]] = (),
    *,
    mode: int = 0,
    title: str | None = None,
    widget_inputs: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A UI node; inputs as (name, type, link id); names in widget_inputs are converted widgets."""
    entry: dict[str, Any] = {
        "id": node_id,
        "type": node_type,
        "mode": mode,
        "inputs": [
            {"name": n, "type": t, "link": link, **({"widget": {"name": n}} if n in widget_inputs else {})}
            for n, t, link in inputs
        ],
        "outputs": [],
        "widgets_values": widgets if widgets is not None else [],
    }
    if title:
        entry["title"] = title
    return entry


def base_graph() -> dict[str, Any]:
    """checkpoint -> KSampler -> VAEDecode -> SaveImage, with prompts and a latent: ids 1..7, links 1..8."""
    return {
        "nodes": [
            node(1, "CheckpointLoaderSimple", ["a.safetensors"]),
            node(2, "CLIPTextEncode", ["a fox"], [("clip", "CLIP", 2)], title="Positive"),
            node(3, "CLIPTextEncode", [""], [("clip", "CLIP", 3)]),
            node(4, "EmptyLatentImage", [512, 512, 1]),
            node(
                5,
                "KSampler",
                [7, "randomize", 4, 1.0, "tcd", "tcd", 1.0],
                [
                    ("model", "MODEL", 1),
                    ("positive", "CONDITIONING", 4),
                    ("negative", "CONDITIONING", 5),
                    ("latent_image", "LATENT", 6),
                ],
            ),
            node(6, "VAEDecode", [], [("samples", "LATENT", 7), ("vae", "VAE", 8)]),
            node(7, "SaveImage", ["tcd"], [("images", "IMAGE", 9)]),
        ],
        "links": [
            [1, 1, 0, 5, 0, "MODEL"],
            [2, 1, 1, 2, 0, "CLIP"],
            [3, 1, 1, 3, 0, "CLIP"],
            [4, 2, 0, 5, 1, "CONDITIONING"],
            [5, 3, 0, 5, 2, "CONDITIONING"],
            [6, 4, 0, 5, 3, "LATENT"],
            [7, 5, 0, 6, 0, "LATENT"],
            [8, 1, 2, 6, 1, "VAE"],
            [9, 6, 0, 7, 0, "IMAGE"],
        ],
    }


def add_node(graph: dict[str, Any], entry: dict[str, Any]) -> None:
    graph["nodes"].append(entry)


def relink(graph: dict[str, Any], link_id: int, origin: int, slot: int, kind: str | None = None) -> None:
    """Points an existing link at another origin (node, slot)."""
    for link in graph["links"]:
        if link[0] == link_id:
            link[1], link[2] = origin, slot
            if kind:
                link[5] = kind


def find(graph: dict[str, Any], node_id: int) -> dict[str, Any]:
    return next(n for n in graph["nodes"] if n["id"] == node_id)


@pytest.fixture
def info() -> ObjectInfo:
    return ObjectInfo(INFO)


def test_api_prompt_of_a_plain_graph(info: ObjectInfo) -> None:
    prompt = to_api(base_graph(), info)
    assert set(prompt) == {"1", "2", "3", "4", "5", "6", "7"}
    sampler = prompt["5"]
    assert sampler["class_type"] == "KSampler"
    # The control_after_generate value ("randomize") after seed is not a widget of its own.
    assert sampler["inputs"] == {
        "seed": 7,
        "steps": 4,
        "cfg": 1.0,
        "sampler_name": "tcd",
        "scheduler": "tcd",
        "denoise": 1.0,
        "model": ["1", 0],
        "positive": ["2", 0],
        "negative": ["3", 0],
        "latent_image": ["4", 0],
    }
    assert prompt["2"]["_meta"] == {"title": "Positive"}
    assert prompt["3"]["_meta"] == {"title": "CLIP Text Encode (Prompt)"}
    assert validate_workflow(base_graph(), info).issues == []


def test_control_value_is_only_skipped_when_present(info: ObjectInfo) -> None:
    ui = node(5, "KSampler", [7, 4, 1.0, "tcd", "tcd", 1.0])  # saved without the control widget
    values, issues = map_widget_values(ui, info.get("KSampler"), "n")
    assert values["steps"] == 4 and values["denoise"] == 1.0 and not issues


def test_upload_button_value_follows_the_last_required_widget(info: ObjectInfo) -> None:
    values, issues = map_widget_values(node(1, "LoadImage", ["x.png", "image"]), info.get("LoadImage"), "n")
    assert values == {"image": "x.png"} and not issues
    values, issues = map_widget_values(
        node(1, "LoadImageMask", ["m.png", "red", "image"]), info.get("LoadImageMask"), "n"
    )
    assert values == {"image": "m.png", "channel": "red"} and not issues


def test_extra_widget_values_are_an_error_naming_the_node(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 4)["widgets_values"] = [512, 512, 1, 99]
    report = validate_workflow(graph, info)
    assert not report.ok
    assert 'node 4 "Empty Latent Image" (EmptyLatentImage)' in str(report.errors[0])
    assert "[99]" in str(report.errors[0])


def test_widgets_values_saved_by_name_and_list_values(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 4)["widgets_values"] = {"width": 64, "height": 64, "batch_size": 2, "preview": {"x": 1}}
    prompt = to_api(graph, info)
    assert prompt["4"]["inputs"] == {"width": 64, "height": 64, "batch_size": 2}
    add_node(graph, node(8, "V3Node", ["linear", ["a", "c"], 1.5]))
    assert to_api(graph, info)["8"]["inputs"]["tags"] == {"__value__": ["a", "c"]}  # lists are not links
    assert validate_workflow(graph, info).ok


def test_v3_combo_and_optional_inputs(info: ObjectInfo) -> None:
    graph = base_graph()
    add_node(graph, node(8, "V3Node", ["sideways", ["a", "z"], 3.0], title="Mine"))
    # Choices and ranges are ComfyUI's to check (POST /prompt, tests/test_workflows.py): the values pass through.
    assert validate_workflow(graph, info).issues == []
    assert to_api(graph, info)["8"]["inputs"] == {
        "mode": "sideways",
        "tags": {"__value__": ["a", "z"]},
        "strength": 3.0,
    }
    # Optional inputs left out of a saved workflow get their defaults, as the frontend gives them.
    find(graph, 8)["widgets_values"] = ["linear"]
    assert validate_workflow(graph, info).ok
    assert to_api(graph, info)["8"]["inputs"] == {"mode": "linear", "strength": 1.0}


def test_widgets_added_after_a_workflow_was_saved_get_their_defaults(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 5)["widgets_values"] = [7, "fixed", 4]  # saved when KSampler had only seed and steps
    assert to_api(graph, info)["5"]["inputs"] == {
        **to_api(base_graph(), info)["5"]["inputs"],
        "cfg": 8.0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1.0,
    }


def test_force_input_has_no_widget_value(info: ObjectInfo) -> None:
    spec = info.get("ForceInput")
    assert [s.name for s in spec.widget_inputs] == ["label"]
    graph = base_graph()
    add_node(graph, node(8, "ForceInput", ["hello"]))
    # An unconnected required input is ComfyUI's to report (required_input_missing): it stays out of the prompt.
    assert validate_workflow(graph, info).ok
    assert to_api(graph, info)["8"]["inputs"] == {"label": "hello"}


def test_notes_are_dropped(info: ObjectInfo) -> None:
    graph = base_graph()
    add_node(graph, node(8, "Note", ["read me"]))
    add_node(graph, node(9, "MarkdownNote", ["# read me"]))
    prompt = to_api(graph, info)
    assert "8" not in prompt and "9" not in prompt


def test_reroutes_pass_links_through(info: ObjectInfo) -> None:
    graph = base_graph()
    # checkpoint MODEL -> Reroute 8 -> Reroute 9 -> KSampler.model
    add_node(graph, node(8, "Reroute", [], [("", "*", 20)]))
    add_node(graph, node(9, "Reroute", [], [("", "*", 21)]))
    graph["links"] += [[20, 1, 0, 8, 0, "MODEL"], [21, 8, 0, 9, 0, "MODEL"]]
    relink(graph, 1, 9, 0)
    assert to_api(graph, info)["5"]["inputs"]["model"] == ["1", 0]
    # A Reroute carrying CLIP into a MODEL input resolves to the real ends, where ComfyUI's
    # return_type_mismatch sees it.
    graph["links"][-2][2] = 1
    assert validate_workflow(graph, info).ok
    assert to_api(graph, info)["5"]["inputs"]["model"] == ["1", 1]


def test_primitive_node_value_feeds_the_converted_widget(info: ObjectInfo) -> None:
    graph = base_graph()
    sampler = find(graph, 5)
    sampler["inputs"].append({"name": "steps", "type": "INT", "link": 30, "widget": {"name": "steps"}})
    add_node(graph, node(8, "PrimitiveNode", [6, "fixed"]))
    graph["links"].append([30, 8, 0, 5, 4, "INT"])
    assert to_api(graph, info)["5"]["inputs"]["steps"] == 6
    assert "8" not in to_api(graph, info)
    find(graph, 8)["widgets_values"] = [0, "fixed"]  # out of range: ComfyUI's to report, on the KSampler
    assert to_api(graph, info)["5"]["inputs"]["steps"] == 0


def test_converted_widget_fed_by_a_node(info: ObjectInfo) -> None:
    graph = base_graph()
    sampler = find(graph, 5)
    sampler["inputs"].append({"name": "seed", "type": "INT", "link": 31, "widget": {"name": "seed"}})
    add_node(graph, node(8, "ForceInput", ["x"], [("value", "INT", None)], mode=4))
    graph["links"].append([31, 8, 0, 5, 4, "INT"])
    # Node 8 is bypassed and has nothing of type INT flowing in: the link vanishes, the widget value stays.
    assert to_api(graph, info)["5"]["inputs"]["seed"] == 7
    find(graph, 8)["mode"] = 0
    find(graph, 8)["inputs"] = [{"name": "value", "type": "INT", "link": None}]
    report = validate_workflow(graph, info)
    assert report.conversion.prompt["5"]["inputs"]["seed"] == ["8", 0]
    # ForceInput's own input is unconnected (ComfyUI's required_input_missing), the seed is linked.
    assert report.ok and report.conversion.prompt["8"]["inputs"] == {"label": "x"}


def bypass_graph(mode: int) -> dict[str, Any]:
    """checkpoint -> LoRA (mode) -> KSampler.model."""
    graph = base_graph()
    add_node(graph, node(8, "LoraLoaderModelOnly", ["l.safetensors", 1.0], [("model", "MODEL", 20)], mode=mode))
    graph["links"].append([20, 1, 0, 8, 0, "MODEL"])
    relink(graph, 1, 8, 0)
    return graph


def test_bypassed_node_passes_its_input_of_the_same_type(info: ObjectInfo) -> None:
    assert to_api(bypass_graph(0), info)["5"]["inputs"]["model"] == ["8", 0]
    prompt = to_api(bypass_graph(4), info)
    assert "8" not in prompt
    assert prompt["5"]["inputs"]["model"] == ["1", 0]


def test_muted_node_is_dropped_and_its_consumers_lose_the_input(info: ObjectInfo) -> None:
    report = validate_workflow(bypass_graph(2), info)
    assert "8" not in report.conversion.prompt and "model" not in report.conversion.prompt["5"]["inputs"]
    assert report.ok  # the missing model input is ComfyUI's required_input_missing


def test_bypass_prefers_the_input_at_the_output_index_then_the_first_of_the_type(info: ObjectInfo) -> None:
    extra = {
        "Pair": {
            "input": {"required": {"a": ["LATENT"], "b": ["LATENT"], "c": ["MODEL"]}},
            "output": ["MODEL", "LATENT"],
            "output_name": ["MODEL", "LATENT"],
        }
    }
    info = ObjectInfo(INFO, extra)
    graph = base_graph()
    add_node(graph, node(9, "EmptyLatentImage", [64, 64, 1]))
    add_node(
        graph,
        node(8, "Pair", [], [("a", "LATENT", 20), ("b", "LATENT", 21), ("c", "MODEL", 22)], mode=4),
    )
    graph["links"] += [[20, 4, 0, 8, 0, "LATENT"], [21, 9, 0, 8, 1, "LATENT"], [22, 1, 0, 8, 2, "MODEL"]]
    relink(graph, 6, 8, 1)  # KSampler.latent_image <- Pair output 1 (LATENT): input 1 ("b") matches first
    relink(graph, 1, 8, 0)  # KSampler.model <- Pair output 0 (MODEL): input 0 is LATENT, first MODEL is "c"
    inputs = to_api(graph, info)["5"]["inputs"]
    assert inputs["latent_image"] == ["9", 0]
    assert inputs["model"] == ["1", 0]


def test_unknown_node_type_is_named_with_its_title(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 4)["type"] = "NoSuchNode"
    find(graph, 4)["title"] = "My latent"
    report = validate_workflow(graph, info)
    assert str(report.errors[0]).startswith('error: node 4 "My latent" (NoSuchNode): unknown node type "NoSuchNode"')
    with pytest.raises(WorkflowError, match="unknown node type"):
        to_api(graph, info)


def test_subgraphs_and_group_nodes_are_named_as_such(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 4)["type"] = "0b6f5a9e-1d2c-4c7e-9a51-3f2b8f6d7e10"
    find(graph, 3)["type"] = "workflow>My group"
    graph["definitions"] = {"subgraphs": [{"id": "0b6f5a9e-1d2c-4c7e-9a51-3f2b8f6d7e10", "nodes": []}]}
    messages = [issue.message for issue in validate_workflow(graph, info).errors]
    assert any("is a subgraph: subgraphs are not supported" in m for m in messages), messages
    assert any("is a group node: group nodes are not supported" in m for m in messages), messages


def test_legacy_seed_control_value_without_the_flag() -> None:
    legacy = {"OldSampler": {"input": {"required": {"seed": ["INT", {}], "steps": ["INT", {}]}}, "output": []}}
    values, issues = map_widget_values(
        node(1, "OldSampler", [5, "increment", 20]), ObjectInfo(legacy).get("OldSampler"), "n"
    )
    assert values == {"seed": 5, "steps": 20} and not issues


def test_several_object_info_sources_merge(info: ObjectInfo) -> None:
    graph = base_graph()
    find(graph, 4)["type"] = "PackLatent"
    pack = {"PackLatent": dict(INFO["EmptyLatentImage"], display_name="Pack Latent")}
    assert not validate_workflow(graph, info).ok
    assert validate_workflow(graph, ObjectInfo(INFO, pack)).ok


def test_links_in_object_form(info: ObjectInfo) -> None:
    graph = base_graph()
    keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    graph["links"] = [dict(zip(keys, link, strict=True)) for link in graph["links"]]
    assert to_api(graph, info) == to_api(base_graph(), info)


def test_broken_links(info: ObjectInfo) -> None:
    graph = base_graph()
    graph["links"] = [link for link in graph["links"] if link[0] != 8]
    messages = [str(i) for i in validate_workflow(graph, info).errors]
    missing_link = 'node 6 "VAEDecode" (VAEDecode), input "vae": names link 8, which is not in the workflow\'s links'
    assert messages == [f"error: {missing_link}"]


def test_api_prompt_is_refused() -> None:
    with pytest.raises(WorkflowError, match="API-format prompt"):
        convert_workflow({"1": {"class_type": "X", "inputs": {}}}, ObjectInfo({}))


def test_input_spec_forms() -> None:
    assert parse_input_spec("a", [["x", "y"], {"default": "x"}]).choices == ("x", "y")
    v3 = parse_input_spec("b", ["COMBO", {"options": ["p"], "multiselect": False}])
    assert v3.type == "COMBO" and v3.choices == ("p",) and v3.is_widget and not v3.multiselect
    assert not parse_input_spec("c", ["MODEL"]).is_widget
    assert parse_input_spec("d", ["INT", {"control_after_generate": True}]).has_control_widget


def test_cli_validate_and_convert(tmp_path: Path) -> None:
    info_path = tmp_path / "object_info.json"
    info_path.write_text(json.dumps(INFO))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(base_graph()))
    bad_graph = base_graph()
    find(bad_graph, 5)["widgets_values"].append(0)  # one value more than KSampler has widgets
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(bad_graph))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workflow_tools", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
        )

    ok = cli("validate", str(good), "--object-info", str(info_path))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok (7 nodes, 0 warnings)" in ok.stdout
    failed = cli("validate", str(good), str(bad), "--object-info", str(info_path))
    assert failed.returncode == 1
    assert 'node 5 "KSampler" (KSampler): has 8 widget values but its widgets' in failed.stdout
    converted = cli("convert", str(good), "--object-info", str(info_path))
    assert converted.returncode == 0, converted.stderr
    assert json.loads(converted.stdout) == to_api(base_graph(), ObjectInfo(INFO))
    refused = cli("convert", str(bad), "--object-info", str(info_path))
    assert refused.returncode == 1 and refused.stdout == "" and "saved for another version" in refused.stderr
    unreadable = cli("validate", str(good), "--object-info", str(tmp_path / "missing.json"))
    assert unreadable.returncode == 2 and "cannot read /object_info" in unreadable.stderr


def test_workflow_tools_imports_neither_comfyui_nor_torch() -> None:
    code = (
        "import sys, workflow_tools, workflow_tools.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'comfy', 'comfy_api', 'nodes', 'folder_paths', 'numpy'})\n"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
