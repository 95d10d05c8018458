"""The node's embedded-guidance inputs (Flux.1-dev's guidance embedding, docs/distill.md "Embedded guidance"): the
range of g the teacher, the target and the student are given, appended at the end of the node's inputs. 0, 0 (the
default) means "not given": nothing changes for a model without the input, and a Flux.1-dev model takes the
guidance its positive conditioning carries (ComfyUI's FluxGuidance node; 3.5, Flux's default, where none is set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..tcd_core.distill import DistillConfig
from ..tcd_core.settings import check_fields, setting, setting_of
from .distill_model import ModelFacts, input_error

FLUX_DEFAULT_GUIDANCE = 3.5  # comfy.model_base.Flux.extra_conds: the guidance of a conditioning that sets none
GUIDANCE_DISTILLED = ("Flux", "FluxSchnell")  # sampled at CFG 1: their teacher's true CFG is unusual


@dataclass(frozen=True)
class EmbeddedGuidanceInputs:
    """The embedded guidance range as the node takes it; 0, 0 = not given. Checked on construction, naming the field."""

    embedded_guidance_min: float = setting(
        0.0,
        "Flux.1-dev only: the lowest embedded guidance g (FluxGuidance's value) of the teacher, the target and the "
        "student, drawn per sample up to embedded_guidance_max; the LoRA then samples at the g you set in that range "
        "with CFG 1. 0, 0: the guidance of the positive conditioning (FluxGuidance; 3.5 where none is set). Must be "
        "0 for models without an embedded guidance input.",
        low=0.0, high=setting_of(DistillConfig, "embedded_guidance_min").high, step=0.1,
    )  # fmt: skip
    embedded_guidance_max: float = setting(
        0.0,
        "Flux.1-dev only: the highest embedded guidance g; at least embedded_guidance_min (0, 0: the positive "
        "conditioning's guidance).",
        low=0.0, high=setting_of(DistillConfig, "embedded_guidance_max").high, step=0.1,
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def given(self) -> bool:
        return self.embedded_guidance_min > 0.0 or self.embedded_guidance_max > 0.0

    def config_fields(self, facts: ModelFacts, positive: Sequence[list]) -> dict[str, float]:
        """``DistillConfig``'s ``embedded_guidance_min`` / ``_max`` for this model and the positive CONDITIONING
        entries; a range given for a model without the input, or one whose ends are swapped, is refused by name."""
        low, high = self.embedded_guidance_min, self.embedded_guidance_max
        if not facts.embedded_guidance:
            if self.given:
                name = "embedded_guidance_min" if low > 0.0 else "embedded_guidance_max"
                raise input_error(
                    name,
                    f"this {facts.label} model has no embedded guidance input (Flux.1-dev has one): leave "
                    "embedded_guidance_min and embedded_guidance_max at 0; its teacher is guided by true CFG with the "
                    "negative prompt (guidance_min, guidance_max)",
                )
            return {}
        if self.given:
            if low > high:
                raise input_error(
                    "embedded_guidance_min",
                    f"must be <= embedded_guidance_max, got embedded_guidance_min={low} > embedded_guidance_max={high}",
                )
            return {"embedded_guidance_min": low, "embedded_guidance_max": high}
        values = [float(entry[1].get("guidance", FLUX_DEFAULT_GUIDANCE)) for entry in positive]
        values = values or [FLUX_DEFAULT_GUIDANCE]
        return {"embedded_guidance_min": min(values), "embedded_guidance_max": max(values)}


def guidance_note(facts: ModelFacts, config: DistillConfig) -> str | None:
    """A note for the log when a guidance-distilled model (Flux.1) gets a true-CFG teacher: allowed (ComfyUI samples
    Flux with CFG above 1 the same way), but not how these models are used."""
    if facts.family not in GUIDANCE_DISTILLED or not config.guided:
        return None
    on_top = " on top of its embedded guidance" if facts.embedded_guidance else ""
    return (
        f"{facts.label} is sampled at CFG 1, yet guidance_min..guidance_max = {config.guidance_min}.."
        f"{config.guidance_max}: the teacher runs true CFG with the negative prompt (a second pass){on_top}. Set "
        "both to 0 for the teacher users sample."
    )
