"""This checkout importable under the pack's one package name, ``comfyui_tcd_sampling``, as ``pip install`` names it.

A folder under the system's temporary directory holds one symlink, ``comfyui_tcd_sampling`` -> this checkout,
and goes on ``sys.path`` (and on ``PYTHONPATH`` for processes the tests start): the normal import system then
finds the pack, its relative imports and its ``tcd_train`` command module, as in an installed copy, without
installing this checkout into the shared development venv (whose other users are CI's clones).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

PACKAGE = "comfyui_tcd_sampling"
REPO_ROOT = Path(__file__).resolve().parent.parent


def import_root() -> Path:
    """The folder whose ``comfyui_tcd_sampling`` is this checkout (made once, reused by later processes)."""
    tag = hashlib.sha256(str(REPO_ROOT).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"tcd-pack-import-{tag}"
    link = root / PACKAGE
    if not link.is_symlink() or link.resolve() != REPO_ROOT:
        root.mkdir(exist_ok=True)
        spare = root / f".{PACKAGE}.{os.getpid()}"
        spare.unlink(missing_ok=True)
        spare.symlink_to(REPO_ROOT, target_is_directory=True)
        spare.replace(link)  # atomic: a parallel process sees the old link or the new one
    return root


def make_importable() -> Path:
    """Put ``import_root()`` on ``sys.path`` and ``PYTHONPATH`` (idempotent); returns it."""
    root = str(import_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return Path(root)
