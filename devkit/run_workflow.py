"""The main job: a TCD example workflow executed headless through a real ComfyUI server.

The workflow file (default workflows/tcd_sd15_text_to_image.json) is converted from the UI format
with workflow_tools against the server's own /object_info, then run.

Uses the user's checkpoint and TCD LoRA when $COMFYUI_PATH/models holds them (any checkpoint,
and a LoRA whose name contains "tcd"); otherwise random-weight SD1.5 models built at run time
with ComfyUI's own classes (the picture is then noise-like, but every stage runs for real).
Prints where the image went and how long each stage took. A setting the server refuses (say --gamma 1.5)
ends the run with ComfyUI's validation message alone and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from comfyui_tcd_sampling import tcd_core

from devkit import build_test_models
from devkit.host import REPO_ROOT, ComfyServer, PromptRejected, comfyui_path
from devkit.model_files import default_models_dir, ensure_test_models
from workflow_tools import merged_object_info, to_api

DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "tcd_sd15_text_to_image.json"
PROG = "dev/run"

OVERRIDES = {
    ("RandomNoise", "noise_seed"): "seed",
    ("TrajectoryConsistencyScheduler", "steps"): "steps",
    ("TrajectoryConsistencySampler", "gamma"): "gamma",
    ("EmptyLatentImage", "width"): "size",
    ("EmptyLatentImage", "height"): "size",
}
"""(node class, input): the option of this command that sets it (unset options keep the workflow's value)."""

TIMINGS: list[tuple[str, float]] = []


@contextmanager
def stage(name: str):
    start = time.perf_counter()
    yield
    TIMINGS.append((name, time.perf_counter() - start))
    print(f"[run] {name}: {TIMINGS[-1][1]:.1f} s", flush=True)


def real_models(models_root: Path) -> tuple[str, str] | None:
    """(checkpoint, TCD LoRA) names from a real ComfyUI's models folder, or None."""
    checkpoints = sorted(p for p in (models_root / "checkpoints").glob("*.safetensors") if "tcd-test" not in p.name)
    loras = sorted(p for p in (models_root / "loras").glob("*.safetensors") if "tcd" in p.name.lower())
    loras = [p for p in loras if "tcd-test" not in p.name]
    if checkpoints and loras:
        return checkpoints[0].name, loras[0].name
    return None


def api_prompt(workflow_path: Path, object_info: dict, ckpt: str, lora: str, args: argparse.Namespace) -> dict:
    """The example workflow in API format, with the chosen models and the command line's settings."""
    workflow = json.loads(workflow_path.read_text())
    prompt = to_api(workflow, merged_object_info([object_info]))
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt
        elif kind == "TrajectoryConsistencyLoraLoader":
            inputs["tcd_lora"] = lora
        elif kind == "CLIPTextEncode" and args.prompt and inputs.get("text"):
            inputs["text"] = args.prompt  # the positive prompt: the negative one is empty at CFG 1
        for (node_class, name), option in OVERRIDES.items():
            if kind == node_class and getattr(args, option) is not None:
                inputs[name] = getattr(args, option)
    return prompt


def image_at_lora_strength(server: ComfyServer, prompt: dict, strength: float):
    """The one image ``prompt`` saves, run with its TCD LoRA Loader's ``tcd_lora_strength`` set (changed in place)."""
    from PIL import Image

    for node in prompt.values():
        if node["class_type"] == "TrajectoryConsistencyLoraLoader":
            node["inputs"]["tcd_lora_strength"] = strength
    (path,) = server.output_images(server.run(prompt, timeout=600))
    with Image.open(path) as image:
        return image.convert("RGB")


def rejection_lines(answer: dict) -> list[str]:
    """ComfyUI's validation answer (POST /prompt's error JSON) as one line per refused input, naming the node,
    the input and the option of this command that set it."""
    lines = []
    for node_id, node in (answer.get("node_errors") or {}).items():
        kind = node.get("class_type", "?")
        for error in node.get("errors", []):
            extra = error.get("extra_info") or {}
            name = extra.get("input_name") or error.get("details") or "?"
            option = OVERRIDES.get((kind, name))
            given = f" = {extra['received_value']!r}" if "received_value" in extra else ""
            source = f" (--{option})" if option else ""
            lines.append(f"{kind} (node {node_id}) input {name}{given}{source}: {error.get('message', '?')}")
    if not lines:
        error = answer.get("error") or {}
        lines.append(": ".join(part for part in (error.get("message"), error.get("details")) if part) or str(answer))
    return lines


def image_stats(path: Path) -> str:
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        stats = ImageStat.Stat(image.convert("L"))
        return f"{image.width}x{image.height}, luminance mean {stats.mean[0]:.1f}, std {stats.stddev[0]:.1f}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and each option's default after its help (unless the help names it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help="a UI-format workflow (default: workflows/tcd_sd15_text_to_image.json)")  # fmt: skip
    parser.add_argument("--prompt", default=None, help="replace the workflow's positive prompt")
    parser.add_argument("--seed", type=int, default=0, help="RandomNoise's noise_seed")
    parser.add_argument("--steps", type=int, default=4, help="TCD Scheduler's steps")
    parser.add_argument("--gamma", type=float, default=tcd_core.DEFAULT_GAMMA, help="TCD Sampler's gamma, 0 to 1")
    parser.add_argument("--size", type=int, default=None,
                        help="width and height in pixels (default: the workflow's; 64 on random models)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out",
                        help="folder the image is copied to (default: out/)")  # fmt: skip
    return parser


def choose_models(args: argparse.Namespace) -> tuple[Path | None, str, str]:
    """(models folder to map in or None, checkpoint name, TCD LoRA name): the user's, else the test models."""
    comfy = comfyui_path()
    found = real_models(comfy / "models")
    args.size = args.size or (None if found else 64)
    if found:
        print(f"[run] real models from {comfy / 'models'}: {found[0]} + {found[1]}")
        return None, *found
    if build_test_models.stale_artifacts(default_models_dir()):
        print(f"[run] building random-weight test models in {default_models_dir()} (once: about 3 GB, a minute "
              "or two)", flush=True)  # fmt: skip
    paths = ensure_test_models(default_models_dir())
    print(f"[run] no real checkpoint + TCD LoRA in {comfy / 'models'}: random-weight SD1.5 test models")
    return default_models_dir(), paths["checkpoint_sd15"].name, paths["lora_sd15"].name


def run_job(server: ComfyServer, args: argparse.Namespace, ckpt: str, lora: str) -> Path:
    """Convert and run the workflow on a started server; returns the image's copy in ``args.out``. Raises
    PromptRejected when the server refuses the prompt."""
    with stage("convert workflow"):
        prompt = api_prompt(args.workflow, server.object_info(), ckpt, lora, args)
    with stage(f"workflow {args.workflow.name} ({args.steps} TCD steps)"):
        entry = server.run(prompt, timeout=3600)
    images = server.output_images(entry)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / images[0].name
    shutil.copy(images[0], target)
    return target


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage("models"):
        models_dir, ckpt, lora = choose_models(args)
    with stage("server start"):
        server = ComfyServer(models_dir=models_dir).start()
    refusal: list[str] = []
    try:
        target = run_job(server, args, ckpt, lora)
    except PromptRejected as rejected:  # a bad override: ComfyUI's own validation message, last, alone
        refusal = rejection_lines(rejected.answer)
    finally:
        with stage("server stop"):
            server.stop()
            server.cleanup()
    if refusal:
        for line in refusal:
            print(f"{PROG}: ComfyUI refused the workflow: {line}", file=sys.stderr)
        return 2
    print(f"[run] image: {target} ({image_stats(target)})")
    print("[run] stages: " + json.dumps({name: round(seconds, 2) for name, seconds in TIMINGS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
