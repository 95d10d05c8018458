"""dev/run as a developer meets it, run as the README says: its --help, a setting the server refuses, and the
line that announces the first run's set-up before it starts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from devkit.host import REPO_ROOT
from devkit.run_workflow import build_parser

DEV_RUN = str(REPO_ROOT / "dev" / "run")


def dev_run(*args: str, timeout: float = 600, merged: bool = False, **env: str) -> subprocess.CompletedProcess:
    """``dev/run ARGS`` in a new process, provisioning from $TCD_DEV_DIR as set (or as ``env`` sets it);
    ``merged``: stderr into stdout, in the order written."""
    stderr = subprocess.STDOUT if merged else subprocess.PIPE
    return subprocess.run([DEV_RUN, *args], cwd=REPO_ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                          stderr=stderr, text=True, timeout=timeout)  # fmt: skip


def test_help_names_dev_run_and_every_option_has_help_and_a_default() -> None:
    shown = dev_run("--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: dev/run "), shown.stdout[:200]
    assert "run_workflow" not in shown.stdout.split("\n\n")[0]
    assert "first run" not in shown.stderr  # the environment exists: nothing to announce
    text = " ".join(shown.stdout.split())
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        option = action.option_strings[0]
        assert option in text, option
        after = text.rsplit(option, 1)[-1].split(" --")[0]  # its entry in the options list, which comes last
        assert len(after.split()) > 2, f"{option}: no help text"
        if action.default is not None:
            assert "(default: " in after, f"{option}: no default shown in {after!r}"
    assert "--gamma GAMMA TCD Sampler's gamma, 0 to 1 (default: 0.3)" in text


def test_a_setting_the_server_refuses_prints_its_validation_message_alone(test_models: dict, tmp_path: Path) -> None:
    """--gamma 1.5: exit 2 and ComfyUI's own validation message on one line, last (after the server stopped), no
    traceback and no server log."""
    run = dev_run("--gamma", "1.5", "--out", str(tmp_path), merged=True)
    assert run.returncode == 2, run.stdout[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == (
        "dev/run: ComfyUI refused the workflow: TrajectoryConsistencySampler (node 9) input gamma = 1.5 (--gamma): "
        "Value 1.5 bigger than max of 1.0"
    ), run.stdout[-3000:]
    assert lines[-2].startswith("[run] server stop: ") and len(lines) <= 6, lines  # the stages it got through
    assert "Traceback" not in run.stdout and "ComfyUI log" not in run.stdout
    assert not list(tmp_path.iterdir())


def test_the_first_run_says_what_it_sets_up_before_it_starts(tmp_path: Path) -> None:
    """An empty $TCD_DEV_DIR: the first lines say it is a first run, its time and its disk size, before any
    set-up starts (here a stand-in for python, which records that it was called and fails: nothing is built)."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "stand-in python called: $*" >&2\nexit 3\n')
    python.chmod(0o755)
    run = dev_run("--help", TCD_DEV_DIR=str(tmp_path / "dev"), PYTHON=str(python), timeout=60)
    assert run.returncode == 3, run.stderr
    lines = run.stderr.splitlines()
    assert lines[0] == (
        f"[dev] first run: building the development environment in {tmp_path / 'dev'} once (later runs reuse it): "
        "a few minutes, about 11 GB"
    ), lines
    assert lines[1].startswith("[dev] (a 6.9 GB venv, mostly torch's CUDA libraries; 3 GB of random-weight"), lines
    assert any(line.startswith("stand-in python called: -m venv") for line in lines[2:]), lines
    assert not (tmp_path / "dev" / "venv").exists()
