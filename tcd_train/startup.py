"""What the trainer prints before its first step: the run's facts, once, from the main process, and what in
them is likely a mistake (training on the CPU because no GPU is visible, a warm-up longer than the run, a
batch larger than the data set).

A warm-up longer than the run is warned about, not scaled: ``--lr_warmup_steps`` keeps meaning what it says,
as in diffusers' scripts that it is named after, and a run resumed with a larger ``--max_train_steps`` keeps
its lr curve; the warning names the lr the run will actually reach and the value to give instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from . import data as data_mod
from .options import parse_resolution

PREFIX = "tcd_train: "


@dataclass(frozen=True)
class RunFacts:
    """The facts the start-up summary shows, gathered once the device and the model family are known."""

    device: str  # "cuda:0 (NVIDIA H100 80GB HBM3)", "cpu"
    cpu_by_default: bool  # on the CPU because no GPU is visible, --cpu not given
    processes: int
    mixed_precision: str
    family: str
    model: str
    method: str
    rank: int
    images: int | None  # None: a shard stream, its size unknown ahead
    data: str
    resolution: str
    batch: int  # --train_batch_size, per process
    accumulation: int
    steps: int
    learning_rate: float
    optimizer: str
    lr_scheduler: str
    warmup: int
    random_crops: bool  # --crop random or --random_flip: repeated images differ in pixels too
    output: str

    @property
    def samples_per_step(self) -> int:
        """The effective batch: processes x batch x accumulation samples per optimizer step."""
        return self.processes * self.batch * self.accumulation


def describe_device(device: torch.device) -> str:
    """The device with its GPU's name, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def describe_data(source: Any) -> tuple[str, int | None]:
    """(what the data is, its number of images or None for a stream) of a tcd_train.data source."""
    if isinstance(source, data_mod.ShardStream):
        count = len(source.urls)
        return f"{count} shard{'s' * (count != 1)} (--train_shards_path_or_url), streamed", None
    if isinstance(source, data_mod.LatentsCache):
        return f"{len(source)} cached latents in {source.root} (--latents_cache)", len(source)
    return f"{len(source)} images in {source.root} (--train_data_dir)", len(source)


def run_facts(accelerator: Any, args: Any, settings: Any, config: Any, family: Any, source: Any) -> RunFacts:
    """RunFacts of a run from the trainer's objects (accelerate's Accelerator, the parsed options, the node's
    TrainSettings and DistillConfig, the detected Family, the data source)."""
    data, images = describe_data(source)
    resolution = parse_resolution(args.resolution)
    return RunFacts(
        device=describe_device(accelerator.device),
        cpu_by_default=accelerator.device.type == "cpu" and not args.cpu,
        processes=accelerator.num_processes,
        mixed_precision=str(accelerator.mixed_precision),
        family=family.name,
        model=Path(args.pretrained_model).name,
        method=config.method,
        rank=settings.rank,
        images=images,
        data=data,
        resolution=f"{resolution.width}x{resolution.height}",
        batch=settings.batch_size,
        accumulation=settings.grad_accumulation_steps,
        steps=settings.steps,
        learning_rate=settings.learning_rate,
        optimizer=settings.optimizer,
        lr_scheduler=args.lr_scheduler,
        warmup=args.lr_warmup_steps,
        random_crops=args.crop == "random" or args.random_flip,
        output=str(Path(args.output_dir) / f"{args.output_name}.safetensors"),
    )


def summary_lines(facts: RunFacts) -> list[str]:
    """The run's facts: device, model, data, effective batch, steps and lr schedule, output."""
    processes = f"{facts.processes} process{'es' * (facts.processes != 1)}"
    warmup = f", {facts.warmup} warm-up steps" if facts.warmup else ", no warm-up"
    return [
        f"device {facts.device}, {processes}, mixed precision {facts.mixed_precision}",
        f"model {facts.family} ({facts.model}), method {facts.method}, LoRA rank {facts.rank}",
        f"data {facts.data}, resolution {facts.resolution}",
        f"batch {facts.samples_per_step} samples per optimizer step = {processes} x {facts.batch} "
        f"(--train_batch_size) x {facts.accumulation} (--gradient_accumulation_steps)",
        f"{facts.steps} steps, {facts.optimizer} lr {facts.learning_rate:g}, {facts.lr_scheduler} schedule{warmup}",
        f"output {facts.output}",
    ]


def cpu_warning(facts: RunFacts) -> str | None:
    """A warning when the run trains on the CPU only because no GPU is visible."""
    if not facts.cpu_by_default:
        return None
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    return (
        f"warning: no GPU is visible (torch {torch.__version__}, {build}): training on the CPU, many times slower; "
        "check CUDA_VISIBLE_DEVICES and the torch build, or give --cpu to train on the CPU on purpose"
    )


def warmup_warning(facts: RunFacts) -> str | None:
    """A warning when the lr warm-up is not shorter than the run, so the lr never reaches --learning_rate."""
    if facts.warmup < facts.steps:
        return None
    last = facts.learning_rate * (facts.steps - 1) / facts.warmup  # the lr of the last step (0 at the first)
    tenth = facts.steps // 10
    fix = f"below {facts.steps}, e.g. {tenth} (a tenth of the run), or 0" if tenth else "0"
    return (
        f"warning: --lr_warmup_steps {facts.warmup} is not shorter than the run's {facts.steps} steps "
        f"(--max_train_steps): the lr climbs from 0 and never reaches --learning_rate {facts.learning_rate:g} "
        f"(the last step trains at {last:.3g}, {last / facts.learning_rate:.1%} of it); give --lr_warmup_steps {fix}"
    )


def batch_note(facts: RunFacts) -> str | None:
    """What happens when an optimizer step takes more samples than the data set holds: images repeat."""
    if facts.images is None or facts.samples_per_step <= facts.images:
        return None
    where = "within a batch" if facts.processes * facts.batch > facts.images else "within a step"
    copies = "its own noise, training points and crop / flip" if facts.random_crops else (
        "its own noise and training points (the same pixels: --crop center, no --random_flip)")  # fmt: skip
    return (
        f"note: an optimizer step takes {facts.samples_per_step} samples from {facts.images} images: each image "
        f"is used about {facts.samples_per_step / facts.images:.3g} times per step (repeats {where}), each copy "
        f"with {copies}; the TCD Distill LoRA node would take at most the {facts.images} images"
    )


def startup_messages(facts: RunFacts) -> list[str]:
    """The summary lines, each followed by its warning or note, if any."""
    device, model, data, batch, steps, output = summary_lines(facts)
    messages = (device, cpu_warning(facts), model, data, batch, batch_note(facts), steps, warmup_warning(facts), output)
    return [message for message in messages if message]


def print_startup(facts: RunFacts, out: TextIO | None = None) -> None:
    """Print the start-up messages, one ``tcd_train:`` line each (stderr, where the progress bar goes)."""
    out = out or sys.stderr
    for message in startup_messages(facts):
        print(PREFIX + message, file=out)
    out.flush()
