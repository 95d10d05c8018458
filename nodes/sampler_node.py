"""TCD Sampler: Strategic Stochastic Sampling as a SAMPLER for SamplerCustom(Advanced)."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from .. import tcd_core
from .comfy_adapter import sample_tcd

GAMMA_SCHEDULES = ["constant", "linear", "list"]


def to_gamma_schedule(schedule: str, gamma: float, gamma_end: float, gamma_list: str) -> tcd_core.GammaSchedule:
    """The node's gamma inputs as a tcd_core.GammaSchedule (ValueError names the bad input)."""
    if schedule == "constant":
        return tcd_core.GammaSchedule.constant(gamma)
    if schedule == "linear":
        return tcd_core.GammaSchedule.linear(gamma, gamma_end)
    if schedule == "list":
        return tcd_core.GammaSchedule.explicit(tcd_core.parse_gamma_list(gamma_list))
    raise ValueError(f"gamma_schedule must be one of {GAMMA_SCHEDULES}, got {schedule!r}")


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
                    default=0.3,
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
                    options=GAMMA_SCHEDULES,
                    default="constant",
                    tooltip=(
                        "constant: gamma on every step. linear: a ramp from gamma (first step) to gamma_end "
                        "(last step). list: one value per step from gamma_list."
                    ),
                ),
                io.Float.Input(
                    "gamma_end",
                    default=0.3,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Last step's gamma when gamma_schedule is linear; ignored otherwise.",
                ),
                io.String.Input(
                    "gamma_list",
                    default="0.3, 0.3, 0.3, 0.3",
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
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def validate_inputs(cls, gamma_schedule: str, gamma_list: str) -> bool | str:
        # Declaring these inputs here replaces ComfyUI's own checks of them, so check the combo too.
        if gamma_schedule not in GAMMA_SCHEDULES:
            return f"TCD Sampler gamma_schedule must be one of {GAMMA_SCHEDULES}, got {gamma_schedule!r}"
        if gamma_schedule == "list":
            try:
                tcd_core.parse_gamma_list(gamma_list)
            except ValueError as error:
                return f"TCD Sampler gamma_list: {error}"
        return True

    @classmethod
    def execute(cls, gamma: float, gamma_schedule: str, gamma_end: float, gamma_list: str, order: int) -> io.NodeOutput:
        schedule = to_gamma_schedule(gamma_schedule, gamma, gamma_end, gamma_list)
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_tcd, extra_options={"gamma": schedule, "order": order}))
