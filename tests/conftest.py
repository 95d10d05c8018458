"""Session fixtures shared by the integration tests: the test models and one real ComfyUI server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from comfy_host import REPO_ROOT, ComfyServer
from model_files import default_models_dir, ensure_test_models


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep pytest from importing the repository root as a test package.

    The repository root is the pack itself: its __init__.py makes pytest collect the root as a
    `Package`, whose setup imports that __init__.py to look for setup_module. The pack's
    __init__ imports comfy_api, which exists only inside ComfyUI, so every test would error.
    The pack holds no setup_module: skip that import. Tests that need the pack load it the
    way ComfyUI does (comfy_host.ComfyServer, or in-process through ComfyUI's loader).
    """
    for item in items:
        for node in item.listchain():
            if isinstance(node, pytest.Package) and Path(node.path).resolve() == REPO_ROOT:
                node.setup = lambda: None  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def test_models() -> dict[str, Path]:
    """Random-weight test models in .dev/models (built on first use, about 20 s): {key: path}."""
    return ensure_test_models(default_models_dir())


@pytest.fixture(scope="session")
def comfy_server(test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One ComfyUI server for the whole session, with this pack loaded and the test models mapped in."""
    server = ComfyServer(models_dir=default_models_dir(), work_dir=tmp_path_factory.mktemp("comfy-host"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
