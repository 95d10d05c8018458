"""The pack in a real ComfyUI HTTP server: its node schemas, and the README's main job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageStat

from devkit.host import REPO_ROOT, ComfyServer

PACK_NODES = {
    "TrajectoryConsistencySampler": "TCD Sampler",
    "TrajectoryConsistencyScheduler": "TCD Scheduler",
    "TrajectoryConsistencyLoraLoader": "TCD LoRA Loader",
}


def test_every_tcd_node_is_listed_with_tooltips_on_every_input(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    for node_id, display_name in PACK_NODES.items():
        schema = info[node_id]
        assert schema["display_name"] == display_name
        assert schema["description"]
        inputs = {**schema["input"]["required"], **schema["input"].get("optional", {})}
        assert inputs
        for name, spec in inputs.items():
            options = spec[1] if len(spec) > 1 else {}
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
    categories = {info[node_id]["category"] for node_id in PACK_NODES}
    assert categories == {"sampling/custom_sampling/samplers", "sampling/custom_sampling/schedulers", "loaders"}


def test_ksampler_lists_offer_tcd(comfy_server: ComfyServer) -> None:
    required = comfy_server.object_info("KSampler")["input"]["required"]
    samplers, schedulers = required["sampler_name"][0], required["scheduler"][0]
    assert samplers.count("tcd") == 1 and schedulers.count("tcd") == 1
    assert "lcm" in samplers and "karras" in schedulers  # appended, not replaced


def test_template_browser_lists_the_example_workflows(comfy_server: ComfyServer) -> None:
    """ComfyUI's template browser reads /workflow_templates and serves each pack's workflows/ files."""
    stems = sorted(path.stem for path in (REPO_ROOT / "workflows").glob("*.json"))
    assert len(stems) >= 8
    listed = comfy_server.get_json("/workflow_templates")
    assert sorted(listed[comfy_server.pack_link.name]) == stems
    served = comfy_server.get_json(f"/api/workflow_templates/{comfy_server.pack_link.name}/{stems[0]}.json")
    assert served == json.loads((REPO_ROOT / "workflows" / f"{stems[0]}.json").read_text())


def test_main_job_writes_a_finite_image(tmp_path: Path, test_models: dict) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devkit.run_workflow", "--out", str(tmp_path), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"\[run\] image: (\S+)", result.stdout)
    assert match, result.stdout
    image_path = Path(match.group(1))
    assert image_path.parent == tmp_path
    with Image.open(image_path) as image:
        stats = ImageStat.Stat(image.convert("RGB"))
    assert all(0 < std for std in stats.stddev), "a constant image means the pipeline produced nothing"
    assert "server start" in result.stdout and "workflow" in result.stdout
