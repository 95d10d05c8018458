"""Session fixtures shared by the integration tests: the test models and one real ComfyUI server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.host import ComfyServer
from devkit.model_files import default_models_dir, ensure_test_models


@pytest.fixture(scope="session")
def test_models() -> dict[str, Path]:
    """Random-weight test models in .dev/models (built on first use, about 20 s): {key: path}."""
    return ensure_test_models(default_models_dir())


@pytest.fixture(scope="session")
def tiny_checkpoint(test_models: dict[str, Path]) -> str:
    """A single-file checkpoint in the models folder that ComfyUI detects as SD1.5, with the test checkpoint's
    real-size CLIP-L and VAE and a one-level UNet (devkit.tiny_checkpoint): for server tests whose subject is
    not the UNet's size (training, Cancel, determinism), so a step takes milliseconds. Returns its name."""
    from devkit.comfy_import import import_comfyui
    from devkit.tiny_checkpoint import NAME, build_tiny_sd15_checkpoint

    import_comfyui(cpu=True)
    build_tiny_sd15_checkpoint(default_models_dir(), test_models["checkpoint_sd15"])
    return NAME


@pytest.fixture(scope="session")
def comfy_server(test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One ComfyUI server for the whole session, with this pack loaded and the test models mapped in."""
    server = ComfyServer(models_dir=default_models_dir(), work_dir=tmp_path_factory.mktemp("comfy-host"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
