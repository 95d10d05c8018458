"""TCD Sampler: Strategic Stochastic Sampling as a SAMPLER for SamplerCustom(Advanced)."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from .. import tcd_core
from ..tcd_comfy.sampling import UnitStartNoiseKSAMPLER, ksampler_tcd_sampler

Kind = tcd_core.GammaScheduleKind


class TCDSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TrajectoryConsistencySampler",
            display_name="TCD Sampler",
            category="sampling/custom_sampling/samplers",
            description=(
                "Trajectory Consistency Distillation's Strategic Stochastic Sampling. Use with a TCD LoRA, "
                "4-8 steps, CFG 1 and the TCD Scheduler."
            ),
            inputs=[
                io.Float.Input(
                    "gamma",
                    default=tcd_core.DEFAULT_GAMMA,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "The paper's gamma, called eta in diffusers (same number). Each step denoises to "
                        "s = (1 - gamma) * t_next, then adds fresh noise back up to t_next. 0: deterministic, "
                        "most detail. 0.3: the reference default. 1: LCM-style, smoothest. Raise it for "
                        "cleaner, softer images, lower it for more detail. With a ramp, this is the first step's."
                    ),
                ),
                io.Combo.Input(
                    "gamma_schedule",
                    options=Kind.options(),
                    default=Kind.CONSTANT.value,
                    tooltip=(
                        "constant: gamma on every step. linear: a ramp from gamma (first step) to gamma_end "
                        "(last step). list: one value per step from gamma_list."
                    ),
                ),
                io.Float.Input(
                    "gamma_end",
                    default=tcd_core.DEFAULT_GAMMA,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Last step's gamma when gamma_schedule is linear; ignored otherwise.",
                ),
                io.String.Input(
                    "gamma_list",
                    default=", ".join([str(tcd_core.DEFAULT_GAMMA)] * 4),
                    tooltip=(
                        "When gamma_schedule is list: one gamma in [0, 1] per step, separated by commas "
                        "or spaces; the count must equal the number of steps sampled. Ignored otherwise."
                    ),
                ),
                io.Int.Input(
                    "order",
                    default=1,
                    min=1,
                    max=2,
                    tooltip=(
                        "1: one model call per step, as the paper and diffusers (recommended). 2: a "
                        "second-order (DPM-Solver-2) denoise sub-step, one more model call per step."
                    ),
                ),
                io.Boolean.Input(
                    "unit_start_noise",
                    default=False,
                    optional=True,  # prompts saved before this input run unchanged
                    tooltip=(
                        "Off: ComfyUI's start, noise scaled to the first sigma (right for img2img). On: start "
                        "from unit-variance noise whatever the first timestep, as diffusers' text-to-image "
                        "pipelines do: needed for timestep lists starting below 999 that were trained that way "
                        "(DMD2 1-step at 399, Hyper-SD 1-step UNet at 800). A non-empty latent is added to that "
                        "noise as ComfyUI does at full denoise. No effect when the schedule starts at 999."
                    ),
                ),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, gamma_schedule: str, gamma_list: str) -> bool | str:
        # Declaring these inputs here replaces ComfyUI's own checks of them, so check the combo too.
        try:
            kind = Kind.parse(gamma_schedule)
        except ValueError as error:
            return f"TCD Sampler {error}"
        if kind is Kind.LIST:
            try:
                tcd_core.parse_gamma_list(gamma_list)
            except ValueError as error:
                return f"TCD Sampler gamma_list: {error}"
        return True

    @classmethod
    def execute(
        cls,
        gamma: float,
        gamma_schedule: str,
        gamma_end: float,
        gamma_list: str,
        order: int,
        unit_start_noise: bool = False,
    ) -> io.NodeOutput:
        schedule = tcd_core.GammaSchedule.from_inputs(gamma_schedule, gamma, gamma_end, gamma_list)
        options = {"gamma": schedule, "order": order}
        sampler_class = UnitStartNoiseKSAMPLER if unit_start_noise else comfy.samplers.KSAMPLER
        return io.NodeOutput(sampler_class(ksampler_tcd_sampler, extra_options=options))
