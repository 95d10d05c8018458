"""Session fixtures shared by the integration tests: the test models, one real ComfyUI server, and one
server on each ComfyUI host (`host_server`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.fixtures import TEST_PACKS
from devkit.host import ComfyServer, comfyui_version, defined_hosts, extra_host
from devkit.model_files import default_models_dir, ensure_test_models


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (many tiny forwards run far faster so on the shared 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


# SD3's own text widths: T5-XXL's 4096 (CLIP-L / CLIP-G padded to it) and CLIP-L + CLIP-G's 2048 pooled.
SD3_TEXT = {
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
}


@pytest.fixture(scope="session")
def tiny_sd3_files(test_models: dict[str, Path]) -> dict[str, Path]:
    """A tiny random-weight SD3.5 (MMDiT-X, depth 2) with SD3's real text widths, as users have the model: the
    diffusion-model file, CLIP-L, a 16-channel VAE and the single-file checkpoint (devkit.tiny_checkpoint; written
    once under .dev/trainer-models, reused): {"diffusion_model" | "clip_l" | "vae" | "checkpoint": path}."""
    from devkit.host import dev_dir
    from devkit.inprocess import load_comfy
    from devkit.tiny_checkpoint import build_tiny_sd3_files

    comfy = load_comfy(default_models_dir())
    model = comfy.tiny_flow_models.tiny_flow_model("SD3", seed=5, unet_overrides=SD3_TEXT)
    state = model.model.diffusion_model.state_dict()
    return build_tiny_sd3_files(dev_dir() / "trainer-models", state, test_models["checkpoint_sd15"])


# Flux.1-dev as ComfyUI's detection reads it (24 heads of 128, rope axes 16 / 56 / 56: width 3072), one double- and one
# single-stream block, CLIP-L-wide text input (768) in place of T5's 4096: 0.53 B parameters, 1.1 GB in bf16.
DETECTABLE_FLUX = {"hidden_size": 3072, "num_heads": 24, "axes_dim": [16, 56, 56], "depth": 1, "depth_single_blocks": 1}
FLUX_FILE_VERSION = "1"  # bump when what the flux_file fixture writes changes


@pytest.fixture(scope="session")
def flux_file(test_models: dict[str, Path]) -> Path:
    """A random-weight Flux.1-dev diffusion-model file (models/diffusion_models form, ComfyUI's key names, bf16) that
    ComfyUI's Load Diffusion Model detects as Flux: the smallest there is (DETECTABLE_FLUX), written once under
    .dev/trainer-models and reused; its text encoder and VAE are tiny_sd3_files' CLIP-L and 16-channel VAE."""
    import torch

    from devkit.host import dev_dir
    from devkit.inprocess import load_comfy
    from devkit.tiny_checkpoint import save_model_file

    path = dev_dir() / "trainer-models" / f"flux-v{FLUX_FILE_VERSION}" / "tcd-flux1-dev-one-block.safetensors"
    if not path.is_file():
        comfy = load_comfy(default_models_dir())
        model = comfy.tiny_flow_models.tiny_flow_model("Flux", seed=9, unet_overrides=DETECTABLE_FLUX)
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.model.diffusion_model.state_dict().items()}
        del model
        save_model_file(state, path)
    return path


@pytest.fixture(scope="session")
def comfy_server(test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """One ComfyUI server for the whole session, with this pack (and the test-only devkit.fixtures.TEST_PACKS)
    loaded and the test models mapped in."""
    server = ComfyServer(
        models_dir=default_models_dir(), work_dir=tmp_path_factory.mktemp("comfy-host"), extra_packs=TEST_PACKS
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _main_host_version() -> str:
    path = os.environ.get("COMFYUI_PATH")
    return comfyui_version(path) if path else "main"


def _host_id(version: str | None) -> str:
    """The test id of a host: its ComfyUI version (the main host's read from $COMFYUI_PATH)."""
    return f"comfyui-{version or _main_host_version()}"


# None is the main host; a further host that is the main one too (TCD_HOST=0.30.0 dev/test) runs once.
HOSTS = [None, *(version for version in defined_hosts() if version != _main_host_version())]


@pytest.fixture(scope="module", params=HOSTS, ids=_host_id)
def host_server(
    request: pytest.FixtureRequest, test_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ComfyServer]:
    """A real ComfyUI server with this pack loaded, on each host: a test that takes it runs once on the main
    host ($COMFYUI_PATH: 0.3.75, which is `comfy_server` itself) and once on each further host that dev/hosts.sh
    provisions (ComfyUI 0.30.0, in its own venv; one server per test module, stopped after it). One host only:
    `@pytest.mark.parametrize("host_server", ["0.30.0"], indirect=True)`. A host that is not provisioned is an
    error, never a skip."""
    if request.param is None:
        yield request.getfixturevalue("comfy_server")
        return
    host = extra_host(request.param)
    server = ComfyServer(
        models_dir=default_models_dir(),
        work_dir=tmp_path_factory.mktemp(f"comfy-host-{host.version}"),
        comfy_host=host,
        extra_packs=TEST_PACKS,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
