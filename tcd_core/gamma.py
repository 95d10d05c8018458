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

from .errors import TCDInputError

__all__ = ["GammaSchedule", "parse_gamma_list"]


def _check_gamma(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TCDInputError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise TCDInputError(f"{name} must be in [0, 1], got {value}")
    return float(value)


@dataclass(frozen=True)
class GammaSchedule:
    """gamma for each step: a constant, a linear ramp ``start -> end``, or an explicit list."""

    start: float = 0.3
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
