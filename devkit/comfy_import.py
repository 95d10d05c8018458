"""Importing ComfyUI from its source tree, and this pack's sampling code without the host's node loader.

``import_comfyui`` is the one place that puts ``$COMFYUI_PATH`` on ``sys.path``. ComfyUI is not an
installed package: its modules (``comfy``, ``nodes``, ``folder_paths``, ``utils``, ``server``, ...) are
top-level names in its source tree, and some of them are ordinary words. This repository has a
``nodes`` package of its own and the test runner puts the repository root on ``sys.path``, so ComfyUI's
folder must come first for ``import nodes`` to mean ComfyUI's ``nodes.py`` (as it does in a real
install, where ComfyUI runs from its own folder). The pack itself is imported as ``comfyui_tcd_sampling``
(devkit.pack_import).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from devkit.host import comfyui_path
from devkit.pack_import import PACKAGE, make_importable


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
    """This pack (``comfyui_tcd_sampling``) with its ``tcd_core`` and ``tcd_comfy.sampling`` imported.

    For the benchmarks, which time the sampling code the nodes use on a machine that may have only
    ComfyUI's sampling path (no ``comfy_api``, no server): the pack's ``nodes`` package is not imported,
    and the pack's own ``__init__`` only defines its entry point. Call ``import_comfyui`` first. Tests and
    ``dev/`` load the whole pack through ComfyUI's own loader instead (devkit.inprocess, devkit.host).
    """
    make_importable()
    package = importlib.import_module(PACKAGE)
    importlib.import_module(f"{PACKAGE}.tcd_core")
    importlib.import_module(f"{PACKAGE}.tcd_comfy.sampling")
    return package
