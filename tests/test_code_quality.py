"""Static checks: tcd_core stays pure torch, and the whole repo is ruff clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server", "execution"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_tcd_core_imports_nothing_from_comfyui() -> None:
    files = sorted((ROOT / "tcd_core").glob("*.py"))
    assert files
    for path in files:
        assert not imported_roots(path) & COMFYUI_MODULES, path.name


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
