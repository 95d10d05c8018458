"""Importing ComfyUI headless from the user's checkout.

ComfyUI is not an installed package: its modules (``comfy``, ``nodes``, ``folder_paths``, ...) are top-level
names of its source tree, so the tree goes first on ``sys.path`` (``--comfyui PATH`` or ``$COMFYUI_PATH``)
before anything of ComfyUI's (or of this pack's ``tcd_comfy``, which imports it) is imported.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .options import TrainerError


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
