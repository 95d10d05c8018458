"""TCD Distill LoRA: distil a TCD LoRA for a checkpoint from a latent dataset (TCD paper, Eq. 29, Alg. 2).

Inputs and outputs as ComfyUI's Train LoRA, so its dataset nodes feed it and SaveLoRA, LossGraphNode and
LoraModelLoader take what it returns. The widgets come from the settings' field metadata
(``tcd_core.distiller.TrainSettings``, ``tcd_core.distill.DistillConfig``); the training is
``tcd_comfy.distill_run.DistillRun``, whose step is ``tcd_core.distiller.Distiller``'s.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

import comfy.model_management
import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io
from tqdm.auto import trange

from ..tcd_comfy.distill_data import DistillDataset, build_dataset, flatten_conditioning
from ..tcd_comfy.distill_model import ModelFacts, input_error, model_facts
from ..tcd_comfy.distill_run import DistillRun
from ..tcd_comfy.guidance_inputs import EmbeddedGuidanceInputs, guidance_note
from ..tcd_comfy.host_training import HostTraining
from ..tcd_comfy.lora_adapters import read_existing_lora
from ..tcd_comfy.lora_stack import NONE, read_lora
from ..tcd_comfy.training_preview import TrainingPreview
from ..tcd_core.distill import DistillConfig
from ..tcd_core.distiller import TrainingDiverged, TrainSettings
from ..tcd_core.errors import TCDInputError
from ..tcd_core.settings import settings_of
from .setting_inputs import setting_inputs

log = logging.getLogger("comfyui-tcd-sampling")

NODE_NAME = "TCD Distill LoRA"
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


def _node_error(error: TCDInputError) -> TCDInputError:
    """The error naming this node and the input (``error.field``), as every TCD node reports bad input."""
    if error.field is None:
        return error
    return TCDInputError(f"{NODE_NAME} {error.field}: {error.detail}", field=error.field, detail=error.detail)


def _settings(
    values: dict[str, Any], facts: ModelFacts, positive: Sequence[Any] = ()
) -> tuple[DistillConfig, TrainSettings, HostTraining]:
    """The settings of the run from the node's values; an input absent from an older prompt takes its default. The
    model's facts (prediction type, schedule length, embedded guidance input) complete the DistillConfig."""

    def of(cls: type) -> dict[str, Any]:
        return {name: values[name] for name, (spec, _) in settings_of(cls).items() if spec.node and name in values}

    embedded = EmbeddedGuidanceInputs(**of(EmbeddedGuidanceInputs))
    guidance = embedded.config_fields(facts, flatten_conditioning(positive))
    config = DistillConfig(**of(DistillConfig), **facts.config_fields(), **guidance)
    host = HostTraining(**of(HostTraining))
    host.check_host()
    note = guidance_note(facts, config)
    if note is not None:
        log.warning("%s: %s", NODE_NAME, note)
    return config, TrainSettings(**of(TrainSettings)), host


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
                io.Model.Input(
                    "model",
                    tooltip="The model to distil (SD1.5, SD2.x, SDXL, SD3 / SD3.5, Flux.1-dev / schnell, Qwen-Image, "
                    "Z-Image, Wan 2.2 TI2V 5B); it is the teacher.",
                ),
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
                *setting_inputs(TrainSettings),
                io.Combo.Input(
                    "existing_lora",
                    options=[NONE, *folder_paths.get_filename_list("loras")],
                    default=NONE,
                    tooltip="A LoRA to continue training from (e.g. the published TCD LoRA, or one saved by this "
                    "node), or None for a new LoRA. Its layers keep their rank; the other layers get new ones.",
                ),
                *setting_inputs(DistillConfig),
                *setting_inputs(HostTraining, optional=True),
                *setting_inputs(EmbeddedGuidanceInputs, optional=True),
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
        existing_name = values["existing_lora"]
        try:  # everything is checked before any training
            facts = model_facts(model)
            config, settings, host = _settings(values, facts, positive)
            dataset = build_dataset(model, latents, positive, negative, facts)
            existing = None
            if existing_name != NONE and host.algorithm != "LoRA":
                raise input_error(
                    "algorithm", f"{host.algorithm} cannot continue existing_lora, a LoRA: set algorithm to LoRA"
                )
            if existing_name != NONE:
                try:
                    lora_file = read_lora(existing_name)
                except ValueError as error:  # unreadable, or not in the loras folders
                    raise input_error("existing_lora", str(error)) from None
                existing = read_existing_lora(model.model, lora_file)
        except TCDInputError as error:
            raise _node_error(error) from None
        first_positive = flatten_conditioning(positive)[0]
        lora, loss_map = cls.train(
            model, dataset, facts, config, settings, existing, host, first_positive,
            node_id=getattr(cls.hidden, "unique_id", None),
        )  # fmt: skip
        total_steps = settings.steps + (_existing_steps(existing_name) if existing is not None else 0)
        model_lora, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
        return io.NodeOutput(model_lora, lora, loss_map, total_steps)

    @classmethod
    def train(
        cls,
        model: Any,
        dataset: DistillDataset,
        facts: ModelFacts,
        config: DistillConfig,
        settings: TrainSettings,
        existing: dict | None = None,
        host: HostTraining | None = None,
        first_positive: list | None = None,
        node_id: str | None = None,
    ) -> tuple[dict, dict]:
        """The training loop: ComfyUI's progress bar, the running loss, Cancel checked every step, and the
        student's preview every ``host.preview_every`` steps."""
        host = host or HostTraining()
        losses: list[float] = []
        ui_bar = comfy.utils.ProgressBar(settings.steps, node_id=node_id)
        log.info(
            "TCD Distill LoRA: training with seed %d, %d images, %s, %s, %s",
            settings.seed, len(dataset), settings, config, host,
        )  # fmt: skip
        with DistillRun(model, dataset, facts, config, settings, existing, host) as run:
            preview = None
            if host.preview_every and first_positive is not None:
                shape = dataset.latents[0].shape
                preview = TrainingPreview(run.model.patcher, first_positive, shape, host.preview_every)
            bar = trange(settings.steps, desc="TCD distillation", disable=not comfy.utils.PROGRESS_BAR_ENABLED)
            for step in bar:
                comfy.model_management.throw_exception_if_processing_interrupted()
                try:
                    loss = run.step()
                except TrainingDiverged as error:  # nothing is returned, so nothing non-finite can be saved
                    raise RuntimeError(
                        f"{NODE_NAME}: {error}. No LoRA was returned: lower learning_rate, or use training_dtype fp32"
                    ) from None
                losses.append(loss)
                bar.set_postfix({"loss": f"{loss:.4f}"})
                image = preview.image() if preview is not None and preview.due(step + 1) else None
                ui_bar.update_absolute(step + 1, settings.steps, image)
                _send_progress_text(node_id, f"step {step + 1}/{settings.steps}  loss {loss:.4f}")
            lora = run.lora_state_dict()
        return lora, {"loss": losses}


__all__ = ["TCDDistillLoRA"]
