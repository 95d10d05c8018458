"""Per-step gamma for Strategic Stochastic Sampling.

gamma is the paper's stochasticity parameter (diffusers calls it ``eta``): each step denoises
to ``s = (1 - gamma) * t_next`` and diffuses back to ``t_next``. 0 is deterministic (DDIM-like),
1 is LCM's multistep consistency sampling. The paper notes the intensity may change during
sampling; a schedule gives one value per step, resolved against the sigmas actually sampled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .errors import TCDInputError

__all__ = ["DEFAULT_GAMMA", "GammaSchedule", "GammaScheduleKind", "parse_gamma_list"]

DEFAULT_GAMMA = 0.3
"""The reference's gamma (diffusers' ``eta`` default in the TCD pipelines): the pack's default everywhere."""


def _check_gamma(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TCDInputError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise TCDInputError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class GammaScheduleKind(str, Enum):
    """How gamma varies over the steps; the values are the TCD Sampler's ``gamma_schedule`` options."""

    CONSTANT = "constant"  # gamma on every step
    LINEAR = "linear"  # a ramp from gamma (first step) to gamma_end (last step)
    LIST = "list"  # one value per step, written out

    @classmethod
    def options(cls) -> list[str]:
        return [kind.value for kind in cls]

    @classmethod
    def parse(cls, name: GammaScheduleKind | str) -> GammaScheduleKind:
        """The kind named ``name``; TCDInputError listing the options for any other name."""
        try:
            return cls(name)
        except ValueError:
            raise TCDInputError(f"gamma_schedule must be one of {cls.options()}, got {name!r}") from None


@dataclass(frozen=True)
class GammaSchedule:
    """gamma for each step: a constant, a linear ramp ``start -> end``, or an explicit list."""

    start: float = DEFAULT_GAMMA
    end: float | None = None
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.values is not None:
            if not self.values:
                raise TCDInputError("the gamma list must hold one value per step, got an empty list")
            for i, value in enumerate(self.values):
                _check_gamma(f"gamma list entry {i + 1}", value)
        else:
            _check_gamma("gamma", self.start)
            if self.end is not None:
                _check_gamma("gamma end", self.end)

    @classmethod
    def constant(cls, gamma: float) -> GammaSchedule:
        return cls(start=gamma)

    @classmethod
    def linear(cls, start: float, end: float) -> GammaSchedule:
        return cls(start=start, end=end)

    @classmethod
    def explicit(cls, values: Sequence[float]) -> GammaSchedule:
        return cls(values=tuple(values))

    @property
    def is_constant(self) -> bool:
        return self.values is None and (self.end is None or self.end == self.start)

    @classmethod
    def from_inputs(
        cls, kind: GammaScheduleKind | str, gamma: float, gamma_end: float, gamma_list: str
    ) -> GammaSchedule:
        """The schedule a node's four gamma inputs describe; ``gamma_list`` is only parsed for ``list``."""
        kind = GammaScheduleKind.parse(kind)
        if kind is GammaScheduleKind.CONSTANT:
            return cls.constant(gamma)
        if kind is GammaScheduleKind.LINEAR:
            return cls.linear(gamma, gamma_end)
        return cls.explicit(parse_gamma_list(gamma_list))

    def per_step(self, steps: int) -> list[float]:
        """One gamma per step for a run of ``steps`` steps."""
        if self.values is not None:
            if len(self.values) != steps:
                raise TCDInputError(
                    f"the gamma list has {len(self.values)} values but the sigmas give {steps} steps: "
                    f"give exactly {steps} values"
                )
            return list(self.values)
        if self.end is None or steps == 1:
            return [self.start] * steps
        ramp = (self.end - self.start) / (steps - 1)
        return [self.start + ramp * i for i in range(steps)]


_SEPARATOR = re.compile(r"[,\s;]+")


def parse_gamma_list(text: str) -> tuple[float, ...]:
    """Parse ``"0.5, 0.4, 0.3, 0.2"`` (commas, semicolons or spaces) into gamma values in [0, 1]."""
    items = [item for item in _SEPARATOR.split(text.strip()) if item]
    if not items:
        raise TCDInputError("the gamma list is empty: write one value in [0, 1] per step, e.g. '0.5, 0.4, 0.3, 0.2'")
    values = []
    for i, item in enumerate(items):
        try:
            value = float(item)
        except ValueError:
            raise TCDInputError(f"gamma list entry {i + 1} is {item!r}, not a number in [0, 1]") from None
        values.append(_check_gamma(f"gamma list entry {i + 1}", value))
    return tuple(values)
