"""TCD Distill LoRA: distil a TCD LoRA for a checkpoint from a latent dataset (TCD paper, Eq. 29, Alg. 2).

Inputs and outputs as ComfyUI's Train LoRA, so its dataset nodes feed it and SaveLoRA, LossGraphNode and
LoraModelLoader take what it returns; the training math is tcd_core.distill, the ComfyUI side
nodes/distill_training.py.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io
from tqdm.auto import trange

from ..tcd_core import distill
from . import distill_training as training
from .lora_stack import NONE, read_lora

log = logging.getLogger("comfyui-tcd-sampling")

DEFAULTS = distill.DistillConfig()  # the TCD defaults live in one place: tcd_core.distill.DistillConfig
TRAIN_DEFAULTS = training.TrainSettings()
LORA_MODEL = io.Custom("LORA_MODEL")
LOSS_MAP = io.Custom("LOSS_MAP")


def _existing_steps(name: str) -> int:
    """Steps already trained, from SaveLoRA's file name ``<prefix>_<steps>_steps_<counter>_``; else 0."""
    match = re.search(r"_(\d+)_steps_", name)
    return int(match.group(1)) if match else 0


def _send_progress_text(node_id: str | None, text: str) -> None:
    """The running loss on the node in the web UI (ComfyUI's progress text), when a server runs."""
    server = sys.modules.get("server")  # ComfyUI's server module, imported by main.py; absent in-process
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if node_id is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(text, node_id)


class TCDDistillLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrajectoryConsistencyDistillLoRA",
            display_name="TCD Distill LoRA",
            category="training",
            description=(
                "Distils a TCD LoRA for this checkpoint (Trajectory Consistency Distillation, Eq. 29 with the "
                "guided teacher of Algorithm 2): the checkpoint with the LoRA off is the teacher, with it on the "
                "student. Same data as Train LoRA; save the result with Save LoRA Weights and sample it with "
                "the TCD Sampler."
            ),
            is_experimental=True,
            is_input_list=True,  # a dataset arrives as lists (Train LoRA's convention)
            inputs=[
                io.Model.Input("model", tooltip="The checkpoint to distil (SD1.5, SD2.x or SDXL); it is the teacher."),
                io.Latent.Input(
                    "latents",
                    tooltip="The training images as latents: one batched LATENT (VAE Encode) or a list of them "
                    "(Make Training Dataset, Load Training Dataset).",
                ),
                io.Conditioning.Input(
                    "positive", tooltip="The captions: one conditioning for all images or one per image."
                ),
                io.Conditioning.Input(
                    "negative",
                    tooltip="The teacher's unconditional prompt for guidance (usually an empty CLIP Text Encode): "
                    "one for all images or one per image.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=TRAIN_DEFAULTS.batch_size,
                    min=1,
                    max=10000,
                    tooltip="Images per training batch (at most the dataset size).",
                ),
                io.Int.Input(
                    "grad_accumulation_steps",
                    default=TRAIN_DEFAULTS.grad_accumulation_steps,
                    min=1,
                    max=1024,
                    tooltip="Batches whose gradients add up to one optimizer step.",
                ),
                io.Int.Input(
                    "steps",
                    default=TRAIN_DEFAULTS.steps,
                    min=1,
                    max=100000,
                    tooltip="Optimizer steps to train (the paper's TCF(1) reached its quality in about 3000).",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=TRAIN_DEFAULTS.learning_rate,
                    min=0.0000001,
                    max=1.0,
                    step=0.0000001,
                    tooltip="The optimizer's learning rate (1e-4 as diffusers' LCM-LoRA script).",
                ),
                io.Int.Input(
                    "rank",
                    default=TRAIN_DEFAULTS.rank,
                    min=1,
                    max=128,
                    tooltip="The rank of the new LoRA layers (64 as the published TCD and LCM LoRAs).",
                ),
                io.Combo.Input(
                    "optimizer",
                    options=list(training.OPTIMIZERS),
                    default=TRAIN_DEFAULTS.optimizer,
                    tooltip="The optimizer (PyTorch defaults besides the learning rate).",
                ),
                io.Int.Input(
                    "seed",
                    default=TRAIN_DEFAULTS.seed,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=False,
                    tooltip="Seed of the LoRA initialisation and of every draw (images, noise, timesteps, "
                    "guidance scales): the same seed trains the same LoRA.",
                ),
                io.Combo.Input(
                    "training_dtype",
                    options=list(training.DTYPES),
                    default=TRAIN_DEFAULTS.training_dtype,
                    tooltip="The dtype the network computes in (bf16: half the memory; fp32: exact, slow).",
                ),
                io.Combo.Input(
                    "lora_dtype",
                    options=list(training.DTYPES),
                    default=TRAIN_DEFAULTS.lora_dtype,
                    tooltip="The dtype of the trained LoRA weights and of the saved file. fp32 keeps the small "
                    "updates of a 1e-4 learning rate that bf16 would round away.",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=TRAIN_DEFAULTS.gradient_checkpointing,
                    tooltip="Recompute activations in the backward pass: much less memory, about a third slower.",
                ),
                io.Combo.Input(
                    "existing_lora",
                    options=[NONE, *folder_paths.get_filename_list("loras")],
                    default=NONE,
                    tooltip="A LoRA to continue training from (e.g. the published TCD LoRA, or one saved by this "
                    "node), or None for a new LoRA. Its layers keep their rank; the other layers get new ones.",
                ),
                io.Float.Input(
                    "guidance_min",
                    default=DEFAULTS.guidance_min,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Lowest guidance scale w of the teacher, drawn per sample in [guidance_min, "
                    "guidance_max] (LCM's form: w is the CFG scale minus 1; 3..15 as the LCM-LoRA script). "
                    "0..0 trains an unguided teacher.",
                ),
                io.Float.Input(
                    "guidance_max",
                    default=DEFAULTS.guidance_max,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Highest guidance scale w of the teacher; at least guidance_min.",
                ),
                io.Int.Input(
                    "num_ddim_timesteps",
                    default=DEFAULTS.num_ddim_timesteps,
                    min=1,
                    max=DEFAULTS.num_train_timesteps,
                    tooltip="Points of the skipping-step grid: the teacher jumps k = 1000 / N timesteps per step "
                    "(50 as LCM and TCD; TCD samples on the same 50-point grid).",
                ),
                io.Float.Input(
                    "ema_decay",
                    default=DEFAULTS.ema_decay,
                    min=0.0,
                    max=0.9999,
                    step=0.0001,
                    tooltip="The target network: 0 = the student itself without gradient (stop-grad, as "
                    "LCM-LoRA); above 0 = an exponential moving average of the LoRA with this decay (e.g. 0.95).",
                ),
                io.Combo.Input(
                    "loss",
                    options=list(distill.DISTILL_LOSSES),
                    default=DEFAULTS.loss,
                    tooltip="The distance d of Eq. 29: l2 = mean squared error (the better TCD students in the "
                    "pack's benchmark), huber = pseudo-Huber sqrt(diff^2 + c^2) - c (as LCM-LoRA was trained).",
                ),
                io.Float.Input(
                    "huber_c",
                    default=DEFAULTS.huber_c,
                    min=0.000001,
                    max=10.0,
                    step=0.0001,
                    tooltip="The pseudo-Huber constant c (0.001 as LCM's script); unused with l2.",
                ),
                io.Combo.Input(
                    "s_rule",
                    options=list(distill.S_RULES),
                    default=DEFAULTS.s_rule,
                    tooltip="How the target time s in [0, t_n] is drawn: uniform = uniform on the grid (the "
                    "paper's rule); uniform+zero = s = 0 with probability s_zero_share, else uniform; "
                    "uniform+zero-ramp = that share growing with t (trains the 1-2-step jumps to 0).",
                ),
                io.Float.Input(
                    "s_zero_share",
                    default=DEFAULTS.s_zero_share,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Share of s = 0 draws for the uniform+zero rules; unused with uniform.",
                ),
                io.Combo.Input(
                    "method",
                    options=list(distill.DISTILL_METHODS),
                    default=DEFAULTS.method,
                    tooltip="tcd: the trajectory consistency function TCF(1) (sample with the TCD Sampler). "
                    "lcm: latent consistency distillation (s = 0 with LCM's boundary scalings), an LCM-LoRA.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the trained LoRA applied."),
                LORA_MODEL.Output(display_name="lora", tooltip="The LoRA weights, for Save LoRA Weights."),
                LOSS_MAP.Output(display_name="loss_map", tooltip="The loss of every step, for Plot Loss Graph."),
                io.Int.Output(display_name="steps", tooltip="Total steps trained (with those of existing_lora)."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, latents, positive, negative, **lists: list) -> io.NodeOutput:
        values: dict[str, Any] = {name: value[0] for name, value in lists.items()}
        model = model[0]
        # Everything is checked before any training.
        config = distill.DistillConfig(
            method=values["method"],
            num_ddim_timesteps=values["num_ddim_timesteps"],
            guidance_min=float(values["guidance_min"]),
            guidance_max=float(values["guidance_max"]),
            loss=values["loss"],
            huber_c=float(values["huber_c"]),
            s_rule=values["s_rule"],
            s_zero_share=float(values["s_zero_share"]),
            ema_decay=float(values["ema_decay"]),
        )
        settings = training.TrainSettings(
            **{name: values[name] for name in training.TrainSettings.__dataclass_fields__}
        )
        for name, allowed in (
            ("optimizer", training.OPTIMIZERS),
            ("training_dtype", training.DTYPES),
            ("lora_dtype", training.DTYPES),
        ):
            if values[name] not in allowed:
                raise training.input_error(name, f"must be one of {', '.join(allowed)}, got {values[name]!r}")
        facts = training.model_facts(model)
        try:
            config = distill.DistillConfig(**{**config.__dict__, "prediction": facts.prediction}).validate()
        except distill.TCDInputError as error:  # its message starts with the field, named as the node's input
            field, _, message = str(error).partition(" ")
            raise training.input_error(field, message) from None
        dataset = training.build_dataset(model, latents, positive, negative, facts)
        existing_name = values["existing_lora"]
        existing = None
        if existing_name != NONE:
            try:
                existing = training.read_existing_lora(model.model, read_lora(existing_name))
            except ValueError as error:
                if str(error).startswith(training.NODE_NAME):
                    raise
                raise training.input_error("existing_lora", str(error)) from None
        trained = cls.train(
            model, dataset, facts, config, settings, existing, node_id=getattr(cls.hidden, "unique_id", None)
        )
        lora, loss_map = trained
        total_steps = settings.steps + (_existing_steps(existing_name) if existing is not None else 0)
        model_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
        return io.NodeOutput(model_lora, lora, loss_map, total_steps)

    @classmethod
    def train(
        cls,
        model: Any,
        dataset: training.DistillDataset,
        facts: training.ModelFacts,
        config: distill.DistillConfig,
        settings: training.TrainSettings,
        existing: dict | None = None,
        node_id: str | None = None,
    ) -> tuple[dict, dict]:
        """The training loop: ComfyUI's progress bar, the running loss, Cancel checked every step."""
        losses: list[float] = []
        ui_bar = comfy.utils.ProgressBar(settings.steps, node_id=node_id)
        log.info(
            "TCD Distill LoRA: training with seed %d, %d images, %s, %s", settings.seed, len(dataset), settings, config
        )
        with training.DistillRun(model, dataset, facts, config, settings, existing) as run:
            bar = trange(settings.steps, desc="TCD distillation", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
            for step in bar:
                comfy.model_management.throw_exception_if_processing_interrupted()
                loss = run.step()
                losses.append(loss)
                bar.set_postfix({"loss": f"{loss:.4f}"})
                ui_bar.update_absolute(step + 1)
                _send_progress_text(node_id, f"step {step + 1}/{settings.steps}  loss {loss:.4f}")
            lora = run.lora_state_dict()
        return lora, {"loss": losses}
