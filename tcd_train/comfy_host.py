"""Importing ComfyUI headless from the user's checkout.

ComfyUI is not an installed package: its modules (``comfy``, ``nodes``, ``folder_paths``, ...) are top-level
names of its source tree, so the tree goes first on ``sys.path`` (``--comfyui PATH`` or ``$COMFYUI_PATH``)
before anything of ComfyUI's (or of this pack's ``tcd_comfy``, which imports it) is imported.

ComfyUI's own requirements (einops, transformers, ...) are not the pack's: they are in the Python environment
that runs ComfyUI. Run from another one, the first import ComfyUI lacks becomes one line naming the module and
the command that installs ComfyUI's requirements into this Python (``missing_requirements_named``).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .options import TrainerError

IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "opencv-python": "cv2", "opencv-python-headless": "cv2",
                "scikit-image": "skimage", "scikit-learn": "sklearn", "protobuf": "google"}  # fmt: skip
"""Requirements whose import name is not their distribution name, lower-cased with '-' as '_'."""


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


def requirement_modules(root: Path) -> dict[str, str]:
    """ComfyUI's requirements.txt as {top-level import name: requirement name}."""
    try:
        lines = (root / "requirements.txt").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if match:
            name = match.group(1)
            found[IMPORT_NAMES.get(name.lower(), name.lower().replace("-", "_"))] = name
    return found


def missing_requirement(error: ModuleNotFoundError, path: str | os.PathLike | None = None) -> TrainerError | None:
    """The one-line refusal for a module that ComfyUI (at ``path`` / $COMFYUI_PATH) needs and this Python lacks:
    one of ComfyUI's requirements, or any module imported from ComfyUI's own files; None for anything else."""
    if not error.name:
        return None
    try:
        root = comfyui_root(path)
    except TrainerError:
        return None
    module = error.name.split(".")[0]
    if (root / module).exists() or (root / f"{module}.py").exists():
        return None  # a module of ComfyUI's own tree: a checkout problem, not a requirement
    listed = requirement_modules(root)
    from_comfyui = any(Path(frame.filename).resolve().is_relative_to(root)
                       for frame in traceback.extract_tb(error.__traceback__))  # fmt: skip
    if module not in listed and not from_comfyui:
        return None
    python = sys.executable
    install = (f"{python} -m pip install -r {root / 'requirements.txt'}" if module in listed
               else f"{python} -m pip install {module}")  # fmt: skip
    return TrainerError(
        f"ComfyUI ({root}) needs the module '{module}', which this Python lacks: run tcd-train from the Python "
        f"environment that runs ComfyUI, or install ComfyUI's requirements into this one: {install}"
    )


@contextmanager
def missing_requirements_named(path: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a ModuleNotFoundError of ComfyUI's (``missing_requirement``) into a TrainerError; others pass."""
    try:
        yield
    except ModuleNotFoundError as error:
        refusal = missing_requirement(error, path)
        if refusal is None:
            raise
        raise refusal from None
