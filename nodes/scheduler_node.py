"""TCD Scheduler: the reference's timestep schedule as SIGMAS."""

from __future__ import annotations

from comfy_api.latest import io

from .comfy_adapter import tcd_sigmas


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
                    default=50,
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
                    "denoise with the `tcd` scheduler instead spreads steps/denoise steps and keeps the last ones.)",
                ),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps: int, original_inference_steps: int, strength: float) -> io.NodeOutput:
        model_sampling = model.get_model_object("model_sampling")
        try:
            sigmas = tcd_sigmas(model_sampling, steps, original_inference_steps, strength)
        except ValueError as error:
            raise ValueError(f"TCD Scheduler: {error}") from None
        return io.NodeOutput(sigmas)
