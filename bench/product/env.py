"""ComfyUI in this process (with the pack registered), the cache folder, hashing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch


def comfy() -> Any:
    """ComfyUI loaded in-process on the CPU with this pack registered (devkit.inprocess), quiet progress bars."""
    from devkit.inprocess import load_comfy
    from devkit.model_files import default_models_dir

    loaded = load_comfy(default_models_dir())
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False
    return loaded


def cache_dir() -> Path:
    """$TCD_DEV_DIR/bench-product (git-ignored), created on first use."""
    from devkit.host import dev_dir

    path = dev_dir() / "bench-product"
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def threads() -> None:
    torch.set_num_threads(1)
