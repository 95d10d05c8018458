"""The pack on each ComfyUI host: 0.3.75 (the main host) and 0.30.0 (dev/hosts.sh), each a real HTTP server.

Every test here takes `host_server` and so runs once per host (tests/conftest.py). The workflow is the
README's main job (workflows/tcd_sd15_text_to_image.json, as `dev/run` runs it: Load Checkpoint -> TCD
LoRA Loader -> TCD Scheduler + TCD Sampler -> SamplerCustomAdvanced), converted against each host's own
/object_info, so each host gets the node names and inputs it has.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit import node_contract as nc
from devkit.host import PACK_DIR_NAME, REPO_ROOT, ComfyServer, ComfyServerError, defined_hosts, dev_dir, extra_host
from devkit.run_workflow import DEFAULT_WORKFLOW, api_prompt, image_at_lora_strength

SIZE, STEPS = 64, 2


def test_a_host_that_is_not_provisioned_is_an_error_that_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "0.30.0" in defined_hosts()
    monkeypatch.setenv("TCD_DEV_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"0\.30\.0 is not provisioned .*TCD_HOSTS=0\.30\.0 dev/test"):
        extra_host("0.30.0")
    with pytest.raises(RuntimeError, match="no ComfyUI host 9.9.9 is defined"):
        extra_host("9.9.9")


@pytest.mark.parametrize("version", defined_hosts())
def test_a_further_hosts_venv_shares_the_main_venvs_torch(version: str) -> None:
    """dev/hosts.sh installs only what the host adds: torch is the main venv's, never a second copy."""
    host = extra_host(version)
    code = "import torch, torchaudio; print(torch.__file__, torch.__version__)"
    result = subprocess.run([str(host.python), "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    path, found = result.stdout.split()
    assert Path(path).is_relative_to(dev_dir() / "venv"), path
    assert (found, Path(path)) == (torch.__version__, Path(torch.__file__)), (found, sys.executable)


def test_every_pack_node_loads_with_no_import_error(host_server: ComfyServer) -> None:
    # Start-up only: the main host's server is shared with tests that make nodes fail on purpose.
    log = host_server.log_text().partition("Starting server")[0]
    assert "Import times for custom nodes:" in log, host_server.log_tail()
    imports = host_server.custom_node_imports()
    pack = str(host_server.pack_link)
    assert imports.get(pack) is True, f"the pack did not import on {host_server.version}\n{host_server.log_tail()}"
    # The import-times line is the one line of the start-up that names the pack: no error, warning or
    # traceback of its modules (ComfyUI's own failures, e.g. 0.3.75's audio nodes without torchaudio, don't count).
    # (A fresh clone's dev/test provisions inside the repository: lines of that tree are ComfyUI's.)
    ours = [line.replace(str(dev_dir()), "<dev>") for line in log.splitlines()]
    (line,) = [line for line in ours if PACK_DIR_NAME in line or str(REPO_ROOT) in line]
    assert re.search(r"[\d.]+ seconds: ", line), line
    # Every node of the pack is served, with the inputs and outputs its contract pins.
    live = nc.contract(host_server.object_info(), nc.server_file_lists(host_server))
    pinned = nc.read_fixture()["current"]["nodes"]
    assert sorted(live) == sorted(pinned), f"ComfyUI {host_server.version} serves {sorted(live)}"
    message = nc.stale_fixture_message(nc.read_fixture(), live)
    assert message is None, f"ComfyUI {host_server.version}: {message}"


def _main_job(server: ComfyServer, test_models: dict[str, Path], lora_strength: float) -> np.ndarray:
    """The README's main job at SIZE x SIZE, STEPS steps, on the random-weight SD1.5 checkpoint and TCD LoRA."""
    settings = argparse.Namespace(size=SIZE, seed=7, steps=STEPS, gamma=0.3, prompt=None)
    lora = test_models["lora_sd15"].name
    prompt = api_prompt(DEFAULT_WORKFLOW, server.object_info(), test_models["checkpoint_sd15"].name, lora, settings)
    kinds = {node["class_type"] for node in prompt.values()}
    assert {f"TrajectoryConsistency{kind}" for kind in ("LoraLoader", "Sampler", "Scheduler")} <= kinds, kinds
    return np.asarray(image_at_lora_strength(server, prompt, lora_strength), dtype=np.float32)


def test_tcd_text_to_image_with_the_tcd_lora_runs(host_server: ComfyServer, test_models: dict[str, Path]) -> None:
    log_start = len(host_server.log_text())
    with_lora = _main_job(host_server, test_models, lora_strength=1.0)
    log = host_server.log_text()[log_start:]
    assert "lora key not loaded" not in log and "fits this model partly" not in log, log
    assert with_lora.shape == (SIZE, SIZE, 3)
    assert np.isfinite(with_lora).all()
    # NaNs decode to one flat colour: every channel must vary.
    assert (with_lora.reshape(-1, 3).std(axis=0) > 0.5).all(), "the image is flat"
    without = _main_job(host_server, test_models, lora_strength=0.0)
    assert np.abs(with_lora - without).mean() > 1.0, "the TCD LoRA Loader's LoRA does not change the image"


# --- distillation on each host: dataset nodes -> TCD Distill LoRA -> SaveLoRA -> LoraModelLoader -> TCD Sampler -------

Graph = dict[str, dict]
DISTILL = "TrajectoryConsistencyDistillLoRA"
# A tiny run (2 steps, rank 4, fp32, a large lr so that 2 steps visibly change the image).
DISTILL_WIDGETS = {"batch_size": 2, "steps": 2, "learning_rate": 0.01, "rank": 4, "training_dtype": "fp32",
                   "ema_decay": 0.0, "existing_lora": "None"}  # fmt: skip
# Two sizes: 64x64 (two images) and 128x64 pixels, with captions beside them, as the dataset nodes read a folder.
DATASET = {"fox-1": (64, 64), "fox-2": (64, 64), "wide-fox": (128, 64)}


def _dataset_folder(server: ComfyServer) -> str:
    folder = server.input_dir / "tcd-distill-set"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    for name, (width, height) in DATASET.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"a paper cut {name}")
    return folder.name


def _with_defaults(server: ComfyServer, class_type: str, inputs: dict) -> dict:
    """A node of the API prompt with every widget this host's node has that ``inputs`` leaves out at its default
    (e.g. LoraModelLoader's `bypass`, which 0.30.0 has and 0.3.75 lacks)."""
    spec = server.object_info(class_type)["input"]
    filled = dict(inputs)
    for name, (kind, *options) in {**spec.get("required", {}), **spec.get("optional", {})}.items():
        if name not in filled and options and isinstance(options[0], dict) and "default" in options[0]:
            filled[name] = options[0]["default"]
        elif name not in filled and isinstance(kind, list) and kind:
            filled[name] = kind[0]
    return {"class_type": class_type, "inputs": filled}


def _distill_graph(server: ComfyServer, ckpt: str, tag: str, model: list | None = None, **widgets: object) -> Graph:
    """The README's distillation workflow on this host's nodes: Load Image-Text Dataset from Folder -> Make
    Training Dataset (-> Resolution Bucket where the host has it) -> TCD Distill LoRA -> Save LoRA Weights, and
    Load LoRA Model -> TCD Scheduler + TCD Sampler; ``model`` replaces the checkpoint's model (e.g. UNETLoader's)."""
    model = model or ["ckpt", 0]
    bucketed = "ResolutionBucket" in server.object_info()
    graph: Graph = {
        "ckpt": _with_defaults(server, "CheckpointLoaderSimple", {"ckpt_name": ckpt}),
        "data": _with_defaults(server, "LoadImageTextDataSetFromFolder", {"folder": _dataset_folder(server)}),
        "dataset": _with_defaults(
            server,
            "MakeTrainingDataset",
            {"images": ["data", 0], "vae": ["ckpt", 2], "clip": ["ckpt", 1], "texts": ["data", 1]},
        ),  # fmt: skip
        "negative": _with_defaults(server, "CLIPTextEncode", {"text": "", "clip": ["ckpt", 1]}),
        "prompt": _with_defaults(server, "CLIPTextEncode", {"text": "a paper cut fox", "clip": ["ckpt", 1]}),
    }
    data = ["dataset", 0], ["dataset", 1]
    if bucketed:  # ComfyUI 0.30.0: one batched latent per size
        graph["bucket"] = _with_defaults(
            server, "ResolutionBucket", {"latents": ["dataset", 0], "conditioning": ["dataset", 1]}
        )
        data = ["bucket", 0], ["bucket", 1]
    inputs = {"model": model, "latents": data[0], "positive": data[1], "negative": ["negative", 0],
              **DISTILL_WIDGETS, **widgets}  # fmt: skip
    graph["distill"] = _with_defaults(server, DISTILL, inputs)
    graph["save"] = _with_defaults(
        server, "SaveLoRA", {"lora": ["distill", 1], "prefix": f"loras/tcd-{tag}", "steps": ["distill", 3]}
    )
    graph["student"] = _with_defaults(
        server, "LoraModelLoader", {"model": model, "lora": ["distill", 1], "strength_model": 1.0}
    )
    for name, source in (("student_image", ["student", 0]), ("base_image", model)):
        graph[f"{name}_sigmas"] = _with_defaults(
            server, "TrajectoryConsistencyScheduler", {"model": source, "steps": 2}
        )
        graph[f"{name}_sampler"] = _with_defaults(server, "TrajectoryConsistencySampler", {})
        graph[f"{name}_latent"] = _with_defaults(server, "EmptyLatentImage", {"width": 64, "height": 64})
        graph[f"{name}_sample"] = _with_defaults(
            server, "SamplerCustom",
            {"model": source, "add_noise": True, "noise_seed": 3, "cfg": 1.0, "positive": ["prompt", 0],
             "negative": ["negative", 0], "sampler": [f"{name}_sampler", 0], "sigmas": [f"{name}_sigmas", 0],
             "latent_image": [f"{name}_latent", 0]},
        )  # fmt: skip
        graph[f"{name}_decode"] = _with_defaults(
            server, "VAEDecode", {"samples": [f"{name}_sample", 0], "vae": ["ckpt", 2]}
        )
        graph[name] = _with_defaults(server, "SaveImage", {"images": [f"{name}_decode", 0], "filename_prefix": name})
    return graph


def _run_distillation(server: ComfyServer, graph: Graph, tag: str) -> tuple[dict, str]:
    """Run ``graph``: the saved LoRA's tensors and the server's log of the run (checked for dropped keys)."""
    from safetensors.torch import load_file

    log_start = len(server.log_text())
    entry = server.run(graph, timeout=600)
    log = server.log_text()[log_start:]
    (saved,) = sorted((server.output_dir / "loras").glob(f"tcd-{tag}_*.safetensors"))
    lora = load_file(saved)
    images = {name: np.asarray(Image.open(server.output_images(entry, name)[0]).convert("RGB"), dtype=np.float32)
              for name in ("student_image", "base_image")}  # fmt: skip
    assert np.abs(images["student_image"] - images["base_image"]).mean() > 0.5, "the LoRA does not change the image"
    return lora, log


def _assert_every_key_loads(lora: dict, log: str) -> None:
    assert lora and all(k.startswith("diffusion_model.") for k in lora), sorted(lora)[:3]
    assert {k.rsplit(".", 2)[-2] for k in lora if not k.endswith("alpha")} == {"lora_up", "lora_down"}
    assert "lora key not loaded" not in log and "ERROR" not in log, log


def test_distill_workflow_with_a_multi_resolution_dataset_in_bucket_mode(
    host_server: ComfyServer, tiny_checkpoint: str
) -> None:
    """End to end on each host, the dataset of two sizes drawn one bucket per batch (0.30.0 buckets it with
    Resolution Bucket; 0.3.75, which lacks that node, gives the node one latent per image and the node buckets)."""
    tag = f"bucketed-{host_server.version}"
    graph = _distill_graph(host_server, tiny_checkpoint, tag, bucket_mode=True)
    lora, log = _run_distillation(host_server, graph, tag)
    _assert_every_key_loads(lora, log)


def test_bypass_mode_on_fp8_weights_trains_on_a_host_that_has_it_and_is_refused_on_one_that_lacks_it(
    host_server: ComfyServer, tiny_checkpoint: str
) -> None:
    """The UNet loaded by UNETLoader with fp8_e4m3fn weights, trained in bypass mode; 0.3.75 has no bypass
    adapters: the prompt fails naming the input and the ComfyUI version that has them, and the server goes on."""
    from devkit.model_files import default_models_dir
    from devkit.tiny_checkpoint import UNET_NAME, build_tiny_sd15_unet

    build_tiny_sd15_unet(default_models_dir())
    tag = f"bypass-fp8-{host_server.version}"
    unet = _with_defaults(host_server, "UNETLoader", {"unet_name": UNET_NAME, "weight_dtype": "fp8_e4m3fn"})
    graph = {"unet": unet, **_distill_graph(host_server, tiny_checkpoint, tag, model=["unet", 0], bypass_mode=True)}
    if host_server.version == "0.3.75":
        with pytest.raises(ComfyServerError, match=r"TCD Distill LoRA bypass_mode: .*ComfyUI 0.30.0 or newer has it"):
            host_server.run(graph, timeout=600)
        assert host_server.object_info(DISTILL)["input"], "the server stopped serving"
        return
    lora, log = _run_distillation(host_server, graph, tag)
    _assert_every_key_loads(lora, log)
    assert "float8_e4m3fn" in log or "fp8" in log.lower(), "the UNet did not load with fp8 weights"


# The in-process checks of Train LoRA's newer mechanisms (tests/test_distill_node.py): on the main host (0.3.75)
# they check the refusals; on a further host that has the mechanisms they train with them.
NEWER_MECHANISM_TESTS = "mechanism or fp8 or previews or families or bypass"


@pytest.mark.parametrize("version", defined_hosts())
def test_the_newer_training_mechanisms_train_in_process_on_each_further_host(version: str) -> None:
    """tests/test_distill_node.py's mechanism tests run inside ComfyUI VERSION (its tree, its venv's python):
    bypass on fp8 weights, offloading, checkpoint depth, fp8 backward, LoHa / LoKr / OFT and previews."""
    host = extra_host(version)
    env = {**os.environ, "COMFYUI_PATH": str(host.comfy_path), "PYTHONPATH": str(REPO_ROOT)}
    command = [str(host.python), "-m", "pytest", "tests/test_distill_node.py", "-q", "-p", "no:cacheprovider",
               "-k", NEWER_MECHANISM_TESTS]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "failed" not in summary, result.stdout[-4000:]
    assert re.search(r"\b10 passed", summary), f"ComfyUI {version}: {summary}"
