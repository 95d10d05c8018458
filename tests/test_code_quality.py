"""Static checks: tcd_core stays pure torch, support code has one importable home (devkit) reached
without path hacks, nothing refers outside the repository, and the whole repo is ruff clean."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMFYUI_MODULES = {"comfy", "comfy_api", "comfy_extras", "nodes", "folder_paths", "server", "execution"}
SUPPORT_CODE = ("dev", "bench", "tests", "devkit")
# The one place that puts $COMFYUI_PATH on the import path (ComfyUI is a source tree, not a package).
COMFYUI_IMPORT = ROOT / "devkit" / "comfy_import.py"
LOAD_BY_FILE_NAME = "spec_from_file_location"  # importlib.util's loader of a module by its file name
OUTSIDE_THE_REPO = re.compile(r"shared/(?:docs|fixtures)\b|\.\./shared\b|TCD_IPADAPTER_OBJECT_INFO")


def repo_files() -> list[Path]:
    """Committed and new (not ignored) files, as a clone of this checkout would hold them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def support_modules() -> list[Path]:
    return [path for folder in SUPPORT_CODE for path in sorted((ROOT / folder).rglob("*.py"))]


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


def path_hacks(path: Path) -> list[str]:
    """Edits of the import path and loads of modules by file name in a module (code, not comments or strings)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} sys.{node.attr}")
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
        if isinstance(node, ast.alias):
            name = node.name
        if name == LOAD_BY_FILE_NAME:
            found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')} {name}")
    return found


def test_support_code_imports_normally() -> None:
    """dev/, bench/, tests/ and devkit/ import each other as packages: no import-path edits, no loading by
    file name, except devkit.comfy_import putting ComfyUI first (pytest's own ``pythonpath = ["."]``
    in pyproject.toml puts the repository root on the path)."""
    hacks = [hack for path in support_modules() if path != COMFYUI_IMPORT for hack in path_hacks(path)]
    assert not hacks, hacks
    assert path_hacks(COMFYUI_IMPORT), "devkit.comfy_import no longer puts ComfyUI on the path: update this test"


def test_devkit_imports_nothing_from_tests() -> None:
    """Editing a test must never break dev/run, the benchmarks or the other tools."""
    for path in sorted((ROOT / "devkit").rglob("*.py")):
        assert not imported_roots(path) & {"tests", "conftest", "fixture_packs"}, path.name


def test_nothing_refers_outside_the_repository() -> None:
    """A plain clone is all a contributor has: no file reads or cites the workplace's ../shared folder."""
    this = Path(__file__).resolve()
    hits = []
    for path in repo_files():
        if path == this:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images
        hits += [f"{path.relative_to(ROOT)}: {match.group()}" for match in OUTSIDE_THE_REPO.finditer(text)]
    assert not hits, hits
