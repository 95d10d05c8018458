"""The trainer's command line and the checks that run before anything is loaded.

The options the node shares (``tcd_core.distill.DistillConfig``, ``tcd_core.distiller.TrainSettings``) are
generated from their fields' metadata: the same defaults, bounds, choices and help as the node's widgets,
under diffusers' LCM-LoRA script names where those exist (``--w_min``, ``--lora_rank``, ...). The rest are
the trainer's own (data, accelerate, the lr schedule, output).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from ..tcd_core.distill import DistillConfig
from ..tcd_core.distiller import TrainSettings
from ..tcd_core.errors import TCDInputError
from ..tcd_core.settings import settings_of

INPUT_OPTIONS = {"model": "--pretrained_model", "latents": "--train_data_dir"}
WEIGHT_DTYPE_CHOICES = ("default", "fp8_e4m3fn", "fp8_e5m2")  # Load Diffusion Model's weight_dtype (fp8 ones)
"""The option that gives what a ComfyUI-side input of the node names (``TCDInputError.field``)."""


class TrainerError(Exception):
    """A refusal of the trainer's input, raised before any training, naming the option."""


def option_of(field: str) -> str:
    """The trainer's option for a setting or node input named ``field``."""
    for cls in (DistillConfig, TrainSettings):
        found = settings_of(cls).get(field)
        if found is not None:
            return found[0].option(field)
    return INPUT_OPTIONS.get(field, f"--{field}")


def trainer_error(error: TCDInputError) -> TrainerError:
    """A TCDInputError naming its field as the trainer's option."""
    if error.field is None:
        return TrainerError(str(error))
    return TrainerError(f"{option_of(error.field)}: {error.detail}")


def _add_settings(group: Any, cls: type) -> None:
    """One option per command-line setting of ``cls`` (dest = the field's name), with the node's default."""
    for name, (spec, default) in settings_of(cls).items():
        if not spec.cli:
            continue
        if spec.choices is not None:
            group.add_argument(spec.option(name), dest=name, choices=spec.choices, default=default, help=spec.cli_help)
        elif spec.kind is bool:
            group.add_argument(spec.option(name), dest=name, action=argparse.BooleanOptionalAction, default=default,
                               help=spec.cli_help)  # fmt: skip
        else:
            group.add_argument(spec.option(name), dest=name, type=spec.kind, default=default, help=spec.cli_help)


def settings_from(args: argparse.Namespace, cls: type, **fixed: Any) -> Any:
    """``cls`` (DistillConfig or TrainSettings) from the parsed options; a bad value names its option."""
    values = {name: getattr(args, name) for name, (spec, _) in settings_of(cls).items() if spec.cli}
    try:
        return cls(**values, **fixed)
    except TCDInputError as error:
        raise trainer_error(error) from None


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` ends each option's text with its default, but for required options, options that default to
    nothing (None; their text says what happens then), off-by-default flags and texts that name their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = isinstance(action, argparse.BooleanOptionalAction) or not (
            action.default is None or action.default is False or action.default == argparse.SUPPRESS
        )
        if not action.option_strings or not shown or "(default" in text or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tcd-train",
        formatter_class=DefaultsHelpFormatter,
        description="Distil a TCD (or LCM) LoRA from a single-file SD1.5 / SD2.1 / SDXL / SD3.5 checkpoint, or a "
        "flow model's diffusion-model file (SD3 / SD3.5, Flux.1, Qwen-Image, Z-Image) with its text encoders and "
        "VAE, on one or many GPUs (tcd-train ..., accelerate launch -m comfyui_tcd_sampling.tcd_train ..., "
        "torchrun -m comfyui_tcd_sampling.tcd_train ...).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--comfyui", default=None, help="ComfyUI checkout to load models with (default $COMFYUI_PATH)")
    g.add_argument(
        "--pretrained_model",
        required=True,
        help="the teacher, one .safetensors file: a single-file checkpoint (models/checkpoints: SD1.x, SD2.x, SDXL, "
        "SD3.5) or a diffusion-model file (models/diffusion_models, as Load Diffusion Model takes it: SD3 / SD3.5, "
        "Flux.1-dev / schnell, Qwen-Image, Z-Image) with --text_encoder and --vae",
    )
    g.add_argument(
        "--text_encoder",
        action="append",
        default=None,
        metavar="FILE",
        help="a text encoder file (models/text_encoders), repeated for each, as (Dual)CLIPLoader takes them: CLIP-L "
        "and T5-XXL for Flux.1 and SD3 (and CLIP-G for SD3), Qwen2.5-VL 7B for Qwen-Image, Qwen3 4B for Z-Image; "
        "replaces a checkpoint's own",
    )
    g.add_argument("--vae", default=None, metavar="FILE", help="a VAE file (models/vae); replaces a checkpoint's own")
    g.add_argument(
        "--weight_dtype",
        choices=WEIGHT_DTYPE_CHOICES,
        default="default",
        help="the diffusion model's weights as Load Diffusion Model's weight_dtype: default (as stored; an fp8 file "
        "stays fp8), or fp8_e4m3fn / fp8_e5m2 (cast on load); fp8 weights are computed in --mixed_precision's dtype "
        "and never changed, the LoRA trains in fp32",
    )
    g.add_argument(
        "--embedded_guidance_min",
        type=float,
        default=0.0,
        help="Flux.1-dev only: the lowest embedded guidance g (FluxGuidance's value) given to teacher, target and "
        "student, drawn per sample up to --embedded_guidance_max; 0, 0: 3.5, Flux's default",
    )
    g.add_argument(
        "--embedded_guidance_max", type=float, default=0.0, help="Flux.1-dev only: the highest embedded guidance g"
    )
    g.add_argument("--negative_prompt", default="", help="the guided teacher's unconditional prompt (default: empty)")
    g = p.add_argument_group("data (one of --train_data_dir / --train_shards_path_or_url)")
    g.add_argument("--train_data_dir", default=None, help="image folder with <name>.txt captions beside images")
    g.add_argument(
        "--train_shards_path_or_url",
        default=None,
        help="webdataset .tar shards (jpg/png/webp + txt), paths or URLs, brace ranges and '::' lists allowed",
    )
    g.add_argument("--resolution", default="512", help="training size: N (square) or WxH, in pixels")
    g.add_argument("--crop", choices=("center", "random"), default="center", help="crop after the cover-resize")
    g.add_argument("--random_flip", action="store_true", help="flip images horizontally with probability 0.5")
    g.add_argument("--latents_cache", default=None, help="folder: VAE-encode the data once there, reuse it")
    _add_settings(p.add_argument_group("distillation (as the TCD Distill LoRA node)"), DistillConfig)
    g = p.add_argument_group("optimisation (as the TCD Distill LoRA node, then the trainer's own)")
    _add_settings(g, TrainSettings)
    g.add_argument(
        "--lr_scheduler",
        choices=("constant", "linear", "cosine"),
        default="constant",
        help="the lr after the warm-up: constant, or a linear / cosine decay to 0 at the last step",
    )
    g.add_argument(
        "--lr_warmup_steps",
        type=int,
        default=500,
        help="steps of linear lr warm-up from 0 (a warning when it is not shorter than the run)",
    )
    g.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW's beta1")
    g.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW's beta2")
    g.add_argument("--adam_weight_decay", type=float, default=1e-2, help="AdamW's decoupled weight decay")
    g.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW's epsilon")
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit (must be installed)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 = no clipping")
    g.add_argument(
        "--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="default: accelerate's config, else no"
    )
    g.add_argument(
        "--cpu",
        action="store_true",
        help="train on the CPU on purpose (tests, dry runs); without it, "
        "a run that finds no GPU trains on the CPU with a warning",
    )
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="tcd-lora", help="folder for the LoRA, checkpoints, validation and logs")
    g.add_argument("--output_name", default="tcd_lora", help="the LoRA is <output_dir>/<output_name>.safetensors")
    g.add_argument("--checkpointing_steps", type=int, default=500, help="save a checkpoint every this many steps")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many (default: all)")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=0, help="0 = no validation images")
    g.add_argument(
        "--validation_prompts",
        nargs="*",
        default=["a photo of a cat", "a watercolor of a lighthouse"],
        help="prompts of the validation images",
    )
    g.add_argument("--validation_inference_steps", type=int, default=4, help="TCD sampler steps per validation image")
    g.add_argument("--validation_gamma", type=float, default=0.3, help="the TCD sampler's gamma for validation")
    g.add_argument(
        "--report_to",
        choices=("tensorboard", "none"),
        default="tensorboard",
        help="loss / lr / images to TensorBoard (<output_dir>/logs) when it is installed",
    )
    g.add_argument("--log_every", type=int, default=1, help="show loss and lr every this many steps")
    g.add_argument("--stop_at_step", type=int, default=None, help=argparse.SUPPRESS)  # tests: die as if killed
    return p


@dataclass(frozen=True)
class Resolution:
    width: int
    height: int


def parse_resolution(text: str) -> Resolution:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if not match:
        raise TrainerError(f"--resolution {text!r}: give N or WxH in pixels, e.g. 512 or 768x512")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width <= 0 or height <= 0:
        raise TrainerError(f"--resolution {text!r}: sides must be positive")
    return Resolution(width, height)


def check_options(args: argparse.Namespace) -> tuple[DistillConfig, TrainSettings]:
    """Refuse what can be refused without loading anything, each message naming the option; returns the
    distillation settings (the prediction type comes from the model, once it is loaded)."""
    if not os.path.isfile(args.pretrained_model):
        raise TrainerError(f"--pretrained_model {args.pretrained_model}: no such file")
    for path in [*(args.text_encoder or []), *([args.vae] if args.vae else [])]:
        if not os.path.isfile(path):
            option = "--vae" if path == args.vae else "--text_encoder"
            raise TrainerError(f"{option} {path}: no such file")
    for name in ("embedded_guidance_min", "embedded_guidance_max"):
        value = getattr(args, name)
        if not math.isfinite(value) or not 0.0 <= value <= 100.0:
            raise TrainerError(f"--{name} {value}: must be a number in [0.0, 100.0]")
    if args.embedded_guidance_min > args.embedded_guidance_max:
        raise TrainerError(
            f"--embedded_guidance_min {args.embedded_guidance_min}: must be <= --embedded_guidance_max "
            f"({args.embedded_guidance_max})"
        )
    config = settings_from(args, DistillConfig)
    settings = settings_from(args, TrainSettings, training_dtype="fp32", lora_dtype="fp32")
    sources = [x for x in (args.train_data_dir, args.train_shards_path_or_url) if x]
    cached = bool(args.latents_cache) and os.path.isfile(os.path.join(args.latents_cache, "index.json"))
    if len(sources) > 1:
        raise TrainerError("give one of --train_data_dir and --train_shards_path_or_url, not both")
    if not sources and not cached:
        raise TrainerError("no data: give --train_data_dir or --train_shards_path_or_url (or a filled --latents_cache)")
    if args.latents_cache and (args.crop == "random" or args.random_flip):
        raise TrainerError("--latents_cache stores one encoding per image: it takes --crop center, no --random_flip")
    parse_resolution(args.resolution)
    positive = {
        "--checkpointing_steps": args.checkpointing_steps,
        "--log_every": args.log_every,
        "--validation_inference_steps": args.validation_inference_steps,
    }
    for name, value in positive.items():
        if value < 1:
            raise TrainerError(f"{name} {value}: must be >= 1")
    if args.lr_warmup_steps < 0 or args.validation_steps < 0:
        raise TrainerError("--lr_warmup_steps and --validation_steps must be >= 0")
    if not math.isfinite(args.max_grad_norm) or args.max_grad_norm < 0:
        raise TrainerError(f"--max_grad_norm {args.max_grad_norm}: must be a number >= 0")
    if args.use_8bit_adam and settings.optimizer != "AdamW":
        raise TrainerError(f"--use_8bit_adam is AdamW8bit: it takes --optimizer AdamW, not {settings.optimizer}")
    if args.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainerError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
    return config, settings
