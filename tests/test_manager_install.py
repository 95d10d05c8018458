"""A ComfyUI-Manager style install into a fresh ComfyUI: git clone, pip install -r requirements.txt, start.

What the Manager does for a pack from its git URL, done here with the committed HEAD of this repository:

1. ``git clone <repo> ComfyUI/custom_nodes/comfyui-tcd-sampling`` into a fresh ComfyUI tree (a copy of
   $COMFYUI_PATH without its custom_nodes, models, user, input and output folders);
2. ``pip install -r requirements.txt`` of the clone into the running Python environment (and install.py,
   were there one); here it must change nothing: ``pip freeze`` and torch's version stay the same, and
   ``pip install --dry-run --report`` shows that nothing would be installed;
3. start that ComfyUI: the pack imports (no IMPORT FAILED) and its three nodes are served.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from devkit.host import PACK_DIR_NAME, REPO_ROOT, ComfyServer, comfyui_path

PACK_NODES = ("TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader")
# Not copied into the fresh tree: what a user's own install adds (other packs, models, outputs, a venv).
LOCAL_STATE = ("custom_nodes", "models", "user", "input", "output", "temp", ".git", "venv", ".venv")
# Packages a node pack must never pull in: ComfyUI's torch stack, other frameworks, GPU runtimes.
HEAVY = ("torch", "torchvision", "torchaudio", "xformers", "triton", "tensorflow", "jax", "onnxruntime", "nvidia-")
PIP_ENV = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")


def run(command: list[str], cwd: Path | None = None, timeout: float = 300.0) -> str:
    result = subprocess.run(command, cwd=cwd, env=PIP_ENV, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def fresh_comfyui(target: Path) -> Path:
    """A ComfyUI tree as a fresh download has it: the source, empty model and custom_nodes folders."""
    source = comfyui_path()

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {name for name in names if name == "__pycache__" or name.endswith(".pyc")}
        if Path(folder) == source:  # only at the top: comfy/ldm/models is source code
            skip |= set(names) & set(LOCAL_STATE)
        return skip

    shutil.copytree(source, target, symlinks=True, ignore=ignore)
    for folder in ("custom_nodes", "user", "input", "output"):
        (target / folder).mkdir()
    for folder in (source / "models").iterdir() if (source / "models").is_dir() else ():
        if folder.is_dir():
            (target / "models" / folder.name).mkdir(parents=True)
    return target


def python_state() -> tuple[str, str]:
    """(pip freeze, torch version) of this interpreter."""
    freeze = run([sys.executable, "-m", "pip", "freeze", "--all"])
    torch_version = run([sys.executable, "-c", "import torch; print(torch.__version__)"]).strip()
    return freeze, torch_version


class FreshInstallServer(ComfyServer):
    """ComfyServer on the fresh tree, loading custom nodes from that tree's own custom_nodes/ only (no symlink)."""

    def __init__(self, comfy_root: Path, work_dir: Path) -> None:
        super().__init__(work_dir=work_dir)
        self.comfy_path = comfy_root
        self.custom_nodes_dir = comfy_root / "custom_nodes"

    def _write_layout(self) -> None:
        for folder in (self.user_dir, self.temp_dir, self.output_dir, self.input_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("fresh_install:\n")  # adds no folders: ComfyUI's own layout only


def test_manager_style_install_into_a_fresh_comfyui(tmp_path: Path) -> None:
    comfy_root = fresh_comfyui(tmp_path / "ComfyUI")
    clone = comfy_root / "custom_nodes" / PACK_DIR_NAME

    # 1. git clone of the committed HEAD.
    run(["git", "clone", "--quiet", "--recursive", str(REPO_ROOT), str(clone)], timeout=120)
    tracked = [clone / name for name in run(["git", "ls-files"], cwd=clone).splitlines()]
    assert (clone / "__init__.py").is_file() and (clone / "requirements.txt").is_file()
    assert not [p for p in tracked if p.suffix in (".safetensors", ".ckpt", ".pt", ".bin")], "model files committed"
    size = sum(p.stat().st_size for p in tracked if p.is_file())
    assert size < 20_000_000, f"the clone is {size / 1e6:.1f} MB: the Manager downloads all of it"

    # 2. pip install -r requirements.txt, as the Manager runs it: nothing to install, nothing changed.
    requirements = clone / "requirements.txt"
    report_path = tmp_path / "pip-report.json"
    run([sys.executable, "-m", "pip", "install", "--dry-run", "--report", str(report_path), "-r", str(requirements)])
    would_install = [item["metadata"]["name"] for item in json.loads(report_path.read_text())["install"]]
    heavy = [name for name in would_install if name.lower().startswith(HEAVY)]
    assert not heavy, f"pip install -r requirements.txt would install {heavy}: a node pack must never bring these"
    assert would_install == [], f"pip install -r requirements.txt would install {would_install}"

    freeze_before, torch_before = python_state()
    run([sys.executable, "-m", "pip", "install", "-r", str(requirements)])
    if (clone / "install.py").is_file():  # the Manager runs it after the requirements
        run([sys.executable, "install.py"], cwd=clone)
    freeze_after, torch_after = python_state()
    assert torch_after == torch_before, f"installing the pack changed torch {torch_before} -> {torch_after}"
    assert freeze_after == freeze_before, "installing the pack changed the environment:\n" + "\n".join(
        sorted(set(freeze_before.splitlines()) ^ set(freeze_after.splitlines()))
    )

    # 3. Start that ComfyUI: the pack imports from its custom_nodes and serves its nodes.
    with FreshInstallServer(comfy_root, tmp_path / "server") as server:
        imports = server.custom_node_imports()
        assert imports.get(str(clone)) is True, f"{clone} did not import: {imports}\n{server.log_tail()}"
        failed = [line for line in server.log_text().splitlines() if "IMPORT FAILED" in line and PACK_DIR_NAME in line]
        assert not failed, failed
        info = server.object_info()
        missing = [node for node in PACK_NODES if node not in info]
        assert not missing, f"nodes not registered after the install: {missing}"
        assert info["TrajectoryConsistencySampler"]["python_module"] == f"custom_nodes.{PACK_DIR_NAME}"
        ksampler = info["KSampler"]["input"]["required"]
        assert "tcd" in ksampler["sampler_name"][0] and "tcd" in ksampler["scheduler"][0]
