"""GPU benchmark of the trainer (tcd_train) beside diffusers' LCM-LoRA script, and the DDP cost on paper.

    COMFYUI_PATH=<ComfyUI tree> python -m bench.trainer_gpu [--diffusers-script train_lcm_distill_lora_sd_wds.py
        --diffusers-site <folder with webdataset 0.2.86>] [--out bench/results/trainer_gpu.json]
    python -m bench.trainer_gpu --dry-run ...  # the same code, tiny, on the CPU (checks every step works)

Cases (each a fresh process, as users run them): this trainer in TCD and LCM mode, with and without
gradient checkpointing, on the random-weight SD1.5 test checkpoint (single file; the tiny one-level
SD1.5-family checkpoint in the dry run); 512x512, batch 8, rank 64, bf16; the same at 2 processes
(``torch.distributed.run``; on one GPU both share it, which shows the DDP path works and what it costs,
not a speed-up); diffusers' script as published on the very same weights in diffusers' layout
(devkit.diffusers_layout writes it) when ``--diffusers-script`` is given. Iterations per second are taken
from two runs of different length, ``(N2 - N1) / (T2 - T1)``, so start-up and model loading cancel and
both trainers are timed the same way; peak GPU memory is the device's ``memory.used`` (nvidia-smi,
polled), again the same for both; the CPU dry run reports each run's peak RSS instead.

diffusers' script is not in the diffusers wheel or sdist: take
``examples/consistency_distillation/train_lcm_distill_lora_sd_wds.py`` from a diffusers git checkout. It
needs peft and a webdataset before 1.0 (1.0 yields an empty end-of-shard sample that the script's
``group_by_keys_nothrow`` reads as ``KeyError: 'fname'``): ``pip install --target DIR --no-deps
webdataset==0.2.86`` and pass ``--diffusers-site DIR`` (put first on its PYTHONPATH only).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
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

GPU = {"resolution": 512, "batch": 8, "rank": 64, "precision": "bf16", "steps": (6, 16), "images": 64, "workers": 4}
DRY = {"resolution": 64, "batch": 2, "rank": 4, "precision": "no", "steps": (2, 6), "images": 16, "workers": 1}


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
    """Peaks over a run, polled every 0.2 s: the device's memory.used (MiB, nvidia-smi; None without a GPU)
    and the summed RSS (MiB) of the run's process tree (psutil; None without it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: float | None = None
        self.peak_rss: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _gpu_used(self, smi: str | None) -> float | None:
        if not smi:
            return None
        query = [smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        try:
            out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout  # noqa: S603
            return max(float(v) for v in out.split())
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def _tree_rss(self) -> float | None:
        try:
            import psutil

            root = psutil.Process(self.pid)
            return sum(p.memory_info().rss for p in (root, *root.children(recursive=True))) / 2**20
        except Exception:  # noqa: BLE001 - psutil missing, or the tree changed while read
            return None

    def _run(self) -> None:
        smi = shutil.which("nvidia-smi")
        while not self._stop.is_set():
            for name, value in (("peak", self._gpu_used(smi)), ("peak_rss", self._tree_rss())):
                if value is not None:
                    setattr(self, name, max(value, getattr(self, name) or 0.0))
            self._stop.wait(0.2)

    def __enter__(self) -> MemoryPoll:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def ours(model: Path, shards: str, out: Path, size: dict, method: str, checkpointing: bool, steps: int,
         processes: int, cpu: bool) -> list[str]:  # fmt: skip
    launcher = [sys.executable, "-m", "comfyui_tcd_sampling.tcd_train"]
    if processes > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            "-m",
            "comfyui_tcd_sampling.tcd_train",
        ]
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
        "--max_train_samples", str(size["images"]), "--dataloader_num_workers", str(size["workers"]),
        *(["--gradient_checkpointing"] if checkpointing else []),
    ]  # fmt: skip


def timed(command: list[str], site: Path | None = None) -> tuple[float, float | None, float, str]:
    """(seconds, peak GPU MiB, peak RSS MiB of the run's process tree, output); ``site`` goes first
    on the run's PYTHONPATH."""
    path = [str(site)] if site else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(REPO_ROOT)])}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)  # noqa: S603
        with MemoryPoll(process.pid) as memory:
            process.wait()
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}\nfailed ({process.returncode}):\n{output[-4000:]}")
    return seconds, memory.peak, memory.peak_rss, output


def measure(make, steps: tuple[int, int], out: Path, site: Path | None = None) -> dict:
    """it/s from two run lengths (start-up cancels), peak memory, and our trainer's own summary."""
    (t1, _, _, _), (t2, peak, rss, output) = (timed(make(n, out / f"n{n}"), site) for n in steps)
    match = re.search(r"tcd_train summary: (\{.*\})", output)
    summary = json.loads(match.group(1)) if match else {}
    row = {"it_per_s": (steps[1] - steps[0]) / (t2 - t1), "peak_gpu_mib": peak, "peak_rss_mib": rss,
           "seconds": [t1, t2]}  # fmt: skip
    if summary:
        row["own_steady_it_per_s"] = summary.get("steady_steps_per_s")
        row["own_peak_allocated_gib"] = summary.get("peak_memory_gib")
    return row


def lora_allreduce_volume(rank: int = 64, processes: int = 8) -> dict:
    """The LoRA's trainable parameters on SD1.5 (the node's lora_targets on ComfyUI's full-size SD1.5 UNet,
    key map and shapes exact, meta device) and what DDP all-reduces per optimizer step (fp32 gradients)."""
    from devkit.comfy_import import import_comfyui

    import_comfyui(cpu=True)
    from comfyui_tcd_sampling.tcd_comfy.lora_adapters import lora_targets

    from devkit.sdxl_test_model import sd15_meta_model

    patcher, _ = sd15_meta_model()
    targets = lora_targets(patcher.model)
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


def models(dry_run: bool) -> tuple[Path, Path]:
    """(single file for this trainer, the same weights in diffusers' layout for diffusers' script)."""
    from devkit.diffusers_layout import write_diffusers_layout

    if dry_run:
        from devkit.tiny_checkpoint import TINY_SD15_UNET_CONFIG, build_tiny_sd15_checkpoint

        single, config, name = build_tiny_sd15_checkpoint(dev_dir() / "trainer-models"), TINY_SD15_UNET_CONFIG, "tiny"
    else:
        from devkit.build_test_models import SD15_UNET_CONFIG
        from devkit.model_files import ensure_test_models

        single, config, name = ensure_test_models()["checkpoint_sd15"], SD15_UNET_CONFIG, "sd15"
    return single, write_diffusers_layout(single, dev_dir() / "trainer-models" / f"{name}-diffusers", config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny, on the CPU")
    parser.add_argument("--diffusers-script", type=Path, default=None, help="train_lcm_distill_lora_sd_wds.py")
    parser.add_argument("--diffusers-site", type=Path, default=None, help="put first on the script's PYTHONPATH")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    size = DRY if args.dry_run else GPU
    work = Path(tempfile.mkdtemp(prefix="tcd-trainer-bench-"))
    from devkit.comfy_import import import_comfyui

    import_comfyui(cpu=True)
    model, diffusers_model = models(args.dry_run)
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
    if args.diffusers_script:
        for checkpointing in (False, True):
            name = f"diffusers lcm gc={'on' if checkpointing else 'off'} x1"

            def make(n: int, out: Path, checkpointing=checkpointing) -> list[str]:
                return theirs(args.diffusers_script, diffusers_model, shards, out, size, checkpointing, n)

            rows[name] = measure(make, size["steps"], work / name.replace(" ", "_"), args.diffusers_site)
            rows[name]["images_per_s"] = rows[name]["it_per_s"] * size["batch"]
            print(name, json.dumps(rows[name]), flush=True)
    else:
        print("diffusers' script: not run (give --diffusers-script)", flush=True)
    volume = lora_allreduce_volume(rank=64, processes=8)
    print("all-reduce per step, rank 64, 8 GPUs:", json.dumps(volume), flush=True)
    result = {"size": size, "rows": rows, "allreduce": volume, "models": [str(model), str(diffusers_model)]}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
