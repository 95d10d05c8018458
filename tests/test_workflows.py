"""The example workflows in workflows/: valid for a real ComfyUI, with the published settings, and
running end to end through the real HTTP server on the random-weight test models.

The files are frozen: what ComfyUI's frontend saves (python -m devkit.refresh_workflows round-trips
them through it; tests/test_browser_workflows.py checks them in the real web UI). Values, ranges,
choices, required inputs and link types are checked by ComfyUI itself: its POST /prompt answers
node_errors. workflow_tools checks what ComfyUI does not (node types known to a set of packs, widget
values that fit the node's inputs, broken links, the models list).

SDXL workflows run as their SD1.5 counterparts: the same graph with the SD1.5 test checkpoint,
LoRAs and ControlNet substituted, at 64x64. A random-weight SDXL-architecture checkpoint was
measured on the 2-core / 24 GB test machine: building it takes 75 s (6.9 GB fp16), loading it
30 s, and one 64x64 step 11.5 s (the UNet's 2.6 G weights are read every step), with 19 GB peak
memory in one process. Six SDXL workflows at 4 steps would take over 5 minutes per session
and crowd the machine's memory; the SD1.5 graphs exercise the same nodes and wiring.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageStat

from devkit.browser import ANIMATEDIFF_OBJECT_INFO_PATH
from devkit.fixtures import IPADAPTER_OBJECT_INFO_PATH
from devkit.host import REPO_ROOT, ComfyServer
from devkit.run_workflow import image_at_lora_strength
from workflow_tools import ObjectInfo, load_object_info, to_api, validate_workflow

WORKFLOWS_DIR = REPO_ROOT / "workflows"
NAMES = sorted(path.stem for path in WORKFLOWS_DIR.glob("*.json"))
SIZE = 64
STEPS = 2  # the end-to-end runs check the wiring; the published step counts are checked in the files
# Workflows that need nodes of another pack, and the stand-in recording of that pack's schemas.
NEEDS_OTHER_PACKS = {
    "tcd_sdxl_ip_adapter": ("ComfyUI_IPAdapter_plus", IPADAPTER_OBJECT_INFO_PATH),
    "tcd_animatediff_sd15": ("ComfyUI-AnimateDiff-Evolved", ANIMATEDIFF_OBJECT_INFO_PATH),
}
PACK_RECORDINGS = [recording for _, recording in NEEDS_OTHER_PACKS.values()]
CORE = [name for name in NAMES if name not in NEEDS_OTHER_PACKS]  # ComfyUI core and this pack only
# Training workflows (the distil-then-sample test below runs the Flux one on tiny stand-ins; tests/ of the TCD
# Distill LoRA node train for real).
TRAINING = {"tcd_distill_lora", "tcd_distill_lora_flux"}
# Flow workflows: they sample a LoRA the user distils (no download), with the settings README's "Distil a TCD LoRA
# for a flow model" gives; run end to end below on tiny stand-ins, after the distillation workflow made the LoRA.
FLOW = {"tcd_flux1_dev_text_to_image": "Flux", "tcd_sd35_text_to_image": "SD3.5"}
YOUR_LORAS = {"tcd_flux1_dev.safetensors": "tcd_flux1_dev_text_to_image", "tcd_sd35_medium.safetensors":
              "tcd_sd35_text_to_image"}  # fmt: skip
FLOW_GAMMA = 0.5  # the best of 0 / 0.3 / 0.5 at 4 and 8 steps in bench/product_flow
# The others run end to end on the SD1.5 test models. The Papercut one goes last: all others load the same
# checkpoint + TCD LoRA, which ComfyUI then keeps patched between prompts.
RUNNABLE = sorted((n for n in CORE if n not in TRAINING and n not in FLOW), key=lambda n: n == "tcd_sdxl_papercut_lora")
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def read(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def input_image_names(workflow: dict[str, Any]) -> set[str]:
    return {node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "LoadImage"}


def input_folder_names(workflow: dict[str, Any]) -> set[str]:
    """The dataset folders under ComfyUI/input/ a training workflow reads."""
    return {node["widgets_values"][0] for node in workflow["nodes"] if node["type"] == "LoadImageTextDataSetFromFolder"}


@pytest.fixture(scope="module")
def live_info(comfy_server: ComfyServer) -> dict[str, Any]:
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def pack_info() -> dict[str, Any]:
    """The recorded schemas of the other packs the workflows use."""
    merged: dict[str, Any] = {}
    for recording in PACK_RECORDINGS:
        merged.update(load_object_info(recording))
    return merged


@pytest.fixture(scope="module")
def info(live_info: dict[str, Any], pack_info: dict[str, Any]) -> ObjectInfo:
    """The live server's /object_info plus the recorded schemas of the other packs."""
    return ObjectInfo(live_info, pack_info)


def names_a_missing_file(reason: dict[str, Any]) -> bool:
    """A /prompt node error about a model or input file this ComfyUI does not have: ComfyUI's own
    value_not_in_list, LoadImage's check of its file, or the TCD LoRA Loader's check of its LoRA names."""
    if reason["type"] == "value_not_in_list":
        return True
    custom = ("is not in ComfyUI's loras folders", "Invalid image file")
    return reason["type"] == "custom_validation_failed" and any(words in reason["details"] for words in custom)


def prompt_answer(server: ComfyServer, prompt: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """ComfyUI's own validation: POST /prompt's HTTP status and answer (error, node_errors)."""
    try:
        return 200, server.post_json("/prompt", {"prompt": prompt, "client_id": server.client_id})
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())


# --- the files -----------------------------------------------------------------------------------


def test_the_workflows_that_need_other_packs_are_those_listed(live_info: dict[str, Any]) -> None:
    assert NAMES, f"{WORKFLOWS_DIR} holds no workflow"
    foreign = {
        name
        for name in NAMES
        if any(
            node["type"] not in live_info and node["type"] not in ("Note", "MarkdownNote")
            for node in read(name)["nodes"]
        )
    }
    assert foreign == set(NEEDS_OTHER_PACKS)


@pytest.mark.parametrize("name", CORE)
def test_core_workflow_passes_comfyuis_validation_but_for_the_model_files(
    name: str, comfy_server: ComfyServer, live_info: dict[str, Any]
) -> None:
    workflow = read(name)
    report = validate_workflow(workflow, ObjectInfo(live_info))
    assert report.ok and not report.issues, str(report)
    status, answer = prompt_answer(comfy_server, to_api(workflow, ObjectInfo(live_info)))
    assert status == 400, answer  # the real model files are not installed on the test server: nothing runs
    files = {model["name"] for model in workflow["models"]} | input_image_names(workflow) | input_folder_names(workflow)
    files |= {lora for lora, user in YOUR_LORAS.items() if user == name}
    reasons = [(node["class_type"], e) for node in answer["node_errors"].values() for e in node["errors"]]
    assert reasons, answer
    for class_type, reason in reasons:
        assert names_a_missing_file(reason), (class_type, reason)
        named = reason.get("extra_info", {}).get("received_value") or reason["details"]
        assert any(file in str(named) for file in files), (class_type, reason)


@pytest.mark.parametrize("name", sorted(NEEDS_OTHER_PACKS))
def test_workflow_of_another_pack_needs_its_schemas_and_converts_with_them(
    name: str, live_info: dict, pack_info: dict
) -> None:
    workflow = read(name)
    alone = validate_workflow(workflow, ObjectInfo(live_info))
    unknown = {issue.node.split("(")[-1].rstrip(")") for issue in alone.errors if "unknown node type" in issue.message}
    pack, recording = NEEDS_OTHER_PACKS[name]
    recorded = load_object_info(recording)
    assert unknown and unknown <= set(recorded), (pack, unknown)
    report = validate_workflow(workflow, ObjectInfo(live_info, pack_info))
    assert report.ok and not report.issues, str(report)


def test_every_workflow_has_a_note_naming_its_model_files_and_a_models_list() -> None:
    for name in NAMES:
        workflow = read(name)
        notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
        assert len(notes) == 1, name
        text = notes[0]["widgets_values"][0]
        assert workflow["models"], name
        for model in workflow["models"]:
            assert set(model) == {"name", "url", "directory"}
            assert model["url"].startswith("https://huggingface.co/") and "/resolve/main/" in model["url"]
            assert f"`{model['name']}`" in text and f"ComfyUI/models/{model['directory']}/" in text, (name, model)
            repo = model["url"].split("https://huggingface.co/")[1].split("/resolve/")[0]
            assert f"https://huggingface.co/{repo}" in text, (name, repo)
        file_inputs = {
            value
            for node in workflow["nodes"]
            for value in node.get("widgets_values") or []
            if isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES)
        }
        yours = {lora for lora, user in YOUR_LORAS.items() if user == name}  # made with the pack: no download
        assert file_inputs == {m["name"] for m in workflow["models"]} | yours, name
        for lora in yours:
            assert f"`{lora}` in `ComfyUI/models/loras/`: your distilled LoRA" in text, name
        # The loaders carry their files too (the frontend's missing-model check reads them there).
        node_models = [m for node in workflow["nodes"] for m in (node.get("properties") or {}).get("models") or []]
        assert sorted(map(json.dumps, node_models)) == sorted(map(json.dumps, workflow["models"])), name


def test_layout_is_left_to_right_without_overlaps() -> None:
    for name in NAMES:
        workflow = read(name)
        nodes = {n["id"]: n for n in workflow["nodes"]}
        for link in workflow["links"]:
            origin, target = nodes[link[1]]["pos"], nodes[link[3]]["pos"]
            # Links run rightwards, or down within a column (sampler -> decode).
            assert origin[0] < target[0] or (origin[0] == target[0] and origin[1] < target[1]), (name, link)
        boxes = [
            (n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in nodes.values()
        ]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (name, a, b)


def _nodes(prompt: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [entry["inputs"] for entry in prompt.values() if entry["class_type"] == class_type]


def test_workflows_carry_the_published_settings(info: ObjectInfo) -> None:
    prompts = {name: to_api(read(name), info) for name in NAMES}
    for name, prompt in prompts.items():
        if name in TRAINING:
            (distill,) = _nodes(prompt, "TrajectoryConsistencyDistillLoRA")
            (save,) = _nodes(prompt, "SaveLoRA")
            (graph,) = _nodes(prompt, "LossGraphNode")
            assert save["lora"][1] == 1 and save["steps"][1] == 3 and graph["loss"][1] == 2  # lora, steps, loss_map
            assert distill["latents"][0] == distill["positive"][0]  # images and captions of one dataset
            assert not _nodes(prompt, "TrajectoryConsistencySampler")
            schema = info.get("TrajectoryConsistencyDistillLoRA")
            changed = {
                spec.name: distill[spec.name]
                for spec in schema.widget_inputs
                if distill[spec.name] != spec.options.get("default")
            }
            if name == "tcd_distill_lora_flux":  # Flux.1-dev: no CFG pass, FluxGuidance 3.0..4.0 drawn per sample
                assert changed == {"guidance_min": 0.0, "guidance_max": 0.0, "embedded_guidance_min": 3.0,
                                   "embedded_guidance_max": 4.0}  # fmt: skip
                assert save["prefix"] == "loras/" + Path(next(iter(YOUR_LORAS))).stem
            else:
                assert changed == {}, changed  # its note: "the node's defaults"
            continue
        if name == "tcd_sdxl_ksampler":
            (ksampler,) = _nodes(prompt, "KSampler")
            assert (ksampler["sampler_name"], ksampler["scheduler"]) == ("tcd", "tcd")
            assert (ksampler["steps"], ksampler["cfg"], ksampler["denoise"]) == (4, 1.0, 1.0)
            (loader,) = _nodes(prompt, "TrajectoryConsistencyLoraLoader")
            assert (loader["tcd_lora"], loader["tcd_lora_strength"]) == ("TCD-SDXL-LoRA.safetensors", 1.0)
            assert not _nodes(prompt, "TrajectoryConsistencySampler")
            continue
        (sampler,) = _nodes(prompt, "TrajectoryConsistencySampler")
        (scheduler,) = _nodes(prompt, "TrajectoryConsistencyScheduler")
        (loader,) = _nodes(prompt, "TrajectoryConsistencyLoraLoader")
        assert loader["tcd_lora_strength"] == 1.0
        if name in FLOW:  # README: 4 steps, gamma 0.5, the model's own shift (no ModelSampling node), CFG 1
            assert (scheduler["steps"], scheduler["original_inference_steps"], scheduler["strength"]) == (4, 50, 1.0)
            assert (sampler["gamma"], sampler["gamma_schedule"], sampler["unit_start_noise"]) == (
                FLOW_GAMMA,
                "constant",
                False,
            )
            assert YOUR_LORAS[loader["tcd_lora"]] == name
            assert not [e for e in prompt.values() if e["class_type"].startswith("ModelSampling")]
            (latent,) = _nodes(prompt, "EmptySD3LatentImage")
            assert (latent["width"], latent["height"]) == (1024, 1024)
            if FLOW[name] == "Flux":  # its embedded guidance, no CFG pass
                (guidance,) = _nodes(prompt, "FluxGuidance")
                assert guidance["guidance"] == 3.5 and _nodes(prompt, "BasicGuider") and not _nodes(prompt, "CFGGuider")
            else:
                (guider,) = _nodes(prompt, "CFGGuider")
                assert guider["cfg"] == 1.0
            continue
        assert scheduler["original_inference_steps"] == 50
        assert scheduler["strength"] == (0.5 if name == "tcd_sdxl_img2img" else 1.0), name
        if name == "tcd_hyper_sd_1step":  # Hyper-SD's unified LoRA: TCDScheduler, 1 step (999), eta 1
            assert (sampler["gamma"], sampler["gamma_schedule"], sampler["unit_start_noise"]) == (
                1.0,
                "constant",
                False,
            )
            assert (scheduler["steps"], scheduler["timesteps"]) == (1, "")
            assert loader["tcd_lora"] == "Hyper-SDXL-1step-lora.safetensors"
        else:
            assert (sampler["gamma"], sampler["gamma_schedule"], sampler["unit_start_noise"]) == (
                0.3,
                "constant",
                False,
            )
            assert (scheduler["steps"], scheduler["timesteps"]) == (5 if name == "tcd_animatediff_sd15" else 4, "")
            expected_lora = "TCD-SD15-LoRA.safetensors" if "sd15" in name else "TCD-SDXL-LoRA.safetensors"
            assert loader["tcd_lora"] == expected_lora
        if name == "tcd_animatediff_sd15":  # SamplerCustom: its own cfg
            (custom,) = _nodes(prompt, "SamplerCustom")
            assert custom["cfg"] == 1.0 and custom["add_noise"] is True
            assert not _nodes(prompt, "SamplerCustomAdvanced")
        else:
            (guider,) = _nodes(prompt, "CFGGuider")
            assert guider["cfg"] == 1.0
            assert len(_nodes(prompt, "SamplerCustomAdvanced")) == 1
    for name in ("tcd_sdxl_controlnet_canny", "tcd_sdxl_controlnet_depth"):
        (apply,) = _nodes(prompts[name], "ControlNetApplyAdvanced")
        assert apply["strength"] == 0.5
    assert _nodes(prompts["tcd_sdxl_controlnet_canny"], "Canny")
    assert not _nodes(prompts["tcd_sdxl_controlnet_depth"], "Canny")
    (ipadapter,) = _nodes(prompts["tcd_sdxl_ip_adapter"], "IPAdapterAdvanced")
    assert ipadapter["weight"] == 0.5
    papercut = prompts["tcd_sdxl_papercut_lora"]
    (loader,) = _nodes(papercut, "TrajectoryConsistencyLoraLoader")
    assert (loader["style_lora_1"], loader["style_lora_1_strength"]) == ("papercut.safetensors", 1.0)
    assert any(text["text"].startswith("papercut") for text in _nodes(papercut, "CLIPTextEncode"))
    assert _nodes(prompts["tcd_sdxl_img2img"], "VAEEncode")
    animation = prompts["tcd_animatediff_sd15"]
    (latent,) = _nodes(animation, "EmptyLatentImage")
    assert latent["batch_size"] == 16  # frames
    assert _nodes(animation, "ADE_UseEvolvedSampling") and _nodes(animation, "SaveAnimatedWEBP")


# --- broken copies ------------------------------------------------------------------------------------


def _node_of(workflow: dict[str, Any], node_type: str) -> dict[str, Any]:
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


def _only_reason(answer: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The one node error of a /prompt answer, beside the missing model files: (node id, reason)."""
    found = [
        (node_id, reason)
        for node_id, node in answer["node_errors"].items()
        for reason in node["errors"]
        if not names_a_missing_file(reason)
    ]
    assert len(found) == 1, answer
    return found[0]


def test_broken_copies_fail_with_the_right_message(info: ObjectInfo, comfy_server: ComfyServer) -> None:
    original = read("tcd_sdxl_text_to_image")
    assert validate_workflow(original, info).ok

    # An unknown node type: workflow_tools names it (a conversion needs every node's schema).
    unknown = copy.deepcopy(original)
    scheduler = _node_of(unknown, "TrajectoryConsistencyScheduler")
    scheduler["type"] = "TrajectoryConsistencySchedulr"
    errors = validate_workflow(unknown, info).errors
    assert len(errors) == 1, errors
    assert str(errors[0]).startswith(
        f'error: node {scheduler["id"]} "TrajectoryConsistencySchedulr" (TrajectoryConsistencySchedulr): '
        'unknown node type "TrajectoryConsistencySchedulr"'
    )

    # Values out of range and links of the wrong type: ComfyUI's own validation names them.
    out_of_range = copy.deepcopy(original)
    sampler = _node_of(out_of_range, "TrajectoryConsistencySampler")
    sampler["widgets_values"][0] = 1.5
    status, answer = prompt_answer(comfy_server, to_api(out_of_range, info))
    node_id, reason = _only_reason(answer)
    assert status == 400 and node_id == str(sampler["id"])
    assert reason["type"] == "value_bigger_than_max" and reason["details"] == "gamma", reason
    assert reason["message"] == "Value 1.5 bigger than max of 1.0"

    wrong_link = copy.deepcopy(original)
    decode = _node_of(wrong_link, "VAEDecode")
    vae_link = next(i["link"] for i in decode["inputs"] if i["name"] == "vae")
    for link in wrong_link["links"]:
        if link[0] == vae_link:
            link[2], link[5] = 1, "CLIP"  # the checkpoint's CLIP into VAEDecode.vae
    status, answer = prompt_answer(comfy_server, to_api(wrong_link, info))
    node_id, reason = _only_reason(answer)
    assert status == 400 and node_id == str(decode["id"])
    assert reason["type"] == "return_type_mismatch", reason
    assert reason["details"] == "vae, received_type(CLIP) mismatch input_type(VAE)"

    too_small = read("tcd_sd15_text_to_image")
    latent = _node_of(too_small, "EmptyLatentImage")
    latent["widgets_values"][0] = 8
    status, answer = prompt_answer(comfy_server, to_api(too_small, info))
    node_id, reason = _only_reason(answer)
    assert status == 400 and node_id == str(latent["id"])
    assert (reason["type"], reason["details"]) == ("value_smaller_than_min", "width"), reason

    not_a_choice = read("tcd_sdxl_ksampler")
    ksampler = _node_of(not_a_choice, "KSampler")
    ksampler["widgets_values"][4] = "euler_x"  # seed, control, steps, cfg, sampler_name
    ksampler["widgets_values"][3] = "abc"
    status, answer = prompt_answer(comfy_server, to_api(not_a_choice, info))
    reasons = {
        r["details"].split(":")[0].split(",")[0]: r for r in answer["node_errors"][str(ksampler["id"])]["errors"]
    }
    assert status == 400 and reasons.keys() == {"sampler_name", "cfg"}, answer
    assert (
        reasons["sampler_name"]["type"] == "value_not_in_list"
        and "'euler_x' not in" in reasons["sampler_name"]["details"]
    )
    assert reasons["cfg"]["type"] == "invalid_input_type", reasons["cfg"]

    unconnected = copy.deepcopy(original)
    prompt = to_api(unconnected, info)
    decode_id = str(_node_of(unconnected, "VAEDecode")["id"])
    del prompt[decode_id]["inputs"]["vae"]
    status, answer = prompt_answer(comfy_server, prompt)
    node_id, reason = _only_reason(answer)
    assert status == 400 and node_id == decode_id
    assert (reason["type"], reason["details"]) == ("required_input_missing", "vae"), reason

    no_output = {k: v for k, v in to_api(original, info).items() if v["class_type"] != "SaveImage"}
    status, answer = prompt_answer(comfy_server, no_output)
    assert status == 400 and answer["error"]["type"] == "prompt_no_outputs", answer


def test_cli_against_the_live_server(comfy_server: ComfyServer, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workflow_tools", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )

    recordings = [arg for recording in PACK_RECORDINGS for arg in ("--object-info", str(recording))]
    files = [str(WORKFLOWS_DIR / f"{name}.json") for name in NAMES]
    result = cli("validate", *files, "--object-info", comfy_server.url, *recordings)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok (") == len(NAMES)
    without_fixture = cli("validate", files[NAMES.index("tcd_sdxl_ip_adapter")], "--object-info", comfy_server.url)
    assert without_fixture.returncode == 1 and 'unknown node type "IPAdapterAdvanced"' in without_fixture.stdout
    broken = read("tcd_sd15_text_to_image")
    _node_of(broken, "EmptyLatentImage")["widgets_values"].append(7)
    broken_path = tmp_path / "broken.json"
    broken_path.write_text(json.dumps(broken))
    failed = cli("validate", str(broken_path), "--object-info", comfy_server.url + "/object_info")
    assert failed.returncode == 1
    assert '"Empty Latent Image" (EmptyLatentImage): has 4 widget values but its widgets' in failed.stdout
    converted = cli("convert", files[0], "--object-info", comfy_server.url, *recordings)
    assert converted.returncode == 0, converted.stderr
    info = ObjectInfo(comfy_server.object_info(), *(load_object_info(r) for r in PACK_RECORDINGS))
    assert json.loads(converted.stdout) == to_api(read(NAMES[0]), info)


# --- end to end ---------------------------------------------------------------------------------------


def _input_image(name: str) -> Image.Image:
    """A small input picture for a Load Image node: a depth-like gradient for depth maps, else shapes."""
    if "depth" in name:
        depth = Image.linear_gradient("L").resize((96, 96)).convert("RGB")
        ImageDraw.Draw(depth).ellipse([30, 30, 70, 70], fill=(255, 255, 255))
        return depth
    shapes = Image.new("RGB", (96, 96), (230, 225, 210))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle([12, 20, 60, 70], fill=(200, 40, 30))
    draw.ellipse([40, 10, 88, 58], fill=(30, 60, 190))
    return shapes


# The random-weight SD1.5 test model standing in for each model folder; style LoRAs by name.
TEST_MODEL_FOR_FOLDER = {"checkpoints": "checkpoint_sd15", "loras": "lora_sd15", "controlnet": "controlnet_sd15"}
STYLE_LORAS = {"papercut.safetensors"}


def _substitutions(test_models: dict[str, Path]) -> dict[str, str]:
    """Real model file names -> the random-weight SD1.5 test models standing in for them."""
    substitutions = {}
    for name in RUNNABLE:
        for model in read(name)["models"]:
            key = "lora_style_sd15" if model["name"] in STYLE_LORAS else TEST_MODEL_FOR_FOLDER[model["directory"]]
            substitutions[model["name"]] = test_models[key].name
    return substitutions


def for_test_models(prompt: dict[str, Any], substitutions: dict[str, str], seed: int) -> dict[str, Any]:
    """The API prompt with test models, SIZE x SIZE images, STEPS steps (unless a timestep list sets
    them) and a fresh seed (no cache hits)."""
    prompt = copy.deepcopy(prompt)
    for entry in prompt.values():
        inputs = entry["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in substitutions:
                inputs[key] = substitutions[value]
        if entry["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage", "ImageScale"):
            inputs["width"] = inputs["height"] = SIZE
        for key in ("seed", "noise_seed"):
            if key in inputs:
                inputs[key] = seed
        if entry["class_type"] in ("TrajectoryConsistencyScheduler", "KSampler") and not inputs.get("timesteps"):
            inputs["steps"] = STEPS
    return prompt


@pytest.fixture(scope="module")
def runnable_server(comfy_server: ComfyServer) -> Iterator[ComfyServer]:
    for name in RUNNABLE:
        for image in input_image_names(read(name)):
            _input_image(image).save(comfy_server.input_dir / image)
    yield comfy_server


@pytest.mark.parametrize("name", RUNNABLE)
def test_workflow_runs_end_to_end_on_the_test_models(
    name: str, runnable_server: ComfyServer, info: ObjectInfo, test_models: dict[str, Path]
) -> None:
    prompt = for_test_models(to_api(read(name), info), _substitutions(test_models), seed=4200 + NAMES.index(name))
    leftovers = {v for e in prompt.values() for v in e["inputs"].values() if isinstance(v, str) and ".safetensors" in v}
    assert leftovers <= set(_substitutions(test_models).values()), leftovers
    entry = runnable_server.run(prompt, timeout=300)
    save_ids = [node_id for node_id, e in prompt.items() if e["class_type"] == "SaveImage"]
    assert len(save_ids) == 1
    images = runnable_server.output_images(entry)
    saved = runnable_server.output_images(entry, save_ids[0])
    assert len(saved) == 1, entry.get("outputs")
    for path in images:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            stats = ImageStat.Stat(rgb)
        if path in saved:
            assert rgb.size == (SIZE, SIZE)
        # NaNs would decode to one flat colour: every channel must vary.
        assert all(std > 0.5 for std in stats.stddev), (name, path.name, stats.stddev)
        extrema = rgb.getextrema()
        assert all(high > low for low, high in extrema), (name, path.name, extrema)


# --- the flow workflows: distil a LoRA, then sample with it, on tiny stand-ins -----------------------------------

FLOW_DATASET = "tcd-flow-workflow-set"
TEXT_ENCODER_LOADERS = ("DualCLIPLoader", "TripleCLIPLoader")
# What the test changes in the distillation workflow: a 2-step fp32 run (the server's inference mode) on 2 images.
TEST_DISTILL = {"steps": 2, "rank": 4, "batch_size": 2, "learning_rate": 0.01, "training_dtype": "fp32"}
# SD3.5 swaps the loaders of the Flux distillation workflow for its checkpoint, as its note says; it takes true CFG.
SD35_GUIDANCE = {"guidance_min": 1.0, "guidance_max": 3.0, "embedded_guidance_min": 0.0, "embedded_guidance_max": 0.0}


def _repoint(prompt: dict[str, Any], old: list, new: list) -> None:
    """Every input linked to output ``old`` ([node id, slot]) linked to ``new`` instead."""
    for entry in prompt.values():
        for key, value in entry["inputs"].items():
            if value == old:
                entry["inputs"][key] = list(new)


def flow_stand_ins(prompt: dict[str, Any], family: str, sd15_checkpoint: str, sd3: dict[str, Path]) -> dict[str, Any]:
    """The prompt with its loaders swapped for tiny random-weight stand-ins of the same family.

    Flux.1-dev -> the test pack's tiny Flux.1-dev (ComfyUI's class; detection sees Flux only at full width), its
    CLIP-L + T5 -> the SD1.5 test checkpoint's CLIP-L (768 wide, what the tiny Flux takes), ae -> the 16-channel test
    VAE. SD3.5 -> the tiny SD3.5 single-file checkpoint (ComfyUI detects it) for the model, the text encoders (CLIP-L,
    padded to SD3's widths) and the VAE."""
    prompt = copy.deepcopy(prompt)
    model_id = next(i for i, e in prompt.items() if e["class_type"] in ("UNETLoader", "CheckpointLoaderSimple"))
    if family == "Flux":
        prompt[model_id] = {"class_type": "TCDTestTinyFlowModel",
                            "inputs": {"family": "Flux", "seed": 0, "weight_dtype": "fp32"}}  # fmt: skip
    else:
        prompt[model_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd3["checkpoint"].name}}
    for node_id, entry in list(prompt.items()):
        if entry["class_type"] in TEXT_ENCODER_LOADERS and family == "Flux":
            prompt[node_id] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": sd15_checkpoint}}
            _repoint(prompt, [node_id, 0], [node_id, 1])
        elif entry["class_type"] in TEXT_ENCODER_LOADERS:
            del prompt[node_id]
            _repoint(prompt, [node_id, 0], [model_id, 1])
        elif entry["class_type"] == "VAELoader" and family == "Flux":
            entry["inputs"]["vae_name"] = sd3["vae"].name
        elif entry["class_type"] == "VAELoader":
            del prompt[node_id]
            _repoint(prompt, [node_id, 0], [model_id, 2])
    return prompt


@pytest.fixture(scope="module")
def flow_server(
    comfy_server: ComfyServer, tiny_checkpoint: str, tiny_sd3_files: dict[str, Path]
) -> Iterator[ComfyServer]:
    """The server with the stand-ins in its model folders and a two-image captioned dataset in its input folder."""
    models = comfy_server.models_dir
    for folder, key in (("checkpoints", "checkpoint"), ("vae", "vae")):
        target = models / folder / tiny_sd3_files[key].name
        target.parent.mkdir(exist_ok=True)
        if not target.is_file():
            shutil.copyfile(tiny_sd3_files[key], target)
    dataset = comfy_server.input_dir / FLOW_DATASET
    dataset.mkdir(exist_ok=True)
    for index, colour in enumerate(((200, 40, 30), (30, 60, 190))):
        Image.new("RGB", (64, 64), colour).save(dataset / f"{index}.png")
        (dataset / f"{index}.txt").write_text(f"a paper cut fox {index}")
    yield comfy_server


@pytest.mark.parametrize("name", sorted(FLOW))
def test_flow_workflows_distil_a_lora_and_sample_with_it_on_tiny_stand_ins(
    name: str, flow_server: ComfyServer, info: ObjectInfo, tiny_checkpoint: str, tiny_sd3_files: dict[str, Path]
) -> None:
    """The distillation workflow trains a LoRA for the family (2 steps), saved by Save LoRA Weights; under the name
    the sampling workflow loads, that workflow samples with it through the TCD LoRA Loader, TCD Scheduler and TCD
    Sampler, every LoRA key loaded, and the LoRA changes the image."""
    server, family = flow_server, FLOW[name]
    seed = 5100 + NAMES.index(name)
    log_start = len(server.log_text())  # the session's server: earlier tests drop LoRA keys on purpose
    distill = flow_stand_ins(to_api(read("tcd_distill_lora_flux"), info), family, tiny_checkpoint, tiny_sd3_files)
    prefix = f"tcd-e2e-{family.replace('.', '')}-{seed}"
    for entry in distill.values():
        inputs = entry["inputs"]
        if entry["class_type"] == "TrajectoryConsistencyDistillLoRA":
            inputs.update(TEST_DISTILL, seed=seed, **(SD35_GUIDANCE if family == "SD3.5" else {}))
        elif entry["class_type"] == "LoadImageTextDataSetFromFolder":
            inputs["folder"] = FLOW_DATASET
        elif entry["class_type"] == "SaveLoRA":
            inputs["prefix"] = f"loras/{prefix}"
    server.run(distill, timeout=600)
    (saved,) = (server.output_dir / "loras").glob(f"{prefix}_2_steps_*.safetensors")
    (lora_name,) = (lora for lora, user in YOUR_LORAS.items() if user == name)
    installed = server.models_dir / "loras" / lora_name
    shutil.copyfile(saved, installed)
    try:
        prompt = flow_stand_ins(to_api(read(name), info), family, tiny_checkpoint, tiny_sd3_files)
        prompt = for_test_models(prompt, {}, seed)
        images = {strength: image_at_lora_strength(server, prompt, strength) for strength in (1.0, 0.0)}
    finally:
        installed.unlink()
    assert images[1.0].size == (SIZE, SIZE)
    assert all(std > 0.5 for std in ImageStat.Stat(images[1.0]).stddev), ImageStat.Stat(images[1.0]).stddev
    assert images[1.0].tobytes() != images[0.0].tobytes(), "the distilled LoRA does not change the image"
    assert "lora key not loaded" not in server.log_text()[log_start:]
