"""The pack on each ComfyUI host: 0.3.75 (the main host) and 0.30.0 (dev/hosts.sh), each a real HTTP server.

Every test here takes `host_server` and so runs once per host (tests/conftest.py). The workflow is the
README's main job (workflows/tcd_sd15_text_to_image.json, as `dev/run` runs it: Load Checkpoint -> TCD
LoRA Loader -> TCD Scheduler + TCD Sampler -> SamplerCustomAdvanced), converted against each host's own
/object_info, so each host gets the node names and inputs it has.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from devkit import node_contract as nc
from devkit.host import PACK_DIR_NAME, REPO_ROOT, ComfyServer, defined_hosts, dev_dir, extra_host
from devkit.run_workflow import DEFAULT_WORKFLOW, api_prompt

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
    (line,) = [line for line in log.splitlines() if PACK_DIR_NAME in line or str(REPO_ROOT) in line]
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
    for node in prompt.values():
        if node["class_type"] == "TrajectoryConsistencyLoraLoader":
            node["inputs"]["tcd_lora_strength"] = lora_strength
    entry = server.run(prompt, timeout=600)
    (path,) = server.output_images(entry)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


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
