"""The trainer's command line (names as diffusers' LCM-LoRA scripts where they exist) and the checks that run
before anything is loaded."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from dataclasses import dataclass

from .pack import TrainerError, pack_module


def build_parser() -> argparse.ArgumentParser:
    distill = pack_module("tcd_core.distill")  # pure torch: no ComfyUI needed yet
    defaults = distill.DistillConfig()  # the node's defaults, so the two cannot drift apart
    p = argparse.ArgumentParser(
        prog="tcd-train" if os.path.basename(sys.argv[0]).startswith("tcd-train") else "python -m tcd_train",
        description="Distil a TCD (or LCM) LoRA from a single-file SD1.5 / SD2.1 / SDXL checkpoint, on one or "
        "many GPUs (tcd-train ..., accelerate launch -m tcd_train ..., torchrun -m tcd_train ...).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--comfyui", default=None, help="ComfyUI checkout to load models with (default $COMFYUI_PATH)")
    g.add_argument("--pretrained_model", required=True, help="teacher checkpoint, one .safetensors file")
    g.add_argument("--negative_prompt", default="", help="the guided teacher's unconditional prompt")
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
    g = p.add_argument_group("distillation (tcd_core.distill.DistillConfig)")
    g.add_argument("--method", choices=distill.DISTILL_METHODS, default=defaults.method)
    g.add_argument("--num_ddim_timesteps", type=int, default=defaults.num_ddim_timesteps)
    g.add_argument("--w_min", type=float, default=defaults.guidance_min, help="teacher's guidance range (LCM form)")
    g.add_argument("--w_max", type=float, default=defaults.guidance_max)
    g.add_argument("--loss_type", choices=distill.DISTILL_LOSSES, default=defaults.loss)
    g.add_argument("--huber_c", type=float, default=defaults.huber_c)
    g.add_argument("--s_rule", choices=distill.S_RULES, default=defaults.s_rule)
    g.add_argument("--s_zero_share", type=float, default=defaults.s_zero_share)
    g.add_argument("--ema_decay", type=float, default=defaults.ema_decay, help="EMA target decay; 0 = stop-grad")
    g.add_argument("--timestep_scaling_factor", type=float, default=defaults.timestep_scaling, help="LCM boundary")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lora_rank", type=int, default=64)
    g.add_argument("--train_batch_size", type=int, default=8, help="per process")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--learning_rate", type=float, default=1e-4)
    g.add_argument("--lr_scheduler", choices=("constant", "linear", "cosine"), default="constant")
    g.add_argument("--lr_warmup_steps", type=int, default=500)
    g.add_argument(
        "--optimizer", choices=("AdamW", "Adam", "SGD", "RMSprop"), default="AdamW", help="as the node's choices"
    )
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-2)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' AdamW8bit (must be installed)")
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="0 = no clipping")
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help="default: accelerate's")
    g.add_argument("--gradient_checkpointing", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cpu", action="store_true", help="train on the CPU (tests, dry runs)")
    g = p.add_argument_group("output")
    g.add_argument("--output_dir", default="tcd-lora")
    g.add_argument("--output_name", default="tcd_lora", help="the LoRA is <output_dir>/<output_name>.safetensors")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=0, help="0 = no validation images")
    g.add_argument("--validation_prompts", nargs="*", default=["a photo of a cat", "a watercolor of a lighthouse"])
    g.add_argument("--validation_inference_steps", type=int, default=4)
    g.add_argument("--validation_gamma", type=float, default=0.3)
    g.add_argument("--report_to", choices=("tensorboard", "none"), default="tensorboard")
    g.add_argument("--log_every", type=int, default=1)
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


def check_options(args: argparse.Namespace) -> None:
    """Refuse what can be refused without loading anything; each message names the option."""
    if not os.path.isfile(args.pretrained_model):
        raise TrainerError(f"--pretrained_model {args.pretrained_model}: no such file")
    if args.w_min > args.w_max:
        raise TrainerError(f"--w_min {args.w_min} > --w_max {args.w_max}: the guidance range needs w_min <= w_max")
    if args.w_min < 0:
        raise TrainerError(f"--w_min {args.w_min}: guidance scales must be >= 0")
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
        "--lora_rank": args.lora_rank,
        "--train_batch_size": args.train_batch_size,
        "--gradient_accumulation_steps": args.gradient_accumulation_steps,
        "--max_train_steps": args.max_train_steps,
        "--num_ddim_timesteps": args.num_ddim_timesteps,
        "--checkpointing_steps": args.checkpointing_steps,
        "--log_every": args.log_every,
        "--validation_inference_steps": args.validation_inference_steps,
    }
    for name, value in positive.items():
        if value < 1:
            raise TrainerError(f"{name} {value}: must be >= 1")
    if args.lr_warmup_steps < 0 or args.validation_steps < 0:
        raise TrainerError("--lr_warmup_steps and --validation_steps must be >= 0")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise TrainerError(f"--learning_rate {args.learning_rate}: must be a number > 0")
    if args.use_8bit_adam and args.optimizer != "AdamW":
        raise TrainerError(f"--use_8bit_adam is AdamW8bit: it takes --optimizer AdamW, not {args.optimizer}")
    if args.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainerError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
