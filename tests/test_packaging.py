"""Release packaging: Comfy Registry metadata read by ComfyUI's own parser, what gets published, and
that the published code runs nothing at install or load time that a shared server should not."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pathspec
import tomllib

from devkit.comfy_import import import_comfyui
from devkit.host import REPO_ROOT

PUBLISHED_MUST_HOLD = [
    "__init__.py", "LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "requirements.txt",
    "nodes/__init__.py", "tcd_core/__init__.py", "workflow_tools/__init__.py", "docs/icon.png",
]  # fmt: skip
DEV_ONLY = ("tests/", "dev/", "devkit/", "bench/", ".ci/", ".github/")
VERSION = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]  # the one place


def published_files() -> list[str]:
    """The committed files minus .comfyignore, as the registry's packager selects them."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    ignore = pathspec.PathSpec.from_lines("gitignore", (REPO_ROOT / ".comfyignore").read_text().splitlines())
    return [path for path in tracked.stdout.splitlines() if not ignore.match_file(path)]


def test_pyproject_is_valid_for_the_comfy_registry() -> None:
    import_comfyui()
    from comfy_config.config_parser import extract_node_configuration

    config = extract_node_configuration(str(REPO_ROOT))  # the pack folder, as ComfyUI calls it
    assert config is not None
    assert config.project.name == "tcd-sampling"  # `comfyui-tcd` is taken; names should not say ComfyUI
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", config.project.name)
    assert config.project.version == VERSION and re.fullmatch(r"\d+\.\d+\.\d+", VERSION)  # semantic version
    assert config.project.license.file == "LICENSE" and (REPO_ROOT / "LICENSE").read_text().startswith(
        "                    GNU GENERAL PUBLIC LICENSE\n                       Version 3"
    )
    assert config.project.urls.repository.startswith("https://github.com/")
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name
    assert config.tool_comfy.icon.endswith("docs/icon.png") and (REPO_ROOT / "docs/icon.png").is_file()
    assert config.project.supported_comfyui_version == ">=0.3.48"
    assert config.project.dependencies == []


def test_changelog_describes_this_version() -> None:
    assert f"\n## {VERSION}\n" in (REPO_ROOT / "CHANGELOG.md").read_text()


def test_published_package_holds_the_pack_and_no_dev_tooling() -> None:
    files = published_files()
    for required in PUBLISHED_MUST_HOLD:
        assert required in files, required
    assert any(path.startswith("workflows/") and path.endswith(".json") for path in files)
    leaked = [path for path in files if path.startswith(DEV_ONLY)]
    assert not leaked, leaked


def test_registry_publish_workflow_exists() -> None:
    workflow = (REPO_ROOT / ".github/workflows/publish-registry.yml").read_text()
    assert "Comfy-Org/publish-node-action" in workflow and "REGISTRY_ACCESS_TOKEN" in workflow


def test_requirements_never_install_torch() -> None:
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        requirement = line.split("#")[0].strip().lower()
        assert not re.match(r"(torch|torchvision|torchaudio|xformers)\b", requirement), line


def test_published_code_has_no_eval_exec_subprocess_or_pip() -> None:
    """ruff's security rules (S) on the published Python files, with no per-file exceptions."""
    python_files = [path for path in published_files() if path.endswith(".py")]
    assert python_files
    ruff = [sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "S", *python_files]
    result = subprocess.run(ruff, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    for path in python_files:
        tree = ast.parse((REPO_ROOT / path).read_text(), path)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not {"subprocess", "pip", "importlib.metadata"} & set(names), f"{path}: {names}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"eval", "exec", "compile", "__import__"}, f"{path}: {node.func.id}()"
