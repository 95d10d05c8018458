"""devkit.host_imports, which tells dev/provision.sh whether a ComfyUI tree needs torchaudio to start."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from devkit.host import comfyui_path
from devkit.host_imports import imports_at_startup


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_only_unguarded_module_level_imports_reached_from_main_count(tmp_path: Path) -> None:
    reached = _tree(
        tmp_path / "reached",
        {
            "main.py": "import os\nif __name__ == '__main__':\n    import comfy.sd\n",
            "comfy/__init__.py": "",
            "comfy/sd.py": "from .ldm import audio_vae\n",
            "comfy/ldm/__init__.py": "",
            "comfy/ldm/audio_vae.py": "import torchaudio.functional as AF\n",
        },
    )
    assert imports_at_startup(reached, "torchaudio")
    guarded = _tree(
        tmp_path / "guarded",
        {
            "main.py": "import comfy.sd\n",
            "comfy/__init__.py": "",
            "comfy/sd.py": "try:\n    import torchaudio\nexcept ImportError:\n    torchaudio = None\n"
            "def load():\n    import torchaudio\n",
            "comfy/audio.py": "import torchaudio\n",  # never imported from main
        },
    )
    assert not imports_at_startup(guarded, "torchaudio")


def test_the_host_under_test_has_torchaudio_when_it_imports_it_at_startup() -> None:
    """dev/provision.sh gives a host that needs torchaudio (ComfyUI 0.30 on) a venv that has it."""
    needs = imports_at_startup(comfyui_path(), "torchaudio")
    has = importlib.util.find_spec("torchaudio") is not None
    assert has or not needs, f"{comfyui_path()} imports torchaudio at startup, which this venv lacks"
