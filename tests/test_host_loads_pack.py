"""A real ComfyUI 0.3.75 loads the pack, and the random-weight test models work through it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from devkit.host import REPO_ROOT, ComfyServer, ComfyServerError, txt2img_prompt


def _image(server: ComfyServer, entry: dict) -> np.ndarray:
    paths = server.output_images(entry, "save")
    assert len(paths) == 1, entry.get("outputs")
    assert paths[0].is_file(), paths[0]
    with Image.open(paths[0]) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


def _sample(server: ComfyServer, prompt: dict) -> np.ndarray:
    return _image(server, server.run(prompt, timeout=300))


def _with_lora(prompt: dict, lora_name: str, strength: float = 1.0) -> dict:
    prompt["lora"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["ckpt", 0], "lora_name": lora_name, "strength_model": strength},
    }
    prompt["sampler"]["inputs"]["model"] = ["lora", 0]
    return prompt


def test_pack_imports_from_custom_nodes(comfy_server: ComfyServer) -> None:
    assert comfy_server.pack_link.resolve() == REPO_ROOT
    log = comfy_server.log_text()
    assert "Import times for custom nodes:" in log, comfy_server.log_tail()
    imports = comfy_server.custom_node_imports()
    pack = str(comfy_server.pack_link)
    assert pack in imports, f"{pack} missing from the import times: {imports}\n{comfy_server.log_tail()}"
    assert imports[pack], f"the pack failed to import\n{comfy_server.log_tail()}"
    assert f"Cannot import {pack}" not in log
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "comfyui-tcd-sampling" in line]
    assert not failed, failed

    info = comfy_server.object_info()
    assert "KSampler" in info and "CheckpointLoaderSimple" in info
    assert comfy_server.object_info("KSampler")["name"] == "KSampler"


def test_test_models_are_listed(comfy_server: ComfyServer, test_models: dict) -> None:
    ckpt_names = comfy_server.object_info("CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0]
    assert test_models["checkpoint_sd15"].name in ckpt_names
    lora_names = comfy_server.object_info("LoraLoaderModelOnly")["input"]["required"]["lora_name"][0]
    for key in ("lora_sd15", "lora_style_sd15", "lora_sdxl", "not_a_lora", "corrupt_lora"):
        assert test_models[key].name in lora_names
    cnet_names = comfy_server.object_info("ControlNetLoader")["input"]["required"]["control_net_name"][0]
    assert test_models["controlnet_sd15"].name in cnet_names


def test_checkpoint_samples_an_image(comfy_server: ComfyServer, test_models: dict) -> None:
    pixels = _sample(comfy_server, txt2img_prompt(test_models["checkpoint_sd15"].name, seed=101))
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 0, "the test checkpoint decodes to a constant image"
    assert np.isfinite(pixels).all()


def test_lora_changes_the_output(comfy_server: ComfyServer, test_models: dict) -> None:
    ckpt = test_models["checkpoint_sd15"].name
    base = _sample(comfy_server, txt2img_prompt(ckpt, seed=202))
    for key in ("lora_sd15", "lora_style_sd15"):
        patched = _sample(comfy_server, _with_lora(txt2img_prompt(ckpt, seed=202), test_models[key].name))
        assert np.abs(patched - base).mean() > 1.0, f"{key} barely changes the image"


@pytest.mark.parametrize("key", ["lora_sdxl", "not_a_lora"])
def test_foreign_lora_files_patch_nothing(comfy_server: ComfyServer, test_models: dict, key: str) -> None:
    ckpt = test_models["checkpoint_sd15"].name
    base = _sample(comfy_server, txt2img_prompt(ckpt, seed=303))
    patched = _sample(comfy_server, _with_lora(txt2img_prompt(ckpt, seed=303), test_models[key].name))
    np.testing.assert_array_equal(patched, base)


def test_corrupt_lora_fails_execution(comfy_server: ComfyServer, test_models: dict) -> None:
    prompt = _with_lora(txt2img_prompt(test_models["checkpoint_sd15"].name, seed=404), test_models["corrupt_lora"].name)
    with pytest.raises(ComfyServerError, match="failed"):
        comfy_server.run(prompt, timeout=300)


def test_controlnet_changes_the_output(comfy_server: ComfyServer, test_models: dict) -> None:
    hint = np.zeros((64, 64, 3), dtype=np.uint8)
    hint[16:48, 16:48] = 255  # a white square on black
    Image.fromarray(hint).save(comfy_server.input_dir / "tcd-test-hint.png")

    ckpt = test_models["checkpoint_sd15"].name
    base = _sample(comfy_server, txt2img_prompt(ckpt, seed=505))
    prompt = txt2img_prompt(ckpt, seed=505)
    prompt["cnet"] = {
        "class_type": "ControlNetLoader",
        "inputs": {"control_net_name": test_models["controlnet_sd15"].name},
    }
    prompt["hint"] = {"class_type": "LoadImage", "inputs": {"image": "tcd-test-hint.png"}}
    prompt["apply"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["positive", 0],
            "negative": ["negative", 0],
            "control_net": ["cnet", 0],
            "image": ["hint", 0],
            "strength": 1.0,
            "start_percent": 0.0,
            "end_percent": 1.0,
            "vae": ["ckpt", 2],
        },
    }
    prompt["sampler"]["inputs"]["positive"] = ["apply", 0]
    prompt["sampler"]["inputs"]["negative"] = ["apply", 1]
    controlled = _sample(comfy_server, prompt)
    assert np.abs(controlled - base).mean() > 1.0, "the test ControlNet barely changes the image"


def test_rejected_prompt_raises_with_node_errors(comfy_server: ComfyServer) -> None:
    prompt = txt2img_prompt("no-such-checkpoint.safetensors", seed=606)
    with pytest.raises(ComfyServerError, match="node_errors"):
        comfy_server.run(prompt)
