"""TCD's timestep schedule, exactly as diffusers' ``TCDScheduler.set_timesteps`` builds it.

The paper distils the model on a grid of ``original_inference_steps`` timesteps
(``t = k*i - 1`` with skipping step ``k = T // original_inference_steps``) and samples
on an evenly index-spaced subset of that grid. ``strength`` below 1 is the reference's
img2img rule: the grid is cut at the top, so sampling starts at a lower timestep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import TCDInputError

__all__ = ["tcd_timesteps", "tcd_custom_timesteps"]


def _require_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TCDInputError(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise TCDInputError(f"{name} must be in {allowed}, got {value}")
    return value


def _require_strength(strength: float) -> float:
    if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0.0 < strength <= 1.0):
        raise TCDInputError(f"strength must be in (0, 1] (1 = full text-to-image), got {strength!r}")
    return float(strength)


def tcd_timesteps(
    steps: int,
    original_inference_steps: int = 50,
    strength: float = 1.0,
    num_train_timesteps: int = 1000,
) -> list[int]:
    """Descending TCD timesteps, as diffusers' ``TCDScheduler(original_inference_steps=N)``
    gives them from ``set_timesteps(steps, strength=strength)``.

    Raises ``TCDInputError`` (a ValueError) where the reference refuses: ``steps`` < 1 or above
    ``original_inference_steps``, or a grid cut by ``strength`` too small for ``steps``.
    ``strength`` outside (0, 1] is refused too (the reference would index past the end).
    """
    num_train_timesteps = _require_int("num_train_timesteps", num_train_timesteps, 1)
    original = _require_int("original_inference_steps", original_inference_steps, 1, num_train_timesteps)
    steps = _require_int("steps", steps, 1, original)
    strength = _require_strength(strength)

    # 1. The distillation grid: k*i - 1 for i = 1 .. int(N * strength) (the paper's skipping step k).
    k = num_train_timesteps // original
    grid = [i * k - 1 for i in range(1, int(original * strength) + 1)]
    if len(grid) // steps < 1:
        raise TCDInputError(
            f"steps={steps} needs at least {steps} grid points, but original_inference_steps x strength "
            f"= {original} x {strength} leaves {len(grid)}: lower steps or raise strength"
        )
    # 2. Evenly index-spaced picks from the descending grid (numpy.linspace(0, len, steps, endpoint=False)).
    grid.reverse()
    spacing = len(grid) / steps
    return [grid[math.floor(i * spacing)] for i in range(steps)]


def tcd_custom_timesteps(
    timesteps: Sequence[int],
    strength: float = 1.0,
    num_train_timesteps: int = 1000,
) -> list[int]:
    """Validate a user's descending timestep list the way the reference does, then apply ``strength``.

    As in ``TCDScheduler.set_timesteps(timesteps=...)``: the list must be strictly descending and
    start below ``num_train_timesteps``; ``strength`` keeps its last ``int(len * strength)`` entries.
    """
    num_train_timesteps = _require_int("num_train_timesteps", num_train_timesteps, 1)
    strength = _require_strength(strength)
    values = list(timesteps)
    if not values:
        raise TCDInputError("timesteps must hold at least one timestep")
    for t in values:
        _require_int("each timestep", t, 0, num_train_timesteps - 1)
    for earlier, later in zip(values, values[1:], strict=False):
        if later >= earlier:
            raise TCDInputError(f"timesteps must be strictly descending, but {later} follows {earlier}")
    keep = min(int(len(values) * strength), len(values))
    if keep < 1:
        raise TCDInputError(
            f"strength={strength} keeps none of the {len(values)} timesteps: "
            f"raise strength to at least {1 / len(values):.3g}"
        )
    return values[len(values) - keep :]
