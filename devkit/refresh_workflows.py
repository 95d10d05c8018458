"""Round-trips the example workflows through ComfyUI's real web UI and writes back what it saves.

    python -m devkit.refresh_workflows                  # workflows/*.json, rewritten as the frontend saves them
    python -m devkit.refresh_workflows --check          # exit 1 when a file is not what the frontend saves
    python -m devkit.refresh_workflows --screenshots    # also the committed docs/screenshots/<stem>.png
    python -m devkit.refresh_workflows workflows/new.json   # one file (e.g. a new, hand-written one)

The workflows are frozen JSON files, edited in the UI (or by hand). This command opens each in the
headless web UI of a ComfyUI started here (this pack and the stand-in packs loaded, the frontend the
host pins unless --frontend newest), through the UI's own file input, refuses a file with a missing
node type, zooms the graph to fit a 1600x1000 window and writes `app.graph.serialize()` back: what
"Save" writes, plus the file's top-level `models` list (the frontend reads it to offer downloads
but does not save it). Widget values, links and the notes are kept as they are; layout details,
slot metadata and node order come from the frontend.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from devkit.browser import ComfyUIPage, newest_frontend, pinned_frontend, ui_server
from devkit.host import REPO_ROOT

WORKFLOWS_DIR = REPO_ROOT / "workflows"
SCREENSHOTS_DIR = REPO_ROOT / "docs" / "screenshots"


def render(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def refresh(paths: list[Path], *, check: bool, screenshots: Path | None, frontend_label: str) -> list[Path]:
    """Round-trips each file through the UI; returns the files that were (or, with check, would be) changed."""
    frontend = newest_frontend() if frontend_label == "newest" else pinned_frontend()
    changed: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="tcd-refresh-") as work:
        server = ui_server(Path(work) / "host", frontend)
        with server, ComfyUIPage(server.url, Path(work) / "chromium") as ui:
            print(f"frontend {frontend.label}: comfyui-frontend-package {ui.frontend_version()}")
            for path in paths:
                load = ui.load_workflow(path)
                if load.problems():
                    raise SystemExit(f"{path}: the UI did not take it as it is:\n" + "\n".join(load.problems()))
                saved = ui.serialize()
                models = json.loads(path.read_text(encoding="utf-8")).get("models")
                if models is not None:  # written by hand: the frontend reads it on loading but never saves it
                    saved["models"] = models
                text = render(saved)
                if path.read_text(encoding="utf-8") != text:
                    changed.append(path)
                    if not check:
                        path.write_text(text, encoding="utf-8")
                if screenshots is not None:
                    ui.screenshot(screenshots / f"{path.stem}.png")
                state = "differs" if check and path in changed else "rewritten" if path in changed else "unchanged"
                print(f"{path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}: {state}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="default: workflows/*.json")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file would change")
    parser.add_argument(
        "--screenshots", action="store_true", help=f"also write {SCREENSHOTS_DIR.relative_to(REPO_ROOT)}"
    )
    parser.add_argument("--frontend", choices=("pinned", "newest"), default="pinned")
    options = parser.parse_args(argv)
    paths = [path.resolve() for path in options.workflows] or sorted(WORKFLOWS_DIR.glob("*.json"))
    screenshots = SCREENSHOTS_DIR if options.screenshots else None
    changed = refresh(paths, check=options.check, screenshots=screenshots, frontend_label=options.frontend)
    if options.check and changed:
        print(f"not as the frontend saves them (run python -m devkit.refresh_workflows): {len(changed)} files")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
