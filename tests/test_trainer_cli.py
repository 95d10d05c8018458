"""tcd-train's command line as a user meets it, each in a real process: ``--help`` with every default, the
start-up summary and its warnings (CPU by default, a warm-up longer than the run, a batch larger than the data
set), a missing ComfyUI requirement as one line, and the README's install into ComfyUI's Python environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_distill_trainer import PACKAGE_FILES, TRAINER
from test_distill_trainer import checkpoint as checkpoint  # noqa: F401 - the module fixture

from devkit.host import REPO_ROOT, comfyui_path
from devkit.pack_import import import_root
from devkit.python_envs import comfyui_environment, environment_without

PREFIX = "tcd_train: "


def image_folder(folder: Path, count: int) -> Path:
    """``count`` random 80x64 images with captions beside them (the --train_data_dir layout)."""
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = (np.random.default_rng(i).random((64, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text("a red square")
    return folder


def run_args(checkpoint: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny run (64 px, rank 4, no TensorBoard) with the trainer's defaults for everything ``extra`` omits."""
    return ["--pretrained_model", str(checkpoint), "--train_data_dir", str(data), "--resolution", "64",
            "--lora_rank", "4", "--output_dir", str(out), "--report_to", "none", *extra]  # fmt: skip


def start(argv: list[str], python: str = sys.executable, **env: str) -> subprocess.Popen:
    """The trainer in a new process, no GPU visible (CUDA_VISIBLE_DEVICES=''), stderr apart from stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.Popen([python, "-m", TRAINER, *argv], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def outcome(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a started run, kept so that several tests can read one run."""
    if not hasattr(process, "tcd_outcome"):
        stdout, stderr = process.communicate(timeout=timeout)
        process.tcd_outcome = (process.returncode, stdout, stderr)
    return process.tcd_outcome


def messages(stderr: str) -> list[str]:
    """The trainer's own lines, without their prefix."""
    return [line[len(PREFIX) :] for line in stderr.splitlines() if line.startswith(PREFIX)]


def help_blocks(text: str) -> dict[str, str]:
    """``--help`` output as {option: its help text on one line}."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"  (-[-\w]+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {option: " ".join(block.split()) for option, block in blocks.items()}


def test_help_shows_every_option_with_help_text_and_its_default() -> None:
    from comfyui_tcd_sampling.tcd_train.options import build_parser

    shown = subprocess.run([sys.executable, "-m", TRAINER, "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert shown.returncode == 0 and shown.stdout.startswith("usage: tcd-train"), shown.stderr
    blocks = help_blocks(shown.stdout)
    for action in build_parser()._actions:
        if not action.option_strings or action.help == "==SUPPRESS==" or action.dest == "help":
            continue
        block = blocks[action.option_strings[0]]
        assert len(block.split()) > 2, f"{action.option_strings[0]} has no help text: {block!r}"
        if action.default is not None and action.default is not False:
            assert f"(default: {'empty' if action.default == '' else action.default})" in block, block
    assert "(default: 500)" in blocks["--lr_warmup_steps"] and "(default: 0.0001)" in blocks["--learning_rate"]
    assert "(default: 1)" in blocks["--train_batch_size"] and "(default: True)" in blocks["--gradient_checkpointing"]


@pytest.fixture(scope="module")
def runs(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.Popen]:
    """Two runs started at once on 2 images: ``surprising`` with the defaults that surprise (no --cpu, no GPU
    visible, the default 500 warm-up steps for a 2-step run, batch 4), and ``plain`` (--cpu, no warm-up,
    batch 1), which must print its summary and no warning."""
    root = tmp_path_factory.mktemp("startup")
    data = image_folder(root / "images", 2)
    surprising = start(run_args(checkpoint, data, root / "surprising", "--max_train_steps", "2",
                                "--train_batch_size", "4"))  # fmt: skip
    plain = start(run_args(checkpoint, data, root / "plain", "--max_train_steps", "1", "--cpu",
                           "--lr_warmup_steps", "0"))  # fmt: skip
    yield {"surprising": surprising, "plain": plain}
    for process in (surprising, plain):
        if process.poll() is None:
            process.kill()
            process.wait()


def test_start_up_summary_is_printed_before_the_first_step(runs: dict) -> None:
    for name, steps, batch in (("surprising", 2, 4), ("plain", 1, 1)):
        code, stdout, stderr = outcome(runs[name])
        assert code == 0, stderr[-3000:]
        lines = messages(stderr)
        assert lines[0] == "device cpu, 1 process, mixed precision no", lines
        assert "model SD15 (tcd-tiny-sd15.safetensors), method tcd, LoRA rank 4" in lines
        assert any(re.fullmatch(r"data 2 images in \S+images \(--train_data_dir\), resolution 64x64", x) for x in lines)
        assert (f"batch {batch} samples per optimizer step = 1 process x {batch} (--train_batch_size) x 1 "
                "(--gradient_accumulation_steps)") in lines  # fmt: skip
        assert any(x.startswith(f"{steps} steps, AdamW lr 0.0001, constant schedule") for x in lines), lines
        assert any(x.startswith("output ") and x.endswith(f"{name}/tcd_lora.safetensors") for x in lines)
        first_step = stderr.index("steps:")  # the progress bar
        assert stderr.index(PREFIX + "output ") < first_step and f'"steps": {steps}' in stdout


def test_training_on_the_cpu_because_no_gpu_is_visible_is_warned_about(runs: dict) -> None:
    warning = [x for x in messages(outcome(runs["surprising"])[2]) if x.startswith("warning: no GPU is visible")]
    assert len(warning) == 1 and "training on the CPU" in warning[0] and "give --cpu" in warning[0], warning
    assert not [x for x in messages(outcome(runs["plain"])[2]) if "GPU" in x]  # --cpu: on purpose


def test_a_warm_up_longer_than_the_run_is_warned_about_with_the_lr_the_run_reaches(runs: dict) -> None:
    """2 steps with 500 warm-up steps: the last step trains at 1e-4 x 1 / 500 = 2e-7 (the first at 0), which is
    the lr the progress bar shows after step 1 (the scheduler's lr for step 2)."""
    _, _, stderr = outcome(runs["surprising"])
    (warning,) = [x for x in messages(stderr) if x.startswith("warning: --lr_warmup_steps")]
    assert warning.startswith("warning: --lr_warmup_steps 500 is not shorter than the run's 2 steps"), warning
    last = re.search(r"the last step trains at (\S+), 0\.2% of it", warning)
    assert last, warning
    shown = re.findall(r"1/2 \[[^]]*lr=([\d.e+-]+)\]", stderr)
    assert shown and float(shown[-1]) == pytest.approx(float(last.group(1))) == pytest.approx(2e-7)
    assert warning.endswith("give --lr_warmup_steps 0")  # a tenth of 2 steps is 0
    assert not [x for x in messages(outcome(runs["plain"])[2]) if "warm-up" in x and "warning" in x]


def test_a_batch_larger_than_the_data_set_says_that_images_repeat(runs: dict) -> None:
    (note,) = [x for x in messages(outcome(runs["surprising"])[2]) if x.startswith("note:")]
    assert note.startswith("note: an optimizer step takes 4 samples from 2 images: each image is used about 2 "
                           "times per step (repeats within a batch), each copy with its own noise and training "
                           "points")  # fmt: skip
    assert not [x for x in messages(outcome(runs["plain"])[2]) if x.startswith("note:")]


def test_a_missing_comfyui_requirement_is_one_line_naming_what_to_install(checkpoint: Path, tmp_path: Path) -> None:
    """A Python with everything but einops, one of ComfyUI's requirements: exit 2, one line, no traceback."""
    python = environment_without(tmp_path / "no-einops", ["einops"])
    data = image_folder(tmp_path / "images", 1)
    env = {"PYTHONPATH": str(import_root()), "COMFYUI_PATH": str(comfyui_path())}
    code, _, stderr = outcome(start(run_args(checkpoint, data, tmp_path / "out", "--cpu"), str(python), **env))
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if "einops" in line]
    requirements = comfyui_path() / "requirements.txt"
    assert error == (
        f"tcd_train: error: ComfyUI ({comfyui_path()}) needs the module 'einops', which this Python lacks: run "
        "tcd-train from the Python environment that runs ComfyUI, or install ComfyUI's requirements into this "
        f"one: {python} -m pip install -r {requirements}"
    )
    assert not (tmp_path / "out" / "tcd_lora.safetensors").exists()


def readme_commands() -> tuple[str, str]:
    """The install and --help lines of the README's "Distil at scale" section, as written there."""
    section = (REPO_ROOT / "README.md").read_text().split("## Distil at scale")[1].split("\n## ")[0]
    lines = [line.strip() for line in section.splitlines()]
    (install,) = [line for line in lines if line.startswith("python -m pip install ")]
    (usage,) = [line for line in lines if line == "tcd-train --help"]
    return install, usage


def torch_location(python: Path) -> str:
    command = [str(python), "-c", "import torch; print(torch.__version__, torch.__file__)"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_readme_install_into_comfyuis_environment_adds_no_torch_and_trains(checkpoint: Path, tmp_path: Path) -> None:
    """The README's lines word for word, from a folder holding ComfyUI/custom_nodes/comfyui-tcd-sampling, in a
    new venv that is ComfyUI's Python environment (torch and ComfyUI's requirements, no accelerate), activated:
    pip's dry run lists no torch / CUDA package, the install leaves torch where it was, and the installed
    tcd-train (not this checkout) shows its help and trains a LoRA."""
    install, usage = readme_commands()
    python = comfyui_environment(tmp_path / "comfy-env", comfyui_path())
    pack = tmp_path / "ComfyUI" / "custom_nodes" / "comfyui-tcd-sampling"
    pack.mkdir(parents=True)
    for name in PACKAGE_FILES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, pack / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO_ROOT / name, pack / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PATH": f"{python.parent}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(python.parent.parent)}
    torch_before = torch_location(python)

    def shell(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True)

    words = shlex.split(install, comments=True)  # the line without its trailing comment
    dry = shell(shlex.join([*words, "--dry-run", "--quiet", "--report", str(tmp_path / "report.json")]))
    assert dry.returncode == 0, dry.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    installs = {item["metadata"]["name"].lower() for item in report["install"]}
    assert {"tcd-sampling", "accelerate", "webdataset", "tensorboard"} <= installs, installs
    assert not [n for n in installs if re.match(r"(torch|triton|nvidia-|cuda-)", n)], installs

    installed = shell(install)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert torch_location(python) == torch_before
    help_shown = shell(usage)
    assert help_shown.returncode == 0 and help_shown.stdout.startswith("usage: tcd-train"), help_shown.stderr

    data = image_folder(tmp_path / "images", 1)
    argv = run_args(checkpoint, data, tmp_path / "out", "--cpu", "--max_train_steps", "1", "--lr_warmup_steps", "0")
    trained = shell(shlex.join(["tcd-train", *argv, "--comfyui", str(comfyui_path())]))
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"{PREFIX}device cpu" in trained.stderr and (tmp_path / "out" / "tcd_lora.safetensors").is_file()
    where = shell("command -v tcd-train; python -c 'import comfyui_tcd_sampling as p; print(p.__file__)'")
    assert where.stdout.startswith(str(python.parent / "tcd-train")) and "site-packages" in where.stdout, where
