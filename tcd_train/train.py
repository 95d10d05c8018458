"""The training loop on accelerate: DDP over the LoRA adapters, accumulation, mixed precision, checkpoints.

    accelerate launch -m tcd_train --pretrained_model sd15.safetensors --train_shards_path_or_url \
        'shards/{00000..00999}.tar' --resolution 512 --train_batch_size 8 --mixed_precision bf16 ...

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``train_batch_size`` samples per
process; each process draws its samples' noise and training points from generators keyed by the global
sample index (tcd_train.data), so W processes with batch B train exactly what one process with batch W B
trains, and a resumed run continues the same sample stream.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import stat
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..tcd_core.distiller import Distiller, StepHooks, TrainingDiverged, TrainSettings
from ..tcd_core.distiller import make_optimizer as node_optimizer
from . import data as data_mod
from . import startup
from .comfy_host import import_comfyui, missing_requirements_named
from .options import TrainerError, build_parser, check_options, parse_resolution

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_MARKER = "tcd_checkpoint.json"  # written last: only a folder holding it is a whole checkpoint
SAVING, DELETING = ".saving", ".deleting"  # a checkpoint being written (renamed when whole), one being deleted
PARTIAL = ".partial"  # a file being written (.<name>.partial beside it), renamed when whole
SAVE_PAUSE_ENV = "TCD_TRAIN_TEST_SAVE_PAUSE"  # tests only: seconds to pause between a save's phases


class TrainState:
    """What accelerate's save_state does not know: the optimizer step reached and the EMA target."""

    def __init__(self, distiller: Distiller) -> None:
        self.step = 0
        self.distiller = distiller

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"step": self.step}
        if self.distiller.ema is not None:
            state["ema"] = self.distiller.ema.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        if self.distiller.ema is not None and "ema" in state:
            self.distiller.ema.load_state_dict(state["ema"])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The whole checkpoint folders in ``output_dir`` (``checkpoint-N`` holding the marker), oldest first;
    ``checkpoint-N.saving`` (a save a kill or crash interrupted) and ``.deleting`` ones are never listed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def is_complete(folder: Path) -> bool:
    """A checkpoint whose save finished: a folder under its final name with the marker, written last, in it."""
    return folder.is_dir() and not folder.name.endswith((SAVING, DELETING)) and (folder / CHECKPOINT_MARKER).is_file()


def resume_path(args: argparse.Namespace) -> Path | None:
    """The checkpoint to resume from: the newest whole one for 'latest' (None when there is none yet)."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = checkpoints(args.output_dir)
        return found[-1] if found else None  # nothing yet: a fresh run, as diffusers' scripts do
    path = Path(args.resume_from_checkpoint)
    if not path.is_dir():
        raise TrainerError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    if not is_complete(path):
        raise TrainerError(
            f"--resume_from_checkpoint {path}: an incomplete checkpoint (its save did not finish: no "
            f"{CHECKPOINT_MARKER}); name a whole checkpoint-N folder, or 'latest' for the newest whole one"
        )
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` through ``.<name>.partial`` beside it and a rename: ``path`` is whole or absent,
    never half written (a kill, a crash, a full disk). Created as a plain open() creates a file (0o666 less the
    umask), as ComfyUI's SaveLoRA wrote before safetensors 0.8 began writing through a 0600 temporary file."""
    partial = path.with_name(f".{path.name}{PARTIAL}")
    partial.unlink(missing_ok=True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)  # O_BINARY: Windows
        with open(os.open(partial, flags, 0o666), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def save_lora(student: Any, path: Path, metadata: dict[str, str]) -> None:
    """The LoRA so far as ``path`` (ComfyUI's saved-LoRA layout), written atomically."""
    from . import engine

    write_atomically(path, engine.lora_bytes(student, metadata))


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') writes to the disk."""
    if os.name == "nt" and path.is_dir():
        return  # Windows opens no folder to flush it (NTFS journals its renames)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_pause() -> None:
    """Tests only: pause ``$TCD_TRAIN_TEST_SAVE_PAUSE`` seconds between a save's phases, so that a kill lands in one."""
    seconds = float(os.environ.get(SAVE_PAUSE_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)


def commit_checkpoint(saving: Path, step: int) -> Path:
    """``checkpoint-N.saving`` -> ``checkpoint-N``: the marker after every other file, every file given the
    marker's (umask-respecting) mode and flushed to the disk, then the rename that makes it a checkpoint."""
    marker = saving / CHECKPOINT_MARKER
    write_atomically(marker, json.dumps({"step": step}).encode())
    mode = stat.S_IMODE(marker.stat().st_mode)  # accelerate's model.safetensors comes 0600 from safetensors 0.8
    for path in sorted(saving.rglob("*")):
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
        _fsync(path)
    _fsync(saving)
    final = saving.with_name(f"{CHECKPOINT_PREFIX}{step}")
    if final.exists():  # an earlier run's checkpoint-N (this one resumed from an older checkpoint)
        discard(final)
    os.rename(saving, final)
    _fsync(final.parent)
    return final


def discard(folder: Path) -> None:
    """Delete a checkpoint folder: renamed to ``.deleting`` first, so that a kill mid-deletion leaves no
    half-deleted ``checkpoint-N``."""
    doomed = folder.with_name(folder.name + DELETING)
    if doomed.exists():
        shutil.rmtree(doomed)
    os.rename(folder, doomed)
    shutil.rmtree(doomed)


def rotate_checkpoints(output_dir: Path, limit: int, newest: Path) -> None:
    """Keep ``limit`` whole checkpoints, ``newest`` (just committed) among them: the oldest others go."""
    others = [p for p in checkpoints(output_dir) if p != newest]
    for old in others[: max(0, len(others) - limit + 1)]:
        discard(old)


def remove_leftovers(output_dir: Path, output_name: str) -> list[str]:
    """What a killed run left half done (``checkpoint-N.saving`` / ``.deleting``, a ``.partial`` LoRA): removed;
    returns their names."""
    pattern = rf"{CHECKPOINT_PREFIX}\d+({re.escape(SAVING)}|{re.escape(DELETING)})"
    left = [p for p in output_dir.iterdir() if p.is_dir() and re.fullmatch(pattern, p.name)]
    partial = output_dir / f".{output_name}.safetensors{PARTIAL}"
    for path in left:
        shutil.rmtree(path)
    if partial.exists():
        partial.unlink()
        left.append(partial)
    return sorted(p.name for p in left)


def open_source(args: argparse.Namespace, resolution) -> Any:
    """The data source, checked before any model is loaded (folder listing, shard headers, cache index)."""
    if args.latents_cache and (Path(args.latents_cache) / data_mod.CACHE_INDEX).is_file():
        return data_mod.LatentsCache(args.latents_cache, resolution)
    if args.train_data_dir:
        return data_mod.ImageFolder(args.train_data_dir)
    return data_mod.ShardStream(args.train_shards_path_or_url)


def make_optimizer(
    args: argparse.Namespace, settings: TrainSettings, params: list[torch.Tensor]
) -> torch.optim.Optimizer:
    """AdamW with the --adam_* settings (diffusers' defaults, which are torch's; bitsandbytes' 8-bit AdamW with
    --use_8bit_adam), or the node's other choices (Adam, SGD, RMSprop) made as the node makes them."""
    if settings.optimizer != "AdamW":
        return node_optimizer(settings, params)
    kwargs = dict(lr=settings.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)  # fmt: skip
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _oom_report(error: Exception, device: torch.device, args: argparse.Namespace) -> TrainerError:
    """A batch that does not fit, with the memory it needed (peak reached + the allocation that failed)."""
    match = re.search(r"Tried to allocate ([\d.]+) (GiB|MiB)", str(error))
    failed = float(match.group(1)) * (1 if match and match.group(2) == "GiB" else 1 / 1024) if match else 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else 0.0
    return TrainerError(
        f"--train_batch_size {args.batch_size} at --resolution {args.resolution} does not fit: the first step "
        f"needed more than {peak + failed:.1f} GiB (peak {peak:.1f} GiB + a failed {failed:.2f} GiB allocation) of "
        f"{total:.1f} GiB; lower the batch (raise --gradient_accumulation_steps instead), add "
        "--gradient_checkpointing or --mixed_precision bf16"
    )


def train(args: argparse.Namespace, draws: Any = None) -> dict:
    """Run the whole training; returns a summary (also printed as one JSON line by ``main``)."""
    config, settings = check_options(args)
    resolution = parse_resolution(args.resolution)
    source = open_source(args, resolution)
    resume = resume_path(args)

    try:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration
    except ImportError:
        raise TrainerError("the trainer needs accelerate: pip install accelerate (the pack's [train] extra)") from None

    log_with = "tensorboard" if args.report_to == "tensorboard" and _tensorboard_available() else None
    accelerator = Accelerator(
        gradient_accumulation_steps=args.grad_accumulation_steps,
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=str(Path(args.output_dir) / "logs")
        ),
    )
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before ComfyUI's model_management picks its device
    import_comfyui(args.comfyui, cpu=device.type == "cpu")
    from . import engine  # imports ComfyUI: after the device choice

    family = engine.detect_family(args.pretrained_model)
    engine.check_family_files(args, family)
    engine.check_resolution(resolution, family)
    if accelerator.is_main_process:
        startup.print_startup(startup.run_facts(accelerator, args, settings, config, family, source))
    compute_dtype = engine.COMPUTE_DTYPES[accelerator.mixed_precision]
    patcher, clip, vae = engine.load_teacher(args, family, compute_dtype)
    with torch.inference_mode(False):
        guidance = (args.embedded_guidance_min, args.embedded_guidance_max)
        student, config = engine.open_student(patcher, config, settings, compute_dtype, guidance)
    is_main = accelerator.is_main_process
    os.makedirs(args.output_dir, exist_ok=True)
    if is_main:
        for name in remove_leftovers(Path(args.output_dir), args.output_name):
            print(f"tcd_train: removed {name}, left half done by an interrupted run", file=sys.stderr)

    with torch.inference_mode(False), student:
        text = engine.TextEncoder(clip)
        builder = engine.BatchBuilder(student, config, vae, text, args.negative_prompt, resolution, args.crop,
                                      args.random_flip, draws or engine.IndexedDraws(settings.seed))  # fmt: skip
        if args.latents_cache and not isinstance(source, data_mod.LatentsCache):
            if is_main:
                samples = source.one_epoch() if isinstance(source, data_mod.ShardStream) else (
                    source.load(i, i) for i in range(len(source)))  # fmt: skip
                center = torch.Generator()

                def encode(batch: list) -> torch.Tensor:
                    pixels = [data_mod.prepare_image(s.image, resolution, "center", False, center)[0] for s in batch]
                    return builder.encode_pixels(torch.stack(pixels))

                count = data_mod.write_latents_cache(args.latents_cache, resolution, samples, encode)
                print(f"tcd_train: encoded {count} images into {args.latents_cache}", file=sys.stderr)
            accelerator.wait_for_everyone()
            source = data_mod.LatentsCache(args.latents_cache, resolution)

        accumulation = settings.grad_accumulation_steps
        optimizer = make_optimizer(args, settings, student.params)
        distiller = Distiller(config, student.schedule, student.student, student.teacher, student.params,
                              optimizer, accumulation=accumulation)  # fmt: skip
        module = engine.DistillModule(student, distiller)
        schedule = engine.lr_lambda(args.lr_scheduler, args.lr_warmup_steps, settings.steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        module, distiller.optimizer = accelerator.prepare(module, optimizer)
        distiller.hooks = StepHooks(
            forward=lambda batch: module(batch.x0, batch.noise, tuple(batch.points), batch.cond, batch.uncond),
            backward=accelerator.backward,
            accumulate=lambda: accelerator.accumulate(module),
            clip_grad=(lambda params: accelerator.clip_grad_norm_(params, args.max_grad_norm))
            if args.max_grad_norm > 0 else None,
            backward_divides=True,
            scaled_gradients=accelerator.scaler is not None,  # fp16: the scaler skips non-finite steps
        )  # fmt: skip
        state = TrainState(distiller)
        accelerator.register_for_checkpointing(scheduler, state)
        if resume is not None:
            accelerator.load_state(str(resume))
            if is_main:
                print(f"tcd_train: resumed from {resume} at step {state.step}", file=sys.stderr)
        if log_with and is_main:
            accelerator.init_trackers("tcd_train", config={k: v for k, v in vars(args).items()
                                                           if isinstance(v, (int, float, str, bool))})  # fmt: skip

        world, rank = accelerator.num_processes, accelerator.process_index
        data = data_mod.ProcessData(source, settings.seed, rank, world, settings.batch_size, state.step * accumulation)
        metadata = {"tcd_train": json.dumps({k: v for k, v in vars(args).items() if k != "stop_at_step"}, default=str),
                    "tcd_method": config.method, "tcd_rank": str(settings.rank)}  # fmt: skip
        from tqdm.auto import tqdm

        progress = tqdm(total=settings.steps, initial=state.step, disable=not is_main, desc="steps")
        start_step, started = state.step, time.perf_counter()
        step_ends: list[float] = []
        last_loss = float("nan")
        while state.step < settings.steps:
            micro_batches = ([builder.build(data.next_batch())] for _ in range(accumulation))
            try:
                loss = distiller.step(micro_batches)
            except torch.OutOfMemoryError as error:
                if state.step == start_step:
                    raise _oom_report(error, device, args) from None
                raise
            except TrainingDiverged as error:  # nothing more is saved: the last checkpoint is the last good LoRA
                last = checkpoints(args.output_dir)
                kept = f"the last checkpoint is {last[-1]}" if last else "no checkpoint was written"
                raise TrainerError(f"{error}; {kept}, no LoRA saved: lower --learning_rate, or use "
                                   "--mixed_precision bf16 or no") from None  # fmt: skip
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            state.step += 1
            step_ends.append(time.perf_counter())
            last_loss = accelerator.reduce(torch.tensor(loss, device=device), reduction="mean").item()
            progress.update(1)
            if state.step % args.log_every == 0:
                lr = scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{last_loss:.4g}", lr=f"{lr:.3g}")
                if log_with:
                    accelerator.log({"loss": last_loss, "lr": lr}, step=state.step)
            if state.step % args.checkpointing_steps == 0 and state.step < settings.steps:
                save_checkpoint(accelerator, args, student, state.step, metadata)
            if args.validation_steps and state.step % args.validation_steps == 0:
                validate(accelerator, args, student, vae, text, resolution, state.step)
            if args.stop_at_step == state.step:
                accelerator.wait_for_everyone()
                os.kill(os.getpid(), signal.SIGKILL)  # tests: end like a killed job, nothing more written
        elapsed = time.perf_counter() - started
        progress.close()
        accelerator.wait_for_everyone()
        lora_path = Path(args.output_dir) / f"{args.output_name}.safetensors"
        if is_main:
            save_lora(student, lora_path, {**metadata, "tcd_steps": str(state.step)})
        accelerator.end_training()
        steps_run = state.step - start_step
        warm = min(2, max(0, len(step_ends) - 2))  # steady state: after the first steps (allocator, kernels)
        steady = (len(step_ends) - 1 - warm) / (step_ends[-1] - step_ends[warm]) if len(step_ends) - warm > 1 else None
        summary = {
            "steps": state.step,
            "steps_run": steps_run,
            "processes": world,
            "loss": last_loss,
            "seconds": elapsed,
            "steps_per_s": steps_run / elapsed if elapsed > 0 else float("nan"),
            "steady_steps_per_s": steady,
            "images_per_s": steps_run * world * settings.batch_size * accumulation / elapsed if elapsed else 0.0,
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "lora": str(lora_path),
        }
    return summary


def save_checkpoint(accelerator: Any, args: argparse.Namespace, student: Any, step: int, metadata: dict) -> None:
    """accelerate's state (adapters, optimizer, scheduler, RNG, TrainState) and the LoRA so far, written into
    ``checkpoint-N.saving`` and renamed ``checkpoint-N`` once whole; then (``--checkpoints_total_limit``) the
    oldest go. A kill at any moment leaves the previous checkpoints whole, and ``latest`` never picks a half one."""
    root = Path(args.output_dir)
    saving = root / f"{CHECKPOINT_PREFIX}{step}{SAVING}"
    if accelerator.is_main_process and saving.exists():
        shutil.rmtree(saving)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(saving))  # on every process: the main one the weights, each its RNG states
    accelerator.wait_for_everyone()  # every process's files are written: only then is the checkpoint whole
    if accelerator.is_main_process:
        _save_pause()
        save_lora(student, saving / f"{args.output_name}.safetensors", {**metadata, "tcd_steps": str(step)})
        _save_pause()
        final = commit_checkpoint(saving, step)
        _save_pause()
        if args.checkpoints_total_limit:
            rotate_checkpoints(root, args.checkpoints_total_limit, final)
    accelerator.wait_for_everyone()


def validate(accelerator: Any, args: argparse.Namespace, student: Any, vae: Any, text: Any, resolution,
             step: int) -> None:  # fmt: skip
    """Validation images from the main process (the others wait), PNG files and TensorBoard."""
    from . import engine

    if accelerator.is_main_process and args.validation_prompts:
        images = engine.validation_images(
            student, vae, text, args.validation_prompts, resolution, args.validation_inference_steps,
            args.validation_gamma, args.seed,
        )  # fmt: skip
        folder = Path(args.output_dir) / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(folder / f"step-{step:06d}-{i}.png")
        tracker = next((t for t in accelerator.trackers if t.name == "tensorboard"), None)
        if tracker is not None:
            import numpy as np

            for i, image in enumerate(images):
                tracker.writer.add_image(f"validation/{i}", np.asarray(image), step, dataformats="HWC")
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with missing_requirements_named(args.comfyui):
            summary = train(args)
    except TrainerError as error:
        print(f"tcd_train: error: {error}", file=sys.stderr)
        return 2
    if summary.get("processes") is not None and int(os.environ.get("RANK", "0")) == 0:
        print("tcd_train summary: " + json.dumps(summary))
    return 0
