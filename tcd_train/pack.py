"""Importing ComfyUI headless from the user's checkout, and this pack's modules from the pack's own folder.

ComfyUI is not an installed package: its modules (``comfy``, ``nodes``, ``folder_paths``, ...) are top-level
names of its source tree, so the tree goes first on ``sys.path`` (``--comfyui PATH`` or ``$COMFYUI_PATH``).
The pack's own ``nodes`` package has the same top-level name as ComfyUI's ``nodes.py`` and uses relative
imports (``from ..tcd_core import distill``), so it is imported as a package, under the private name
``_tcd_pack``, whose one search location is this pack's folder; the pack's ``__init__`` (which registers
the nodes with a running ComfyUI) and ``nodes/__init__`` (the node classes) do not run.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

PACK_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "_tcd_pack"


class TrainerError(Exception):
    """A refusal of the trainer's input, raised before any training, naming the option."""


def comfyui_root(path: str | os.PathLike | None = None) -> Path:
    """The ComfyUI checkout to import: ``path``, else ``$COMFYUI_PATH``; it must hold main.py and comfy/."""
    value = path or os.environ.get("COMFYUI_PATH")
    if not value:
        raise TrainerError("--comfyui: give the path of a ComfyUI checkout (or set COMFYUI_PATH)")
    root = Path(value).expanduser().resolve()
    if not (root / "comfy" / "sd.py").is_file():
        raise TrainerError(f"--comfyui {value}: no ComfyUI checkout there (comfy/sd.py missing)")
    return root


def import_comfyui(path: str | os.PathLike | None = None, cpu: bool = False) -> Path:
    """Put ComfyUI's tree first on sys.path and set its device flag (before comfy.model_management loads)."""
    root = comfyui_root(path)
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    from comfy.cli_args import args

    if cpu:
        args.cpu = True
    return root


def _package(name: str, location: Path) -> ModuleType:
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(location)]
    return sys.modules.setdefault(name, importlib.util.module_from_spec(spec))


def pack_module(name: str) -> ModuleType:
    """A module of this pack, e.g. ``pack_module("nodes.distill_training")``; call import_comfyui first."""
    package = _package(PACKAGE, PACK_ROOT)
    package.nodes = _package(f"{PACKAGE}.nodes", PACK_ROOT / "nodes")
    return importlib.import_module(f"{PACKAGE}.{name}")
