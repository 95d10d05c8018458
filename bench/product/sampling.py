"""Sampling through ComfyUI's own sampling (comfy.sample.sample_custom, as SamplerCustom runs it).

Sampler configurations, each ``(label, build(patcher, steps) -> (sampler, sigmas), cfg)``:
teacher ``ddim`` (ComfyUI's sampler "ddim" on scheduler "ddim_uniform") and ``euler`` ("normal") at the
teacher's CFG; the TCD student with the pack's TCD Scheduler + TCD Sampler (gamma 0 / 0.3 / 0.5) at CFG 1;
the LCM student with ComfyUI's ``lcm`` sampler on ``sgm_uniform`` and on the TCD schedule at CFG 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .data import SD15_CODEC, LatentCodec, Prompts


@dataclass(frozen=True)
class SamplerConfig:
    label: str
    kind: str  # "ksampler" (ComfyUI sampler + scheduler) | "tcd" (the pack's nodes) | "lcm-tcd" (lcm on TCD sigmas)
    sampler: str = ""
    scheduler: str = ""
    gamma: float = 0.0

    def build(self, host: Any, patcher: Any, steps: int) -> tuple[Any, Tensor]:
        import comfy.samplers

        from devkit.inprocess import run_node

        model_sampling = patcher.get_model_object("model_sampling")
        if self.kind == "ksampler":
            sigmas = comfy.samplers.calculate_sigmas(model_sampling, self.scheduler, steps).cpu()
            return comfy.samplers.sampler_object(self.sampler), sigmas
        (sigmas,) = run_node(
            host.node("TrajectoryConsistencyScheduler"),
            model=patcher,
            steps=steps,
            original_inference_steps=50,
            strength=1.0,
        )
        if self.kind == "lcm-tcd":
            return comfy.samplers.sampler_object("lcm"), sigmas
        (sampler,) = run_node(
            host.node("TrajectoryConsistencySampler"),
            gamma=self.gamma,
            gamma_schedule="constant",
            gamma_end=self.gamma,
            gamma_list=str(self.gamma),
            order=1,
        )
        return sampler, sigmas


TEACHER_SAMPLERS = (
    SamplerConfig("ddim (ddim_uniform)", "ksampler", "ddim", "ddim_uniform"),
    SamplerConfig("euler (normal)", "ksampler", "euler", "normal"),
    # DDIM on TCD's own timesteps (999, 759, 499, 259 at 4 steps): the TCD Sampler at gamma 0 is DDIM's step
    SamplerConfig("ddim (tcd schedule)", "tcd", gamma=0.0),
)
TCD_SAMPLERS = tuple(SamplerConfig(f"tcd gamma {g:g}", "tcd", gamma=g) for g in (0.0, 0.3, 0.5))
LCM_SAMPLERS = (
    SamplerConfig("lcm (sgm_uniform)", "ksampler", "lcm", "sgm_uniform"),
    SamplerConfig("lcm (tcd schedule)", "lcm-tcd"),
)
CONTROL_SAMPLERS = (TCD_SAMPLERS[0], LCM_SAMPLERS[0])
REFERENCE_SAMPLER = SamplerConfig("ddim (ddim_uniform)", "ksampler", "ddim", "ddim_uniform")
REFERENCE_STEPS = 50


@dataclass(frozen=True)
class Samplers:
    """A model family's sampler configurations: the teacher's own, its reference, the students', the controls."""

    teacher: tuple[SamplerConfig, ...]
    reference: SamplerConfig
    tcd: tuple[SamplerConfig, ...]
    lcm: tuple[SamplerConfig, ...]
    control: tuple[SamplerConfig, ...]  # the students' samplers on the teacher itself (no LoRA) at CFG 1


EPS_SAMPLERS = Samplers(TEACHER_SAMPLERS, REFERENCE_SAMPLER, TCD_SAMPLERS, LCM_SAMPLERS, CONTROL_SAMPLERS)


def sample(
    host: Any,
    patcher: Any,
    config: SamplerConfig,
    steps: int,
    cfg: float,
    labels: Tensor,
    prompts: Prompts,
    seed: int,
    codec: LatentCodec = SD15_CODEC,
) -> Tensor:
    """Decoded digits [n, 64] for ``labels`` (one conditioning row per sample), from ComfyUI's sample_custom."""
    import comfy.sample

    sampler, sigmas = config.build(host, patcher, steps)
    latent = torch.zeros(len(labels), *codec.shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        out = comfy.sample.sample_custom(
            patcher, noise, cfg, sampler, sigmas, prompts.batch(labels), prompts.negative(), latent,
            disable_pbar=True, seed=seed,
        )  # fmt: skip
    return codec.decode(codec.from_raw(out.float()))


Sample = Callable[..., Tensor]
