"""ComfyUI loaded into the test process, with this pack registered as a custom node pack.

For tests that need tensors rather than images: the real ModelPatcher, samplers and nodes,
called directly. ComfyUI is imported through devkit.comfy_import.import_comfyui (its folder first
on sys.path) and the pack is loaded by ComfyUI's own custom-node loader, as in a real install.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from devkit.comfy_import import import_comfyui
from devkit.fixtures import TEST_PACKS, TINY_FLOW_MODEL_NODE
from devkit.host import MODEL_FOLDERS, PACK_DIR_NAME, REPO_ROOT

PACK_NODE_IDS = ("TrajectoryConsistencySampler", "TrajectoryConsistencyScheduler", "TrajectoryConsistencyLoraLoader")


@dataclass
class Comfy:
    nodes: ModuleType  # ComfyUI's nodes.py
    node_classes: dict[str, Any]  # NODE_CLASS_MAPPINGS after custom nodes loaded
    pack_nodes: ModuleType  # this pack's `nodes` package, as ComfyUI imported it

    def node(self, node_id: str) -> Any:
        return self.node_classes[node_id]

    @property
    def tiny_flow_models(self) -> ModuleType:
        """The test-only pack that builds tiny flow models (tests/fixture_packs/tiny_flow_models), as loaded."""
        return sys.modules[self.node_classes[TINY_FLOW_MODEL_NODE].__module__]

    @property
    def pack(self) -> ModuleType:
        """This pack's root package, as ComfyUI imported it (its ``tcd_core``, ``tcd_comfy``, ...)."""
        return sys.modules[self.pack_nodes.__name__.rsplit(".", 1)[0]]

    def pack_names(self, *modules: str) -> SimpleNamespace:
        """The public names of the pack's ``modules`` (e.g. ``"tcd_comfy.distill_run"``) as ComfyUI loaded them,
        as one namespace."""
        names: dict[str, Any] = {}
        for module in modules:
            loaded = importlib.import_module(f"{self.pack.__name__}.{module}")
            names.update({k: v for k, v in vars(loaded).items() if not k.startswith("_")})
        return SimpleNamespace(**names)


def loaded_comfy() -> Comfy | None:
    """The ComfyUI that an earlier load_comfy put into this process, or None."""
    comfy_nodes = sys.modules.get("nodes")
    mappings = getattr(comfy_nodes, "NODE_CLASS_MAPPINGS", {})
    if not all(node_id in mappings for node_id in PACK_NODE_IDS):
        return None
    sampler_module = sys.modules[mappings[PACK_NODE_IDS[0]].__module__]
    return Comfy(comfy_nodes, mappings, sys.modules[sampler_module.__name__.rsplit(".", 1)[0]])


def load_comfy(models_dir: Path) -> Comfy:
    """Import ComfyUI on the CPU, map its model folders to ``models_dir`` and load this pack (and the test-only
    ``devkit.fixtures.TEST_PACKS``).

    Once per process: a later call returns the ComfyUI already loaded (its folders stay mapped).
    """
    already = loaded_comfy()
    if already is not None:
        return already
    import_comfyui(cpu=True)
    import folder_paths

    custom_nodes = Path(tempfile.mkdtemp(prefix="tcd-custom-nodes-"))
    (custom_nodes / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for name, folder in TEST_PACKS.items():  # test-only nodes (devkit.fixtures), as in the test servers
        (custom_nodes / name).symlink_to(folder, target_is_directory=True)
    folder_paths.add_model_folder_path("custom_nodes", str(custom_nodes), is_default=True)
    for name in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(name, str(models_dir / name), is_default=True)

    import nodes

    failed = asyncio.run(nodes.init_extra_nodes(init_api_nodes=False))
    missing = [node_id for node_id in PACK_NODE_IDS if node_id not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise RuntimeError(f"the pack did not register {missing}; failed imports: {failed}")
    return loaded_comfy()


def run_node(node_class: Any, **inputs: Any) -> tuple:
    """Execute a V1 or V3 node class the way ComfyUI does, returning its outputs tuple."""
    if hasattr(node_class, "define_schema"):  # V3
        return tuple(node_class.execute(**inputs).args)
    instance = node_class()
    return getattr(instance, node_class.FUNCTION)(**inputs)
