"""Adds `tcd` to KSampler's sampler and scheduler lists, in place and once."""

from __future__ import annotations

import logging

import comfy.samplers
from comfy.k_diffusion import sampling as k_diffusion_sampling

from ..tcd_comfy.sampling import ksampler_tcd_sampler, ksampler_tcd_scheduler

log = logging.getLogger("comfyui-tcd-sampling")

NAME = "tcd"


def _append_once(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)  # in place: other modules and packs hold references to these lists


def register_tcd_in_ksampler() -> None:
    """Make `tcd` selectable in KSampler (sampler and scheduler) unless another pack already did.

    Idempotent. Lists are appended in place, never rebound. Where another pack registered a
    `tcd` first, its implementation stays active and this is logged.
    """
    existing = getattr(k_diffusion_sampling, "sample_tcd", None)
    if existing is None:
        k_diffusion_sampling.sample_tcd = ksampler_tcd_sampler  # KSampler looks samplers up as sample_<name>
        existing = ksampler_tcd_sampler
    if existing is ksampler_tcd_sampler:
        _append_once(comfy.samplers.KSAMPLER_NAMES, NAME)
        _append_once(comfy.samplers.SAMPLER_NAMES, NAME)
    else:
        log.warning("KSampler sampler 'tcd' comes from %s; this pack's is in the TCD Sampler node", existing.__module__)

    handler = comfy.samplers.SCHEDULER_HANDLERS.get(NAME)
    if handler is None:
        comfy.samplers.SCHEDULER_HANDLERS[NAME] = comfy.samplers.SchedulerHandler(ksampler_tcd_scheduler)
        handler = comfy.samplers.SCHEDULER_HANDLERS[NAME]
    if handler.handler is ksampler_tcd_scheduler:
        _append_once(comfy.samplers.SCHEDULER_NAMES, NAME)
    else:
        log.warning(
            "KSampler scheduler 'tcd' comes from %s; this pack's is the TCD Scheduler node", handler.handler.__module__
        )
