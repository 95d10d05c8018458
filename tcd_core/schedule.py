"""TCD's timestep schedule, exactly as diffusers' ``TCDScheduler.set_timesteps`` builds it.

The paper distils the model on a grid of ``original_inference_steps`` timesteps
(``t = k*i - 1`` with skipping step ``k = T // original_inference_steps``) and samples
on an evenly index-spaced subset of that grid. ``strength`` below 1 is the reference's
img2img rule: the grid is cut at the top, so sampling starts at a lower timestep.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import TCDInputError

__all__ = [
    "DEFAULT_ORIGINAL_INFERENCE_STEPS",
    "NUM_TRAIN_TIMESTEPS",
    "parse_timesteps",
    "timesteps_form",
    "tcd_timesteps",
    "tcd_custom_timesteps",
]

DEFAULT_ORIGINAL_INFERENCE_STEPS = 50
"""The distillation grid of the released TCD LoRAs (diffusers' ``original_inference_steps`` default)."""
NUM_TRAIN_TIMESTEPS = 1000
"""The models' training timesteps 0 .. 999: the finest grid there is."""


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
    original_inference_steps: int = DEFAULT_ORIGINAL_INFERENCE_STEPS,
    strength: float = 1.0,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
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
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
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


def timesteps_form(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS, first: int = 0) -> str:
    """The allowed form of a timestep list (timesteps ``first .. num_train_timesteps - 1``), for error messages."""
    return (
        f"whole training timesteps in {first}..{num_train_timesteps - 1}, strictly descending, separated by commas "
        "or spaces (e.g. '999, 749, 499, 249' or '800')"
    )


_SEPARATOR = re.compile(r"\s*,\s*|\s+")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")


def parse_timesteps(text: str, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """A user's timestep list (``"999, 749, 499, 249"``, ``"800"``) as integers, checked as the reference checks it.

    Entries are separated by commas and/or spaces; each must be a whole number in
    ``0 .. num_train_timesteps - 1`` and the list strictly descending (diffusers'
    ``TCDScheduler.set_timesteps(timesteps=...)`` rules). Empty entries (``"999,,499"``) are refused.
    ``TCDInputError`` names the offending entry by position and value. An empty text is no list:
    callers take it as "no custom timesteps" before calling this.
    """
    num_train_timesteps = _require_int("num_train_timesteps", num_train_timesteps, 1)
    last = num_train_timesteps - 1
    form = timesteps_form(num_train_timesteps)
    entries = _SEPARATOR.split(text.strip())
    if entries == [""]:
        raise TCDInputError(f"timesteps is empty; give {form}")
    values: list[int] = []
    for position, entry in enumerate(entries, start=1):
        if entry == "":
            raise TCDInputError(
                f"timesteps entry {position} is empty (two separators in a row, or one at an end); give {form}"
            )
        if not _WHOLE_NUMBER.fullmatch(entry):
            raise TCDInputError(f"timesteps entry {position} ({entry!r}) is not a whole number; give {form}")
        value = int(entry)
        if not 0 <= value <= last:
            raise TCDInputError(
                f"timesteps entry {position} ({value}) is outside the training timesteps 0..{last}; give {form}"
            )
        if values and value >= values[-1]:
            raise TCDInputError(
                f"timesteps entry {position} ({value}) is not below the entry before it ({values[-1]}); give {form}"
            )
        values.append(value)
    return values
