"""TCD Scheduler: the reference's timestep schedule as SIGMAS."""

from __future__ import annotations

from comfy_api.latest import io

from .. import tcd_core
from ..tcd_comfy.sampling import tcd_sigmas, train_timesteps


class TCDScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrajectoryConsistencyScheduler",
            display_name="TCD Scheduler",
            category="sampling/custom_sampling/schedulers",
            description="TCD's timestep schedule, as diffusers' TCDScheduler: "
            "4 steps give timesteps 999, 759, 499, 259.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The model to sample; its own noise schedule turns timesteps into sigmas."
                ),
                io.Int.Input(
                    "steps",
                    default=4,
                    min=1,
                    max=1000,
                    tooltip="Sampling steps (model calls with TCD Sampler order 1). 4 is the reference's; 8 for anime "
                    "checkpoints. At most original_inference_steps x strength.",
                ),
                io.Int.Input(
                    "original_inference_steps",
                    default=tcd_core.DEFAULT_ORIGINAL_INFERENCE_STEPS,
                    min=1,
                    max=1000,
                    tooltip="Size of the distillation grid the TCD LoRA was trained on (50 for the released LoRAs). "
                    "Steps are picked evenly from this grid.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.01,
                    tooltip="img2img strength with diffusers' meaning: the grid is cut at the top, so sampling starts "
                    "at timestep ~1000 x strength and takes `steps` steps from there. 1 = text-to-image. (KSampler's "
                    "denoise with the `tcd` scheduler instead spreads steps/denoise steps and keeps the last ones.) "
                    "With a timesteps list: keeps its last int(count x strength) entries, as diffusers does.",
                ),
                io.String.Input(
                    "timesteps",
                    default="",
                    optional=True,  # prompts saved before this input run unchanged
                    tooltip="Empty: the schedule comes from steps, original_inference_steps and strength. Otherwise a "
                    "list of training timesteps, e.g. '999, 749, 499, 249' (DMD2 4-step) or '800' (Hyper-SD 1-step "
                    "UNet): whole numbers in 0..999, strictly descending, separated by commas or spaces. It "
                    "overrides steps and original_inference_steps, as diffusers' set_timesteps(timesteps=...); "
                    "strength keeps its last int(count x strength) entries. Text-to-image from a list starting "
                    "below 999 as diffusers runs it (DMD2 1-step, Hyper-SDXL 1-step UNet): turn on the TCD "
                    "Sampler's unit_start_noise (README: Other distilled models).",
                ),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def validate_inputs(cls, timesteps: str | None = "") -> bool | str:
        # The model's own range is checked at execution; here the form, on the 0..999 range of SD / SDXL / flow.
        if timesteps is None:  # linked: checked when its value arrives
            return True
        if not isinstance(timesteps, str):  # declaring the input here skips ComfyUI's own type check
            return f"TCD Scheduler timesteps must be text, got {type(timesteps).__name__}"
        if not timesteps.strip():
            return True
        try:
            tcd_core.parse_timesteps(timesteps)
        except ValueError as error:
            return f"TCD Scheduler {error}"
        return True

    @classmethod
    def execute(
        cls, model, steps: int, original_inference_steps: int, strength: float, timesteps: str = ""
    ) -> io.NodeOutput:
        model_sampling = model.get_model_object("model_sampling")
        try:
            custom = None
            if timesteps.strip():
                custom = tcd_core.parse_timesteps(timesteps, train_timesteps(model_sampling).stop)
            sigmas = tcd_sigmas(model_sampling, steps, original_inference_steps, strength, custom)
        except ValueError as error:
            raise ValueError(f"TCD Scheduler: {error}") from None
        return io.NodeOutput(sigmas)
