"""Fresh Python environments for install tests, made in seconds from the development venv's packages.

A new venv (``python -m venv``, its own pip) sees a chosen set of the development venv's installed
distributions through one ``.pth`` file naming a folder of symlinks to their files: to pip and to Python
they are installed (pip reads their metadata from sys.path), but nothing is copied or downloaded, and the
development venv is never written to. ``comfyui_environment`` is the Python environment that runs ComfyUI:
torch and ComfyUI's requirements.txt with everything they need, and nothing else (no accelerate).
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from importlib.metadata import PathDistribution
from pathlib import Path

from packaging.requirements import Requirement

DEV_SITE = Path(sysconfig.get_paths()["purelib"])
"""The development venv's site-packages (this process runs its Python)."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(site: Path = DEV_SITE) -> dict[str, Path]:
    """{normalized name: its ``*.dist-info`` folder} of the distributions installed in ``site``."""
    found = {}
    for info in site.glob("*.dist-info"):
        name = PathDistribution(info).metadata["Name"]
        if name:
            found[normalize(name)] = info
    return found


def top_entries(info: Path) -> set[str]:
    """The names in site-packages that a distribution's files live under, its dist-info folder included."""
    files = PathDistribution(info).files or []
    return {part for file in files if (part := file.parts[0]) not in ("..", "__pycache__")} | {info.name}


def closure(roots: Iterable[str], site: Path = DEV_SITE) -> set[str]:
    """The installed distributions ``roots`` need, ``roots`` included: their Requires-Dist, followed with the
    extras each requirement asks for (torch's ``cuda-toolkit[cublas,...]``); names not in ``site`` are skipped."""
    installed = distributions(site)
    seen: set[tuple[str, str]] = set()
    todo = [(normalize(name), "") for name in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen or name not in installed:
            continue
        seen.add((name, extra))
        for line in PathDistribution(installed[name]).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(normalize(requirement.name), wanted) for wanted in ("", *requirement.extras)]
    return {name for name, _ in seen}


def requirement_names(requirements_file: Path) -> list[str]:
    """The distribution names a requirements.txt lists (comments, options and blank lines left out)."""
    names = []
    for line in requirements_file.read_text().splitlines():
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if match:
            names.append(match.group(1))
    return names


def link_site(dest: Path, keep: Iterable[str], site: Path = DEV_SITE) -> Path:
    """A folder of symlinks to the files of the distributions ``keep`` in ``site``; returns it."""
    installed = distributions(site)
    dest.mkdir(parents=True, exist_ok=True)
    for name in keep:
        for entry in top_entries(installed[normalize(name)]):
            link = dest / entry
            if (site / entry).exists() and not link.is_symlink():
                link.symlink_to(site / entry)
    return dest


def make_venv(dest: Path, site_dirs: Iterable[Path], with_pip: bool = True) -> Path:
    """A new venv whose site-packages has a .pth naming ``site_dirs``; returns its python."""
    command = [sys.executable, "-m", "venv", str(dest)] + ([] if with_pip else ["--without-pip"])
    subprocess.run(command, check=True, capture_output=True)
    python = dest / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (Path(purelib) / "linked-packages.pth").write_text("".join(f"{path}\n" for path in site_dirs))
    return python


def comfyui_environment(dest: Path, comfyui: Path, with_pip: bool = True) -> Path:
    """The Python environment that runs ComfyUI, as a new venv: torch and ComfyUI's requirements (those the
    development venv has, torchaudio not: dev/provision.sh leaves it out) and what they need, plus requests,
    which ComfyUI's server imports without listing it. Returns its python."""
    keep = closure(["torch", *requirement_names(comfyui / "requirements.txt"), "requests"])
    return make_venv(dest / "venv", [link_site(dest / "linked", keep)], with_pip=with_pip)


def environment_without(dest: Path, leave_out: Iterable[str], with_pip: bool = False) -> Path:
    """A new venv that sees every distribution of the development venv but ``leave_out``; returns its python."""
    dropped = {normalize(name) for name in leave_out}
    keep = [name for name in distributions() if name not in dropped]
    return make_venv(dest / "venv", [link_site(dest / "linked", keep)], with_pip=with_pip)
