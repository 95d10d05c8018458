"""The example workflows in workflows/: valid for a real ComfyUI, up to date, with the published settings,
and running end to end through the real HTTP server on the random-weight test models.

SDXL workflows run as their SD1.5 counterparts: the same graph with the SD1.5 test checkpoint,
LoRAs and ControlNet substituted, at 64x64. A random-weight SDXL-architecture checkpoint was
measured on the 2-core / 24 GB test machine: building it takes 75 s (6.9 GB fp16), loading it
30 s, and one 64x64 step 11.5 s (the UNet's 2.6 G weights are read every step), with 19 GB peak
memory in one process. Six SDXL workflows at 4 steps would take over 5 minutes per session
and crowd the machine's memory; the SD1.5 graphs exercise the same nodes and wiring.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageStat

from devkit.host import REPO_ROOT, ComfyServer
from workflow_tools import ObjectInfo, load_object_info, to_api, validate_workflow

WORKFLOWS_DIR = REPO_ROOT / "workflows"
SIZE = 64
STEPS = 2  # the end-to-end runs check the wiring; the published 4 steps are checked in the files


def _load_generator():
    """dev/make_workflows.py as a module (it imports only workflow_tools)."""
    spec = importlib.util.spec_from_file_location("tcd_make_workflows", REPO_ROOT / "dev" / "make_workflows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
NAMES = list(GEN.WORKFLOWS)
# Those that need only ComfyUI core and this pack run end to end. The Papercut one goes last: all
# others load the same checkpoint + TCD LoRA, which ComfyUI then keeps patched between prompts.
IPADAPTER_FIXTURE = GEN.IPADAPTER_FIXTURE
RUNNABLE = sorted(
    (name for name in NAMES if name not in GEN.NEEDS_OTHER_PACKS), key=lambda name: name == "tcd_sdxl_papercut_lora"
)


def read(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def live_info(comfy_server: ComfyServer) -> dict[str, Any]:
    return comfy_server.object_info()


@pytest.fixture(scope="module")
def ipadapter_info() -> dict[str, Any]:
    return load_object_info(IPADAPTER_FIXTURE)


@pytest.fixture(scope="module")
def info(live_info: dict[str, Any], ipadapter_info: dict[str, Any]) -> ObjectInfo:
    """The live server's /object_info plus the recorded ComfyUI_IPAdapter_plus schemas."""
    return ObjectInfo(live_info, ipadapter_info)


# --- the files -----------------------------------------------------------------------------------


def test_the_workflow_files_are_the_generated_ones(info: ObjectInfo) -> None:
    built = GEN.build_files(info)
    files = sorted(path.name for path in WORKFLOWS_DIR.iterdir())
    assert files == sorted(built), "workflows/ and dev/make_workflows.py disagree on the file list"
    stale = [name for name, text in built.items() if (WORKFLOWS_DIR / name).read_text(encoding="utf-8") != text]
    assert not stale, f"regenerate with `.dev/venv/bin/python dev/make_workflows.py`: {stale}"


@pytest.mark.parametrize("name", [n for n in NAMES if n not in GEN.NEEDS_OTHER_PACKS])
def test_core_workflow_validates_against_the_live_server(name: str, live_info: dict[str, Any]) -> None:
    report = validate_workflow(read(name), ObjectInfo(live_info))
    assert report.ok, str(report)
    # Only the real model and input files are missing from the test server: nothing else warns.
    assert all("is not installed" in issue.message for issue in report.warnings), str(report)


def test_ip_adapter_workflow_needs_the_fixture_and_validates_with_it(live_info: dict, ipadapter_info: dict) -> None:
    workflow = read("tcd_sdxl_ip_adapter")
    alone = validate_workflow(workflow, ObjectInfo(live_info))
    assert {
        issue.node.split("(")[-1].rstrip(")") for issue in alone.errors if "unknown node type" in issue.message
    } == {
        "IPAdapterModelLoader",
        "IPAdapterAdvanced",
    }
    report = validate_workflow(workflow, ObjectInfo(live_info, ipadapter_info))
    assert report.ok, str(report)


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
            if isinstance(value, str) and value.endswith(".safetensors")
        }
        assert file_inputs == {m["name"] for m in workflow["models"]}, name


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
        (guider,) = _nodes(prompt, "CFGGuider")
        (loader,) = _nodes(prompt, "TrajectoryConsistencyLoraLoader")
        assert (sampler["gamma"], sampler["gamma_schedule"]) == (0.3, "constant")
        assert (scheduler["steps"], scheduler["original_inference_steps"]) == (4, 50)
        assert guider["cfg"] == 1.0
        assert loader["tcd_lora_strength"] == 1.0
        assert len(_nodes(prompt, "SamplerCustomAdvanced")) == 1
        assert scheduler["strength"] == (0.5 if name == "tcd_sdxl_img2img" else 1.0), name
        expected_lora = "TCD-SD15-LoRA.safetensors" if "sd15" in name else "TCD-SDXL-LoRA.safetensors"
        assert loader["tcd_lora"] == expected_lora
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


# --- broken copies ------------------------------------------------------------------------------------


def _node_of(workflow: dict[str, Any], node_type: str) -> dict[str, Any]:
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


def test_broken_copies_fail_with_the_right_message(info: ObjectInfo) -> None:
    original = read("tcd_sdxl_text_to_image")
    assert validate_workflow(original, info).ok

    unknown = copy.deepcopy(original)
    scheduler = _node_of(unknown, "TrajectoryConsistencyScheduler")
    scheduler["type"] = "TrajectoryConsistencySchedulr"
    errors = validate_workflow(unknown, info).errors
    assert len(errors) == 1, errors
    assert str(errors[0]).startswith(
        f'error: node {scheduler["id"]} "TrajectoryConsistencySchedulr" (TrajectoryConsistencySchedulr): '
        'unknown node type "TrajectoryConsistencySchedulr"'
    )

    out_of_range = copy.deepcopy(original)
    sampler = _node_of(out_of_range, "TrajectoryConsistencySampler")
    sampler["widgets_values"][0] = 1.5
    errors = validate_workflow(out_of_range, info).errors
    assert [str(e) for e in errors] == [
        f'error: node {sampler["id"]} "TCD Sampler" (TrajectoryConsistencySampler), input "gamma": '
        "1.5 is above the maximum 1.0"
    ]

    wrong_link = copy.deepcopy(original)
    decode = _node_of(wrong_link, "VAEDecode")
    checkpoint = _node_of(wrong_link, "CheckpointLoaderSimple")
    vae_link = next(i["link"] for i in decode["inputs"] if i["name"] == "vae")
    for link in wrong_link["links"]:
        if link[0] == vae_link:
            link[2], link[5] = 1, "CLIP"  # the checkpoint's CLIP into VAEDecode.vae
    errors = validate_workflow(wrong_link, info).errors
    assert len(errors) == 1, errors
    message = str(errors[0])
    assert message.startswith(f'error: node {decode["id"]} "VAE Decode" (VAEDecode), input "vae": ')
    assert (
        f'brings CLIP from output 1 "CLIP" of node {checkpoint["id"]} "Load Checkpoint" (CheckpointLoaderSimple)'
        in (message)
    )
    assert message.endswith("but this input takes VAE: types do not match")


def test_cli_against_the_live_server(comfy_server: ComfyServer, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workflow_tools", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )

    files = [str(WORKFLOWS_DIR / f"{name}.json") for name in NAMES]
    result = cli("validate", *files, "--object-info", comfy_server.url, "--object-info", str(IPADAPTER_FIXTURE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": ok (") == len(NAMES)
    without_fixture = cli("validate", files[NAMES.index("tcd_sdxl_ip_adapter")], "--object-info", comfy_server.url)
    assert without_fixture.returncode == 1 and 'unknown node type "IPAdapterAdvanced"' in without_fixture.stdout
    broken = read("tcd_sd15_text_to_image")
    _node_of(broken, "EmptyLatentImage")["widgets_values"][0] = 8
    broken_path = tmp_path / "broken.json"
    broken_path.write_text(json.dumps(broken))
    failed = cli("validate", str(broken_path), "--object-info", comfy_server.url + "/object_info")
    assert failed.returncode == 1
    assert '"Empty Latent Image" (EmptyLatentImage), input "width": 8 is below the minimum 16' in failed.stdout
    converted = cli("convert", files[0], "--object-info", comfy_server.url, "--object-info", str(IPADAPTER_FIXTURE))
    assert converted.returncode == 0, converted.stderr
    info = ObjectInfo(comfy_server.object_info(), load_object_info(IPADAPTER_FIXTURE))
    assert json.loads(converted.stdout) == to_api(read(NAMES[0]), info)


# --- end to end ---------------------------------------------------------------------------------------


def _input_images() -> dict[str, Image.Image]:
    """Small input pictures for the workflows' Load Image nodes, by the names the workflows use."""
    shapes = Image.new("RGB", (96, 96), (230, 225, 210))
    draw = ImageDraw.Draw(shapes)
    draw.rectangle([12, 20, 60, 70], fill=(200, 40, 30))
    draw.ellipse([40, 10, 88, 58], fill=(30, 60, 190))
    depth = Image.linear_gradient("L").resize((96, 96)).convert("RGB")
    ImageDraw.Draw(depth).ellipse([30, 30, 70, 70], fill=(255, 255, 255))
    return {
        GEN.CANNY_SOURCE: shapes,
        GEN.DEPTH_MAP: depth,
        GEN.IMG2IMG_SOURCE: shapes.rotate(90),
        GEN.IP_REFERENCE: shapes,
    }


def _substitutions(test_models: dict[str, Path]) -> dict[str, str]:
    """Real model file names -> the random-weight SD1.5 test models standing in for them."""
    checkpoint, lora = test_models["checkpoint_sd15"].name, test_models["lora_sd15"].name
    controlnet = test_models["controlnet_sd15"].name
    return {
        GEN.SDXL_BASE.name: checkpoint,
        GEN.SD15_BASE.name: checkpoint,
        GEN.TCD_SDXL.name: lora,
        GEN.TCD_SD15.name: lora,
        GEN.PAPERCUT.name: test_models["lora_style_sd15"].name,
        GEN.CANNY_SDXL.name: controlnet,
        GEN.DEPTH_SDXL.name: controlnet,
    }


def for_test_models(prompt: dict[str, Any], substitutions: dict[str, str], seed: int) -> dict[str, Any]:
    """The API prompt with test models, SIZE x SIZE images, STEPS steps and a fresh seed (no cache hits)."""
    prompt = copy.deepcopy(prompt)
    for entry in prompt.values():
        inputs = entry["inputs"]
        for key, value in inputs.items():
            if isinstance(value, str) and value in substitutions:
                inputs[key] = substitutions[value]
        if entry["class_type"] in ("EmptyLatentImage", "ImageScale"):
            inputs["width"] = inputs["height"] = SIZE
        for key in ("seed", "noise_seed"):
            if key in inputs:
                inputs[key] = seed
        if entry["class_type"] in ("TrajectoryConsistencyScheduler", "KSampler"):
            inputs["steps"] = STEPS
    return prompt


@pytest.fixture(scope="module")
def runnable_server(comfy_server: ComfyServer) -> Iterator[ComfyServer]:
    for name, image in _input_images().items():
        image.save(comfy_server.input_dir / name)
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
