"""Importing ComfyUI from its source tree, and this pack's sampling code without the host's node loader.

``import_comfyui`` is the one place that puts ``$COMFYUI_PATH`` on ``sys.path``. ComfyUI is not an
installed package: its modules (``comfy``, ``nodes``, ``folder_paths``, ``utils``, ``server``, ...) are
top-level names in its source tree, and some of them are ordinary words. This repository has a
``nodes`` package of its own and the test runner puts the repository root on ``sys.path``, so ComfyUI's
folder must come first for ``import nodes`` to mean ComfyUI's ``nodes.py`` (as it does in a real
install, where ComfyUI runs from its own folder).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from devkit.host import REPO_ROOT, comfyui_path

SAMPLING_PACKAGE = "tcd_pack"


def import_comfyui(cpu: bool = True) -> Path:
    """Make ComfyUI's source tree importable (first on sys.path) and choose its device; returns the tree.

    ``cpu`` is ComfyUI's ``--cpu`` flag. It must be set before ``comfy.model_management`` is first
    imported, so call this before importing anything of ComfyUI's.
    """
    root = comfyui_path()
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    args.cpu = cpu
    return root


def import_pack_sampling() -> ModuleType:
    """This pack's ``tcd_core`` and ``nodes.comfy_adapter``, as the package ``tcd_pack``.

    For the benchmarks, which time the adapter that the nodes use on a machine that may have only
    ComfyUI's sampling path (no ``comfy_api``, no server): the pack's own ``__init__`` (which registers
    the nodes with ComfyUI) does not run. ``tcd_pack`` is a namespace package whose one search location
    is this repository, so the normal import system finds the submodules and their relative imports.
    Call ``import_comfyui`` first. Tests and ``dev/`` load the whole pack through ComfyUI's own loader
    instead (devkit.inprocess, devkit.host).
    """
    spec = importlib.machinery.ModuleSpec(SAMPLING_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(REPO_ROOT)]
    package = sys.modules.setdefault(SAMPLING_PACKAGE, importlib.util.module_from_spec(spec))
    package.nodes = sys.modules.setdefault(f"{SAMPLING_PACKAGE}.nodes", _namespace(f"{SAMPLING_PACKAGE}.nodes"))
    importlib.import_module(f"{SAMPLING_PACKAGE}.tcd_core")
    importlib.import_module(f"{SAMPLING_PACKAGE}.nodes.comfy_adapter")
    return package


def _namespace(name: str) -> ModuleType:
    """The pack's ``nodes`` folder as a package whose ``__init__`` (the node classes) is not run."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(REPO_ROOT / "nodes")]
    return importlib.util.module_from_spec(spec)
