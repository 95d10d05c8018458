"""Whether a ComfyUI tree imports a module unconditionally when its server starts.

    python -m devkit.host_imports /path/to/ComfyUI torchaudio   # exit 0: it does, 1: it does not

A static walk of the tree's import graph from main.py (standard library only, so dev/provision.sh
can ask before any venv has the host's requirements): an import counts when it runs at module level,
also under an `if`, but not inside a function, a class, or a `try` (imports guarded by try/except are
optional). ComfyUI 0.30 and newer reach `import torchaudio` this way (comfy/sd.py imports its audio
VAEs), 0.3.75 does not, so only the newer hosts need a torch for which torchaudio exists.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def _module_file(root: Path, name: str) -> Path | None:
    """The file of a module of the tree (`comfy.sd` -> comfy/sd.py or comfy/sd/__init__.py)."""
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _unconditional(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported, `if` branches included, `try` bodies not."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _unconditional(node.body)
            yield from _unconditional(node.orelse)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _unconditional(node.body)
        elif not isinstance(node, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node


def _imported_names(path: Path, package: str) -> Iterator[str]:
    """Absolute names of the modules a file imports unconditionally."""
    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    for node in _unconditional(tree.body):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_at_startup(root: Path | str, target: str, entry: str = "main") -> bool:
    """True when importing `entry` from the tree imports `target` (or a submodule of it) unconditionally."""
    root = Path(root)
    seen: set[str] = set()
    pending = [entry]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(root, name)
        if path is None:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for imported in _imported_names(path, package):
            if imported == target or imported.startswith(target + "."):
                return True
            parts = imported.split(".")
            pending += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m devkit.host_imports COMFYUI_PATH MODULE", file=sys.stderr)
        return 2
    return 0 if imports_at_startup(args[0], args[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
