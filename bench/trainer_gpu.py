"""GPU benchmark of the trainer (tcd_train) beside diffusers' LCM-LoRA script, and the DDP cost on paper.

    COMFYUI_PATH=<ComfyUI tree> python -m bench.trainer_gpu [--diffusers-script train_lcm_distill_lora_sd_wds.py
        --diffusers-model <SD1.5 in diffusers layout>] [--out bench/results/trainer_gpu.json]
    python -m bench.trainer_gpu --dry-run      # the same code, tiny, on the CPU (checks the script)

Cases (each a fresh process, as users run them): this trainer in TCD and LCM mode, with and without
gradient checkpointing, on the random-weight SD1.5 test checkpoint (single file); 512x512, batch 8,
rank 64, bf16; the same at 2 processes (``torch.distributed.run``; on one GPU both share it, which shows
the DDP path works and what it costs, not a speed-up); diffusers' script on the same model in diffusers
layout when ``--diffusers-script`` and ``--diffusers-model`` are given. Iterations per second are taken
from two runs of different length, ``(N2 - N1) / (T2 - T1)``, so start-up and model loading cancel and
both trainers are timed the same way; peak GPU memory is the device's ``memory.used`` (nvidia-smi,
polled), again the same for both (the CPU dry run reports the children's peak RSS instead).

Neither diffusers' script nor its converter ships in the diffusers wheel or sdist: carry
``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py`` and
``scripts/convert_original_stable_diffusion_to_diffusers.py`` from a diffusers git checkout of the
installed version to the GPU machine (it has no internet), with peft, transformers and webdataset.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from devkit.host import REPO_ROOT, dev_dir

GPU = {"resolution": 512, "batch": 8, "rank": 64, "precision": "bf16", "steps": (6, 16), "images": 64}
DRY = {"resolution": 64, "batch": 2, "rank": 4, "precision": "no", "steps": (1, 2), "images": 8}


def write_shards(folder: Path, images: int, size: int, per_shard: int = 16) -> str:
    """Random JPEGs with captions and LAION-style json (sizes, pwatermark: diffusers' wds filter reads them)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = (images + per_shard - 1) // per_shard
    for s in range(count):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in range(per_shard):
                buffer = io.BytesIO()
                Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(buffer, format="JPEG")
                meta = json.dumps({"original_width": 1024, "original_height": 1024, "pwatermark": 0.0})
                for ext, payload in (("jpg", buffer.getvalue()), ("txt", b"a photo"), ("json", meta.encode())):
                    info = tarfile.TarInfo(f"{s:05d}{j:04d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"{{00000..{count - 1:05d}}}.tar")


class MemoryPoll:
    """Peak device memory.used (MiB) over a run, polled from nvidia-smi; None without a GPU."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        smi = shutil.which("nvidia-smi")
        while smi and not self._stop.is_set():
            try:
                query = [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
                out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout  # noqa: S603
                used = max(float(v) for v in out.split())
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> MemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ours(model: Path, shards: str, out: Path, size: dict, method: str, checkpointing: bool, steps: int,
         processes: int, cpu: bool) -> list[str]:  # fmt: skip
    launcher = [sys.executable, "-m", "tcd_train"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "-m", "tcd_train"]
    return [
        *launcher, "--pretrained_model", str(model), "--train_shards_path_or_url", shards,
        "--resolution", str(size["resolution"]), "--train_batch_size", str(size["batch"]),
        "--lora_rank", str(size["rank"]), "--mixed_precision", size["precision"], "--method", method,
        "--max_train_steps", str(steps), "--lr_warmup_steps", "0", "--checkpointing_steps", "100000",
        "--report_to", "none", "--output_dir", str(out),
        *(["--gradient_checkpointing"] if checkpointing else []), *(["--cpu"] if cpu else []),
    ]  # fmt: skip


def theirs(script: Path, model: Path, shards: str, out: Path, size: dict, checkpointing: bool, steps: int) -> list[str]:
    return [
        sys.executable, str(script), "--pretrained_teacher_model", str(model), "--train_shards_path_or_url", shards,
        "--resolution", str(size["resolution"]), "--train_batch_size", str(size["batch"]),
        "--lora_rank", str(size["rank"]), "--mixed_precision", size["precision"], "--max_train_steps", str(steps),
        "--learning_rate", "1e-4", "--loss_type", "huber", "--w_min", "3", "--w_max", "15",
        "--checkpointing_steps", "100000", "--validation_steps", "100000", "--output_dir", str(out),
        "--dataloader_num_workers", "4", *(["--gradient_checkpointing"] if checkpointing else []),
    ]  # fmt: skip


def timed(command: list[str]) -> tuple[float, float | None, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with MemoryPoll() as memory:
        start = time.perf_counter()
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)  # noqa: S603
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\nfailed ({result.returncode}):\n{result.stderr[-4000:]}")
    return seconds, memory.peak, result.stdout + result.stderr


def measure(make, steps: tuple[int, int], out: Path) -> dict:
    """it/s from two run lengths (start-up cancels), peak memory, and our trainer's own summary."""
    (t1, _, _), (t2, peak, output) = (timed(make(n, out / f"n{n}")) for n in steps)
    match = re.search(r"tcd_train summary: (\{.*\})", output)
    summary = json.loads(match.group(1)) if match else {}
    row = {"it_per_s": (steps[1] - steps[0]) / (t2 - t1), "peak_gpu_mib": peak, "seconds": [t1, t2]}
    if summary:
        row["own_steady_it_per_s"] = summary.get("steady_steps_per_s")
        row["own_peak_allocated_gib"] = summary.get("peak_memory_gib")
    return row


def lora_allreduce_volume(rank: int = 64, processes: int = 8) -> dict:
    """The LoRA's trainable parameters on SD1.5 (the node's lora_targets on ComfyUI's full-size SD1.5 UNet,
    key map and shapes exact, meta device) and what DDP all-reduces per optimizer step (fp32 gradients)."""
    from devkit.comfy_import import import_comfyui

    import_comfyui(cpu=True)
    from devkit.sdxl_test_model import sd15_meta_model
    from tcd_train.pack import pack_module

    patcher, _ = sd15_meta_model()
    targets = pack_module("nodes.distill_training").lora_targets(patcher.model)
    per_rank = sum(m.weight.shape[0] + m.weight.shape[1:].numel() for _, m in targets)
    params = rank * per_rank
    grad_bytes = 4 * params
    return {
        "modules": len(targets),
        "parameters": params,
        "gradient_bytes": grad_bytes,
        "ring_bytes_per_gpu": 2 * (processes - 1) / processes * grad_bytes,  # sent (and received) per GPU
        "processes": processes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny, on the CPU")
    parser.add_argument("--diffusers-script", type=Path, default=None)
    parser.add_argument("--diffusers-model", type=Path, default=None, help="the same SD1.5 in diffusers layout")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    size = DRY if args.dry_run else GPU
    work = Path(tempfile.mkdtemp(prefix="tcd-trainer-bench-"))
    from devkit.comfy_import import import_comfyui

    import_comfyui(cpu=True)
    if args.dry_run:
        from devkit.tiny_checkpoint import build_tiny_sd15_checkpoint

        model = build_tiny_sd15_checkpoint(dev_dir() / "trainer-models")
    else:
        from devkit.model_files import ensure_test_models

        model = ensure_test_models()["checkpoint_sd15"]
    shards = write_shards(work / "shards", size["images"], size["resolution"])
    rows: dict[str, dict] = {}
    cases = [(m, gc, 1) for m in ("tcd", "lcm") for gc in (False, True)] + [("tcd", False, 2)]
    for method, checkpointing, processes in cases:
        name = f"ours {method} gc={'on' if checkpointing else 'off'} x{processes}"

        def make(n: int, out: Path, method=method, checkpointing=checkpointing, processes=processes) -> list[str]:
            return ours(model, shards, out, size, method, checkpointing, n, processes, args.dry_run)

        rows[name] = measure(make, size["steps"], work / name.replace(" ", "_"))
        rows[name]["images_per_s"] = rows[name]["it_per_s"] * size["batch"] * processes
        print(name, json.dumps(rows[name]), flush=True)
    if args.diffusers_script and args.diffusers_model:
        for checkpointing in (False, True):
            name = f"diffusers lcm gc={'on' if checkpointing else 'off'} x1"

            def make(n: int, out: Path, checkpointing=checkpointing) -> list[str]:
                return theirs(args.diffusers_script, args.diffusers_model, shards, out, size, checkpointing, n)

            rows[name] = measure(make, size["steps"], work / name.replace(" ", "_"))
            print(name, json.dumps(rows[name]), flush=True)
    else:
        print("diffusers' script: not run (give --diffusers-script and --diffusers-model)", flush=True)
    volume = lora_allreduce_volume(rank=64, processes=8)
    print("all-reduce per step, rank 64, 8 GPUs:", json.dumps(volume), flush=True)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"size": size, "rows": rows, "allreduce": volume, "children_peak_rss_mib": peak_rss_mib}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
