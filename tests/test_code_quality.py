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
# The one place that puts $COMFYUI_PATH on the import path (ComfyUI is a source tree, not a package), and
# the one that puts this checkout there under the pack's installed name (comfyui_tcd_sampling).
COMFYUI_IMPORT = ROOT / "devkit" / "comfy_import.py"
PACK_IMPORT = ROOT / "devkit" / "pack_import.py"
PACK_CODE = ("__init__.py", "nodes", "tcd_comfy", "tcd_core", "tcd_train")
HAND_BUILT_LOADERS = {"spec_from_file_location", "module_from_spec", "ModuleSpec"}
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
    file name, except devkit.comfy_import putting ComfyUI first and devkit.pack_import putting this checkout
    there as ``comfyui_tcd_sampling`` (pytest's own ``pythonpath = ["."]`` in pyproject.toml puts the
    repository root on the path)."""
    allowed = (COMFYUI_IMPORT, PACK_IMPORT)
    hacks = [hack for path in support_modules() if path not in allowed for hack in path_hacks(path)]
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


# --- one distillation engine, one package name ------------------------------------------------------------


def pack_modules() -> list[Path]:
    paths = [ROOT / name for name in PACK_CODE]
    return sorted(p for path in paths for p in ([path] if path.is_file() else path.rglob("*.py")))


def calls_of(path: Path, name: str) -> list[int]:
    """Lines of calls of a function or method named ``name`` in a module."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                lines.append(node.lineno)
    return lines


def test_the_distillation_step_is_written_once() -> None:
    """distill_loss is called from one place outside the tests (tcd_core.distiller, the engine the node, the
    trainer and the benchmark drive), and nothing in nodes/ trains: no backward, no optimizer."""
    callers = {
        f"{path.relative_to(ROOT)}:{line}"
        for path in [*pack_modules(), *support_modules()]
        if "tests" not in path.relative_to(ROOT).parts
        for line in calls_of(path, "distill_loss")
    }
    assert len(callers) == 1 and next(iter(callers)).startswith("tcd_core/distiller.py:"), callers
    for path in sorted((ROOT / "nodes").glob("*.py")):
        text = path.read_text()
        for forbidden in ("backward", "zero_grad", "torch.optim", "optimizer", "EMA("):
            assert forbidden not in text, f"{path.name} mentions {forbidden}: training belongs in tcd_comfy / tcd_core"


def test_the_trainer_imports_no_node_module_and_no_module_is_loaded_by_hand() -> None:
    """tcd_train reaches the ComfyUI side through tcd_comfy, never nodes/; the pack is imported under its one
    name by the normal import system (no module built from a spec or loaded by file name)."""
    for path in sorted((ROOT / "tcd_train").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not (node.module or "").startswith("nodes"), f"{path.name}:{node.lineno} imports nodes"
    for path in [*pack_modules(), *support_modules()]:
        text = path.read_text()
        found = [name for name in HAND_BUILT_LOADERS if name in text and path != Path(__file__).resolve()]
        assert not found, f"{path.relative_to(ROOT)} builds a module by hand: {found}"
