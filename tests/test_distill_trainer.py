"""The multi-process trainer (tcd_train): distribution, resume, parity with the node, LoRA layout, bad input.

Real ComfyUI model classes throughout: a tiny random-weight SD1.5-family single-file checkpoint
(devkit.tiny_checkpoint: ComfyUI detects it as SD15; one UNet level) and tiny webdataset shards written
here (64x64-ish JPEGs + captions, 8x8 latents). Two processes run under torch's own launcher
(``python -m torch.distributed.run``, gloo on the CPU), the killed run is a real SIGKILL.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import random
import re
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from devkit.comfy_import import import_comfyui
from devkit.host import REPO_ROOT, dev_dir
from devkit.inprocess import load_comfy
from devkit.model_files import default_models_dir
from devkit.tiny_checkpoint import build_tiny_sd15_checkpoint

STEPS, KILL_AT, RANK = 2, 1, 4
TRAINER = "comfyui_tcd_sampling.tcd_train"  # the module `tcd-train` runs (devkit makes this checkout importable)
CAPTIONS = ("a red square", "a blue circle")


def _jpeg(seed: int, width: int, height: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_shards(folder: Path, shards: int = 2, per_shard: int = 3) -> str:
    """webdataset shards (LAION layout: <key>.jpg + <key>.txt); returns the brace spec naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        with tarfile.open(folder / f"shard-{s:02d}.tar", "w") as tar:
            for j in range(per_shard):
                key = f"{s:02d}{j:04d}"
                for ext, payload in (("jpg", _jpeg(10 * s + j, 80, 64)), ("txt", CAPTIONS[j % 2].encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / f"shard-{{00..{shards - 1:02d}}}.tar")


@pytest.fixture(scope="module")
def checkpoint(test_models: dict) -> Path:
    import_comfyui(cpu=True)
    return build_tiny_sd15_checkpoint(dev_dir() / "trainer-models", test_models["checkpoint_sd15"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_shards(tmp_path_factory.mktemp("shards"))


def trainer_args(checkpoint: Path, data: str, out: Path, batch: int, *extra: str) -> list[str]:
    data_flag = "--train_data_dir" if Path(data).is_dir() else "--train_shards_path_or_url"
    return [
        "--cpu", "--pretrained_model", str(checkpoint), data_flag, data, "--resolution", "64",
        "--train_batch_size", str(batch), "--max_train_steps", str(STEPS), "--lr_warmup_steps", "0",
        "--lora_rank", str(RANK), "--learning_rate", "1e-3", "--output_dir", str(out), "--report_to", "none",
        "--checkpointing_steps", "100", "--seed", "11", *extra,
    ]  # fmt: skip


def launch(
    args: list[str],
    processes: int = 1,
    port: int = 29561,
    node: tuple[int, int] | None = None,
    umask: int = -1,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """The trainer in a fresh process: alone, under torchrun on ``processes`` local processes, or as node
    ``node = (rank, count)`` of a multi-node torchrun job (one process per node, rendezvous on localhost);
    ``umask`` (-1: this process's) and ``env`` (added to this process's) for it."""
    launcher = [sys.executable, "-m", TRAINER]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                    f"--master_port={port}", "-m", TRAINER]  # fmt: skip
    if node is not None:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={node[1]}",
                    f"--node_rank={node[0]}", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                    f"--master_port={port}", "-m", TRAINER]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([*launcher, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, umask=umask)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Wait for a launched run: (exit code, its output); kept, so that several tests can read one run."""
    if not hasattr(process, "tcd_output"):
        process.tcd_output, _ = process.communicate(timeout=timeout)
    return process.returncode, process.tcd_output


def train_here(argv: list[str], draws: Any = None) -> dict:
    """The trainer in this process (one process, accelerate's single-process state), on one thread as the
    launched runs (OMP_NUM_THREADS=1), so that both sum in the same order."""
    from comfyui_tcd_sampling.tcd_train.options import build_parser
    from comfyui_tcd_sampling.tcd_train.train import train

    with one_thread():
        return train(build_parser().parse_args(argv), draws=draws)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread (as OMP_NUM_THREADS=1 runs): sums in one order, so runs compare bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@functools.cache
def initial_lora(checkpoint: Path, seed: int = 11) -> dict[str, torch.Tensor]:
    """The LoRA every run starts from: the node's attach_lora on the checkpoint, same seed."""
    import comfy.sd
    from comfyui_tcd_sampling.tcd_comfy.lora_adapters import attach_lora

    patcher = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False, output_clip=False)[0]
    return attach_lora(patcher.clone(), RANK, torch.float32, seed).state_dict()


def delta_difference(a: dict, b: dict, start: dict) -> tuple[float, float, float]:
    """(|Δa - Δb| / |Δa|, max |a - b|, |Δa|): how far two trained LoRAs differ, relative to how far they moved."""
    assert a.keys() == b.keys() == start.keys()
    moved = sum(((a[k].double() - start[k].double()) ** 2).sum() for k in a) ** 0.5
    diff = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a) ** 0.5
    return float(diff / moved), max(float((a[k] - b[k]).abs().max()) for k in a), float(moved)


@pytest.fixture(scope="module")
def launched(checkpoint: Path, shards: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both subprocess runs started at once (the two cores share them): 2 x B with SGD (a checkpoint at step 1, umask
    022), and a killed AdamW run."""
    root = tmp_path_factory.mktemp("launched")
    ddp = launch(trainer_args(checkpoint, shards, root / "ddp", 1, "--optimizer", "SGD", "--learning_rate", "0.2",
                              "--checkpointing_steps", "1"), 2, umask=0o022)  # fmt: skip
    killed_dir = root / "killed"
    killed = launch(trainer_args(checkpoint, shards, killed_dir, 2, "--checkpointing_steps", "1", "--stop_at_step",
                                 str(KILL_AT)))  # fmt: skip
    yield {"ddp": (ddp, root / "ddp"), "killed": (killed, killed_dir)}
    for process in (ddp, killed):
        if process.poll() is None:
            process.kill()
            process.wait()


def test_two_processes_with_batch_b_train_the_lora_of_one_process_with_batch_2b(
    launched: dict, checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    """2 x B (DDP) = 1 x 2B; and = 1 x B with 2 accumulated batches, which makes the same batch-B forwards."""
    sgd = ("--optimizer", "SGD", "--learning_rate", "0.2")
    one = train_here(trainer_args(checkpoint, shards, tmp_path / "one", 2, *sgd))
    accumulated = train_here(trainer_args(checkpoint, shards, tmp_path / "acc", 1, *sgd,
                                          "--gradient_accumulation_steps", "2"))  # fmt: skip
    process, out = launched["ddp"]
    code, output = finish(process)
    assert code == 0, output[-6000:]
    assert '"processes": 2' in output and one["processes"] == 1
    start = initial_lora(checkpoint)
    ddp = load_file(out / "tcd_lora.safetensors")
    rel, max_abs, moved = delta_difference(load_file(one["lora"]), ddp, start)
    rel_acc, max_abs_acc, _ = delta_difference(load_file(accumulated["lora"]), ddp, start)
    print(f"after {STEPS} SGD steps, |dLoRA| = {moved:.3g}: 1x2B vs 2xB |dA-dB|/|dA| = {rel:.3g} (max {max_abs:.3g}); "
          f"1xB accumulating 2 vs 2xB {rel_acc:.3g} (max {max_abs_acc:.3g})")  # fmt: skip
    assert moved > 1e-3  # training moved the LoRA
    # Batch 2B vs. B forwards differ by fp32 round-off, magnified by the guided teacher (x0 = (x_t - s_t eps) / a_t
    # at large t, times w up to 15): ~1e-4 measured. A wrong sample split or a missing / summed all-reduce would
    # differ by O(1). The same batch-B forwards summed by DDP or by accumulation agree to round-off of the sum.
    assert rel < 1e-3
    assert rel_acc < 1e-5
    # the checkpoint both processes saved (each its RNG state), renamed whole by the main one; 0644 under umask 022
    assert assert_whole_checkpoints(out, 0o644) == [1] and (out / "checkpoint-1" / "random_states_1.pkl").is_file()
    assert stat.S_IMODE((out / "tcd_lora.safetensors").stat().st_mode) == 0o644
    assert not [p.name for p in out.iterdir() if p.name.endswith((".saving", ".deleting", ".partial"))]


def test_a_killed_run_resumed_from_latest_equals_an_uninterrupted_one(
    launched: dict, checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    uninterrupted = train_here(trainer_args(checkpoint, shards, tmp_path / "whole", 2))
    process, out = launched["killed"]
    code, output = finish(process)
    assert code == -9, output[-6000:]  # SIGKILL after the checkpoint of step KILL_AT
    assert (out / f"checkpoint-{KILL_AT}").is_dir() and not (out / "tcd_lora.safetensors").exists()
    resumed = train_here(trainer_args(checkpoint, shards, out, 2, "--checkpointing_steps", "1",
                                      "--resume_from_checkpoint", "latest"))  # fmt: skip
    assert resumed["steps"] == STEPS and resumed["steps_run"] == STEPS - KILL_AT
    rel, max_abs, moved = delta_difference(load_file(uninterrupted["lora"]), load_file(resumed["lora"]),
                                           initial_lora(checkpoint))  # fmt: skip
    print(f"killed at {KILL_AT} + resumed vs uninterrupted ({STEPS} AdamW steps): rel {rel:.3g}, max abs {max_abs:.3g}")
    assert moved > 1e-3
    assert rel < 1e-6


KILL_STEPS, KILL_LIMIT, KILL_SEED = 6, 2, 19
SAVE_PAUSE = 0.2  # seconds between a save's three phases ($TCD_TRAIN_TEST_SAVE_PAUSE): a save lasts about 0.7 s
KILL_UMASK = 0o027  # the killed runs' umask: their files must come out 0640 (not 0600, not a fixed 0644)


def kill_chain_args(checkpoint: Path, shards: str, out: Path, *extra: str) -> list[str]:
    """AdamW + EMA at batch 1, a checkpoint every step, at most KILL_LIMIT kept."""
    return trainer_args(checkpoint, shards, out, 1, "--max_train_steps", str(KILL_STEPS), "--checkpointing_steps",
                        "1", "--checkpoints_total_limit", str(KILL_LIMIT), "--no-gradient_checkpointing",
                        *extra)  # fmt: skip


def wait_for_new(path: Path, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll every 5 ms until ``path`` is made (True): if a killed run left one, until the trainer has removed it
    and made it again; False if the process ended or ``timeout`` passed first."""
    deadline, gone = time.monotonic() + timeout, not path.exists()
    while time.monotonic() < deadline and process.poll() is None:
        exists = path.exists()
        if gone and exists:
            return True
        gone = gone or not exists
        time.sleep(0.005)
    return False


def kill_at_a_drawn_moment(process: subprocess.Popen, launched_at: float, out: Path, done: int, step: int | None,
                           rng: random.Random, start_up: float) -> tuple[str, float, bool]:  # fmt: skip
    """SIGKILL the trainer (resumed at step ``done``) at a moment drawn by ``rng``: uniformly within the (paused)
    save of ``step``, or with ``step`` None uniformly within ``start_up`` seconds of the launch, or as the run's
    next save begins if that comes first (always before the run's end).
    Returns the moment in words, the seconds from the launch to the save waited for (0 for "launch"), and whether
    a save of this run had begun (its start-up then removed the earlier leftovers: all leftovers are this run's)."""
    if step is not None:
        assert wait_for_new(out / f"checkpoint-{step}.saving", process), finish(process)[1][-4000:]
        to_save, delay = time.monotonic() - launched_at, rng.uniform(0, 3 * SAVE_PAUSE)
        time.sleep(delay)
        moment, saved = f"{delay:.2f} s into the save of step {step}", True
    else:
        delay, to_save = rng.uniform(0, start_up), 0.0
        saved = wait_for_new(out / f"checkpoint-{done + 1}.saving", process, launched_at + delay - time.monotonic())
        moment = f"{delay:.2f} s after the launch" + (", cut short as the next save began" if saved else "")
    assert process.poll() is None, "the run ended before its kill:\n" + finish(process)[1][-4000:]
    os.kill(process.pid, signal.SIGKILL)  # the real trainer process (no launcher between)
    return moment, to_save, saved


def where_it_landed(out: Path, saved: bool) -> str:
    """Where a kill landed, as the output folder shows it (``saved``: a save of the killed run had begun)."""
    from comfyui_tcd_sampling.tcd_train.train import checkpoints

    names = [p.name for p in out.iterdir()]
    if not saved:
        return "outside a save (start-up or first step)"
    if any(n.endswith(".saving") for n in names):
        return "in a save, before its commit"
    if any(n.endswith(".deleting") for n in names):
        return "in a save, deleting an old checkpoint"
    if len(checkpoints(out)) > KILL_LIMIT:
        return "in a save, after its commit, before the old ones went"
    return "outside a save (after one)"


def assert_whole_checkpoints(out: Path, mode: int | None = None) -> list[int]:
    """Every folder under a checkpoint's final name is whole (marker, accelerate's state, a LoRA that loads);
    with ``mode``, every file in them has it. Returns their steps."""
    steps = []
    for folder in sorted(out.glob("checkpoint-*")):
        if not re.fullmatch(r"checkpoint-\d+", folder.name):
            continue
        files = {p.name for p in folder.iterdir()}
        assert CHECKPOINT_FILES <= files, (folder.name, sorted(files))
        assert load_file(folder / "tcd_lora.safetensors")
        for path in folder.iterdir():
            assert mode is None or stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
        steps.append(int(folder.name.split("-")[1]))
    return sorted(steps)


CHECKPOINT_FILES = {"tcd_checkpoint.json", "tcd_lora.safetensors", "model.safetensors", "optimizer.bin",
                    "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl"}  # fmt: skip


def test_killed_at_random_moments_and_resumed_from_latest_each_time_it_trains_the_uninterrupted_lora(
    checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    """One run (AdamW, a checkpoint every step, --checkpoints_total_limit 2) SIGKILLed at moments drawn from a seeded
    RNG, mostly inside a save (the test-only pause stretches a save's phases), relaunched with
    --resume_from_checkpoint latest after each kill: no half checkpoint ever sits under a checkpoint-N name,
    latest always loads, leftovers go at the next start, files have the umask's mode, and the final LoRA is the
    uninterrupted run's bit for bit."""
    from comfyui_tcd_sampling.tcd_train.options import TrainerError
    from comfyui_tcd_sampling.tcd_train.train import SAVE_PAUSE_ENV, checkpoints

    rng, out = random.Random(KILL_SEED), tmp_path / "killed"
    argv = kill_chain_args(checkpoint, shards, out, "--resume_from_checkpoint", "latest")
    env, mode = {SAVE_PAUSE_ENV: str(SAVE_PAUSE)}, 0o666 & ~KILL_UMASK
    plans: list[int | None] = sorted(rng.sample(range(1, KILL_STEPS - 1), 2))  # kills in the saves of 2 steps
    plans.insert(rng.randint(1, 2), None)  # and one after the launch (the first kill times the start-up for it)
    kills, start_up, refused = [], 0.0, set()
    for step in plans:  # each before the run's last save (step KILL_STEPS - 1), which is the final run's
        done = int(checkpoints(out)[-1].name.split("-")[1]) if out.is_dir() and checkpoints(out) else 0
        process, launched_at = launch(argv, umask=KILL_UMASK, env=env), time.monotonic()
        moment, to_save, saved = kill_at_a_drawn_moment(process, launched_at, out, done, step, rng, start_up)
        killed_at, start_up = time.monotonic() - launched_at, start_up or to_save
        code, output = finish(process)
        assert code == -signal.SIGKILL, output[-4000:]
        kills.append((moment, f"{killed_at:.1f} s after launch", where_it_landed(out, saved),
                      f"whole: {assert_whole_checkpoints(out)}"))  # fmt: skip
        for half in out.glob("checkpoint-*.saving"):  # what a kill left half written is refused by name
            with pytest.raises(TrainerError, match=r"--resume_from_checkpoint .*: an incomplete checkpoint"):
                train_here(kill_chain_args(checkpoint, shards, out, "--resume_from_checkpoint", str(half)))
            refused.add(half.name)
    final = launch(argv, umask=KILL_UMASK, env=env)
    code, output = finish(final)
    assert code == 0, output[-6000:]
    for kill in kills:
        print("killed", *kill, sep=" | ")
    during_save = sum(landed.startswith("in a save") for _, _, landed, _ in kills)
    print(f"{len(kills)} kills, {during_save} in a save, {len(refused)} half checkpoint(s) refused by name; "
          f"start-up to the first save {start_up:.1f} s; final run: "
          + next(line for line in output.splitlines() if "resumed from" in line))  # fmt: skip
    assert len(kills) == 3 and during_save >= 1
    assert not [p.name for p in out.iterdir() if p.name.endswith((".saving", ".deleting", ".partial"))]
    assert assert_whole_checkpoints(out, mode) == [KILL_STEPS - 2, KILL_STEPS - 1]  # rotated to the limit
    assert stat.S_IMODE((out / "tcd_lora.safetensors").stat().st_mode) == mode

    uninterrupted = train_here(kill_chain_args(checkpoint, shards, tmp_path / "whole"))
    reference, resumed = load_file(uninterrupted["lora"]), load_file(out / "tcd_lora.safetensors")
    rel, max_abs, moved = delta_difference(reference, resumed, initial_lora(checkpoint))
    print(f"killed {len(kills)} times + resumed vs uninterrupted ({KILL_STEPS} AdamW steps): rel {rel:.3g}, "
          f"max abs {max_abs:.3g}")  # fmt: skip
    assert moved > 1e-3
    assert max_abs == 0.0


def test_an_incomplete_checkpoint_is_refused_by_name_and_passed_over_by_latest(
    checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    """A checkpoint-N folder without the marker (a save that never finished, e.g. by a trainer before this one) and
    a checkpoint-N.saving leftover: an explicit --resume_from_checkpoint to either is refused naming the option,
    'latest' takes the newest whole checkpoint and passes both by."""
    from comfyui_tcd_sampling.tcd_train.options import TrainerError, build_parser
    from comfyui_tcd_sampling.tcd_train.train import CHECKPOINT_MARKER, resume_path

    out = tmp_path / "out"
    for name in ("checkpoint-2", "checkpoint-3", "checkpoint-4.saving"):
        (out / name).mkdir(parents=True)
        (out / name / "optimizer.bin").write_bytes(b"half")
    (out / "checkpoint-2" / CHECKPOINT_MARKER).write_text('{"step": 2}')
    (out / "checkpoint-4.saving" / CHECKPOINT_MARKER).write_text('{"step": 4}')
    for half in ("checkpoint-3", "checkpoint-4.saving"):
        with pytest.raises(TrainerError) as error:
            train_here(trainer_args(checkpoint, shards, out, 1, "--resume_from_checkpoint", str(out / half)))
        assert str(error.value).startswith(f"--resume_from_checkpoint {out / half}: an incomplete checkpoint")
    latest = build_parser().parse_args(trainer_args(checkpoint, shards, out, 1, "--resume_from_checkpoint", "latest"))
    assert resume_path(latest) == out / "checkpoint-2"


SGD = ("--optimizer", "SGD", "--learning_rate", "0.2")
# The precision checks (bf16 against fp32, and the URL run against the fp32 one) train with l2: Huber at c = 0.001
# has a near-sign gradient where the student and the target differ by more than c, so bf16's rounding flips the
# direction of many small terms, and the bf16 update's direction says less about the bf16 path itself.
L2 = ("--loss_type", "l2")


@pytest.fixture(scope="module")
def launched_at_scale(checkpoint: Path, shards: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Started when first asked for (after the runs of ``launched``, so that at most three share the cores):
    a two-node torchrun job (one process per node, the DDP run's settings) and a bf16 run."""
    root = tmp_path_factory.mktemp("at-scale")
    nodes = [launch(trainer_args(checkpoint, shards, root / "nodes", 1, *SGD), port=29573, node=(rank, 2))
             for rank in (0, 1)]  # fmt: skip
    bf16 = launch(trainer_args(checkpoint, shards, root / "bf16", 2, *SGD, *L2, "--mixed_precision", "bf16"))
    yield {"nodes": (nodes, root / "nodes"), "bf16": (bf16, root / "bf16")}
    for process in (*nodes, bf16):
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def fp32_run(checkpoint: Path, shards: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process, batch 2, SGD (the update is the gradient: precision shows as it is), fp32, local shards:
    the reference of the bf16 and URL runs."""
    return train_here(trainer_args(checkpoint, shards, tmp_path_factory.mktemp("fp32"), 2, *SGD, *L2))


def test_a_two_node_job_trains_the_lora_of_one_node_with_two_processes(
    launched: dict, launched_at_scale: dict, checkpoint: Path
) -> None:
    """Multi-node as torchrun runs it (--nnodes 2 --node_rank r, static rendezvous at the master's address;
    here both nodes on localhost): the same LoRA as the single-node 2-process DDP run."""
    nodes, out = launched_at_scale["nodes"]
    for rank, process in enumerate(nodes):
        code, output = finish(process)
        assert code == 0, f"node {rank}:\n{output[-6000:]}"
    assert '"processes": 2' in finish(nodes[0])[1]
    ddp_process, ddp_out = launched["ddp"]
    assert finish(ddp_process)[0] == 0
    ddp, nodes_lora = load_file(ddp_out / "tcd_lora.safetensors"), load_file(out / "tcd_lora.safetensors")
    rel, max_abs, moved = delta_difference(ddp, nodes_lora, initial_lora(checkpoint))
    print(f"2 nodes x 1 process vs 1 node x 2 processes: rel {rel:.3g}, max abs {max_abs:.3g}")
    assert moved > 1e-3
    assert rel < 1e-6  # the same two ranks and the same gloo all-reduce: equal up to round-off


def test_bf16_mixed_precision_trains_close_to_fp32_and_saves_an_fp32_lora(
    launched_at_scale: dict, fp32_run: dict, checkpoint: Path
) -> None:
    """--mixed_precision bf16 (accelerate's autocast; the frozen model in bf16): the LoRA moves as the fp32
    run's does, within bf16's precision, and is saved in fp32 as ComfyUI's trainer saves it."""
    process, out = launched_at_scale["bf16"]
    code, output = finish(process)
    assert code == 0, output[-6000:]
    bf16 = load_file(out / "tcd_lora.safetensors")
    assert {t.dtype for t in bf16.values()} == {torch.float32}
    fp32, start = load_file(fp32_run["lora"]), initial_lora(checkpoint)
    rel, max_abs, moved = delta_difference(fp32, bf16, start)
    a, b = (torch.cat([(lora[k].double() - start[k].double()).flatten() for k in start]) for lora in (fp32, bf16))
    cosine = float(a @ b / (a.norm() * b.norm()))
    print(f"bf16 vs fp32 after {STEPS} SGD steps: rel {rel:.3g}, cosine {cosine:.3f}, max abs {max_abs:.3g}, "
          f"|dLoRA| {moved:.3g} vs {float(b.norm()):.3g}")  # fmt: skip
    assert moved > 1e-3 and 0.7 < float(b.norm() / a.norm()) < 1.4
    # bf16 keeps 8 mantissa bits, and the step's loss compares two nearly equal trajectories (the fresh LoRA
    # is zero) through the guided teacher's x0 = (x_t - s_t eps) / a_t, which magnifies eps's rounding about
    # 14x at t = 999, times w up to 15: about 0.4 of the first gradients' norm is rounding (measured). A
    # bf16 path that broke the LoRA's update (bf16 master weights, no autocast, NaN) fails the direction.
    assert rel > 1e-3  # bf16 really ran: not the fp32 numbers
    assert cosine > 0.85


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """``folder`` served over HTTP on localhost (python's http.server in a thread); yields the base URL."""
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_shards_streamed_by_url_train_what_the_same_local_shards_train(
    fp32_run: dict, checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    """webdataset shards by http:// URL (a local HTTP server): the same samples in the same order, so the
    same LoRA as the local paths; a URL that answers 404 is refused before any training, naming it."""
    from comfyui_tcd_sampling.tcd_train.options import TrainerError

    with http_server(Path(shards).parent) as base:
        spec = f"{base}/{Path(shards).name}"
        via_url = train_here(trainer_args(checkpoint, spec, tmp_path / "url", 2, *SGD, *L2))
        with pytest.raises(TrainerError) as error:
            train_here(trainer_args(checkpoint, f"{base}/missing-{{0..1}}.tar", tmp_path / "missing", 2))
    assert f"{base}/missing-0.tar cannot be read (HTTP 404" in str(error.value)
    assert not (tmp_path / "missing" / "tcd_lora.safetensors").exists()
    rel, max_abs, moved = delta_difference(load_file(fp32_run["lora"]), load_file(via_url["lora"]),
                                           initial_lora(checkpoint))  # fmt: skip
    assert moved > 1e-3
    assert max_abs == 0.0, (rel, max_abs)


PACKAGE_FILES = ("pyproject.toml", "LICENSE", "README.md", "__init__.py", "nodes", "tcd_comfy", "tcd_core", "tcd_train")


def test_pip_install_of_the_train_extra_gives_a_tcd_train_command_that_runs_anywhere(
    checkpoint: Path, shards: str, tmp_path: Path
) -> None:
    """`pip install ".[train]"` (pyproject.toml): a wheel whose `train` extra asks for accelerate and webdataset
    and nothing asks for torch, holding the pack as one package (no top-level `nodes` beside ComfyUI's) and
    the `tcd-train` command; the installed command trains and saves a LoRA from a folder outside the pack."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info into the source folder
    source.mkdir()
    for name in PACKAGE_FILES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w",
                            str(tmp_path / "wheel"), str(source)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert any(line.startswith("Requires-Dist: accelerate") and 'extra == "train"' in line for line in requires)
    assert any(line.startswith("Requires-Dist: webdataset") and 'extra == "train"' in line for line in requires)
    assert not [line for line in requires if "torch" in line.split(";")[0]], requires
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"comfyui_tcd_sampling"}
    assert "tcd-train = comfyui_tcd_sampling.tcd_train.train:main" in entry_points

    site = tmp_path / "site"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                               capture_output=True, text=True)  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # the pack's folder is not on the path
    argv = trainer_args(checkpoint, shards, elsewhere / "out", 1, "--max_train_steps", "1")
    command = [str(site / "bin" / "tcd-train"), *argv]
    run = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert '"steps": 1' in run.stdout and (elsewhere / "out" / "tcd_lora.safetensors").is_file()
    usage = subprocess.run([str(site / "bin" / "tcd-train"), "--help"], env=env, capture_output=True, text=True)
    assert usage.stdout.startswith("usage: tcd-train")

    # the command without the [train] extra's accelerate (shadowed by a package that fails to import): a clear
    # refusal naming what to install, no traceback
    blocked = tmp_path / "no-accelerate" / "accelerate"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('accelerate is not installed')\n")
    no_extra = {**env, "PYTHONPATH": os.pathsep.join([str(blocked.parent), str(site)])}
    refused = subprocess.run(command, cwd=elsewhere, env=no_extra, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "the trainer needs accelerate: pip install accelerate" in refused.stderr
    assert "Traceback" not in refused.stderr


class NodeDraws:
    """The node's randomness (DistillRun: one generator; per micro-step a randperm of the dataset, then the
    noise and the training points), so the trainer can replay a node run on a one-image dataset."""

    def __init__(self, seed: int, dataset_size: int = 1) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.size = dataset_size

    def generators(self, indices: list[int]) -> list[torch.Generator]:
        assert len(indices) == 1
        torch.randperm(self.size, generator=self.generator)
        return [self.generator]


def test_node_and_trainer_train_the_same_lora(checkpoint: Path, tmp_path: Path) -> None:
    comfy_host = load_comfy(default_models_dir())
    import comfy.sd
    from comfyui_tcd_sampling.tcd_train.data import prepare_image
    from comfyui_tcd_sampling.tcd_train.options import Resolution

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "image.jpg").write_bytes(_jpeg(5, 80, 64))
    (folder / "image.txt").write_text(CAPTIONS[0])
    seed = 11
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(checkpoint))[:3]
    pixels, _ = prepare_image(Image.open(folder / "image.jpg").convert("RGB"), Resolution(64, 64), "center", False,
                              torch.Generator())  # fmt: skip
    with torch.no_grad(), one_thread():  # encoded as the trainer encodes it (same summation order)
        latent = {"samples": vae.encode(pixels[None])}
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(CAPTIONS[0]))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    widgets = {
        "batch_size": 1, "grad_accumulation_steps": 1, "steps": STEPS, "learning_rate": 1e-3, "rank": RANK,
        "optimizer": "AdamW", "seed": seed, "training_dtype": "fp32", "lora_dtype": "fp32",
        "gradient_checkpointing": False, "existing_lora": "None", "guidance_min": 3.0, "guidance_max": 15.0,
        "num_ddim_timesteps": 50, "ema_decay": 0.95, "loss": "huber", "huber_c": 0.001, "s_rule": "uniform",
        "s_zero_share": 0.2, "method": "tcd",
    }  # fmt: skip
    node = comfy_host.node("TrajectoryConsistencyDistillLoRA")
    with one_thread():  # as the trainer runs here
        outputs = node.execute(model=[model], latents=[latent], positive=[positive], negative=[negative],
                               **{k: [v] for k, v in widgets.items()}).args  # fmt: skip
    node_lora = {k: v.float() for k, v in outputs[1].items()}
    summary = train_here(trainer_args(checkpoint, str(folder), tmp_path / "trainer", 1, "--max_grad_norm", "0"),
                         draws=NodeDraws(seed))  # fmt: skip
    trainer_lora = load_file(summary["lora"])
    rel, max_abs, moved = delta_difference(node_lora, trainer_lora, initial_lora(checkpoint, seed))
    print(f"node vs trainer after {STEPS} AdamW steps: rel {rel:.3g}, max abs {max_abs:.3g}")
    assert moved > 1e-3
    assert rel < 1e-5


def _dropped_key_warnings(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if "not loaded" in r.getMessage().lower()]


def test_saved_lora_loads_in_loraloader_with_no_key_dropped(checkpoint: Path, shards: str, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The trainer's file through ComfyUI's LoraLoader path (comfy.sd.load_lora_for_models) on its model,
    and the same layout (the node's lora_targets and adapters, the saved-LoRA key names) on full-size
    SD1.5 and SDXL (devkit.sdxl_test_model, meta device): every key becomes a patch. The run also writes
    its validation image, sampled with the pack's TCD sampler."""
    import comfy.lora
    import comfy.sd
    import comfy.utils
    from comfy.weight_adapter import LoRAAdapter
    from comfyui_tcd_sampling.tcd_comfy.lora_adapters import lora_targets

    from devkit.sdxl_test_model import sd15_meta_model, sdxl_meta_model

    out = tmp_path / "keys"
    summary = train_here(trainer_args(checkpoint, shards, out, 1, "--max_train_steps", "1", "--validation_steps", "1",
                                      "--validation_prompts", "a cat"))  # fmt: skip
    validation = Image.open(out / "validation" / "step-000001-0.png")  # sampled with the pack's TCD sampler
    assert validation.size == (64, 64) and np.asarray(validation).std() > 0
    saved = comfy.utils.load_torch_file(summary["lora"])
    model, clip = comfy.sd.load_checkpoint_guess_config(str(checkpoint), output_vae=False)[:2]
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, clip, saved, 1.0, 1.0)
    modules = {k.rsplit(".lora_", 1)[0].removesuffix(".alpha") for k in saved}
    assert {f"{m}.weight" for m in modules} == set(patched.patches)
    assert not _dropped_key_warnings(caplog.records)

    for build in (sd15_meta_model, sdxl_meta_model):
        patcher, _ = build()
        layout = {}
        for name, module in lora_targets(patcher.model):
            adapter = LoRAAdapter.create_train(torch.empty(1).expand(module.weight.shape), rank=1, alpha=1.0)
            layout.update({f"{name}.{p}": t for p, t in adapter.named_parameters()})  # LoraAdapters.state_dict
        key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            patches = comfy.lora.load_lora(layout, key_map)
        applied = patcher.add_patches(patches, 1.0)
        assert not _dropped_key_warnings(caplog.records), build.__name__
        assert len(applied) == len(patches) == len(layout) // 3, build.__name__


BAD_OPTIONS = [
    ({"--w_min": "9", "--w_max": "3"}, ("--w_min: must be <= guidance_max",)),
    ({"--train_shards_path_or_url": "{shards_dir}/missing-{{0..1}}.tar"}, ("missing-0.tar does not exist",)),
    ({"--train_shards_path_or_url": "{shards_dir}/not-a-tar.tar"}, ("not-a-tar.tar is not a readable tar",)),
    ({"--resolution": "60"}, ("--resolution 60x60", "multiples of 8 pixels")),
    ({"--pretrained_model": "{controlnet}"}, ("--pretrained_model", "SD1.x, SD2.x (eps or v) and SDXL")),
]


@pytest.mark.parametrize(("options", "fragments"), BAD_OPTIONS)
def test_bad_options_are_refused_before_training(options: dict, fragments: tuple, checkpoint: Path, shards: str,
                                                 test_models: dict, tmp_path: Path) -> None:  # fmt: skip
    from comfyui_tcd_sampling.tcd_train.options import TrainerError

    shards_dir = Path(shards).parent
    (shards_dir / "not-a-tar.tar").write_bytes(b"this is not a tar file" * 40)
    argv = trainer_args(checkpoint, shards, tmp_path / "bad", 1)
    for flag, value in options.items():
        value = value.format(shards_dir=shards_dir, controlnet=test_models["controlnet_sd15"])
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    with pytest.raises(TrainerError) as error:
        train_here(argv)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not (tmp_path / "bad" / "tcd_lora.safetensors").exists()


def test_a_diverging_run_stops_naming_the_step_and_saves_no_lora(checkpoint: Path, shards: str, tmp_path: Path) -> None:
    """RMSprop at learning rate 1 with guidance 100 overflows within a few steps: the trainer stops with an error
    naming the step and the options to change, and writes no final LoRA (the last checkpoint stays)."""
    from comfyui_tcd_sampling.tcd_train.options import TrainerError

    out = tmp_path / "diverged"
    argv = trainer_args(checkpoint, shards, out, 1, "--max_train_steps", "30", "--optimizer", "RMSprop",
                        "--learning_rate", "1.0", "--w_min", "100", "--w_max", "100", "--checkpointing_steps", "1",
                        "--max_grad_norm", "0")  # fmt: skip
    with pytest.raises(TrainerError, match=r"training diverged at step (\d+): .*lower --learning_rate") as error:
        train_here(argv)
    step = int(error.value.args[0].split("at step ")[1].split(":")[0])
    assert not (out / "tcd_lora.safetensors").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith((".saving", ".deleting", ".partial"))]
    assert (step == 1) or (out / f"checkpoint-{step - 1}" / "tcd_checkpoint.json").is_file(), "no last good checkpoint"
