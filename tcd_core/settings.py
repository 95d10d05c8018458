"""Settings stated once: each field's default, bounds and tooltip live in its dataclass field's metadata.

A settings dataclass (``DistillConfig``, ``TrainSettings``) declares every field with ``setting(...)``;
``check_fields`` (called from its ``__post_init__``) refuses a value outside the bounds with a
``TCDInputError`` naming the field. The node's inputs (nodes/distill_node.py) and the trainer's options
(tcd_train/options.py) are generated from the same metadata, so the three accept and refuse the same values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import TCDInputError

__all__ = ["Setting", "check_fields", "setting", "setting_of", "settings_of"]


@dataclass(frozen=True)
class Setting:
    """What a field accepts and how it is shown: the metadata of one ``setting`` field.

    ``low`` / ``high``: inclusive bounds of a number; ``choices``: the allowed strings; ``step``: the
    UI's increment for a float; ``flag``: the trainer's option name where it is not ``--<field>``
    (diffusers' script names, e.g. ``--w_min``); ``node`` / ``cli``: False for fields the node / the
    trainer does not offer; ``optional``: None is accepted too (the value was not given); ``cli_tooltip``: the
    trainer's help where the field means more there than in the node (e.g. a batch per process).
    """

    tooltip: str
    kind: type = float  # int | float | str | bool
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    step: float | None = None
    flag: str | None = None
    node: bool = True
    cli: bool = True
    optional: bool = False
    cli_tooltip: str | None = None

    def option(self, name: str) -> str:
        """The trainer's option name of the field ``name``."""
        return self.flag or f"--{name}"

    @property
    def cli_help(self) -> str:
        """The trainer's help text: ``cli_tooltip``, else the node's tooltip."""
        return self.cli_tooltip or self.tooltip

    def refusal(self, value: object) -> str | None:
        """Why ``value`` is refused (the message without the field's name), or None when it is accepted."""
        if value is None and self.optional:
            return None
        if self.choices is not None:
            ok = isinstance(value, str) and value in self.choices
            return None if ok else f"must be one of {', '.join(repr(c) for c in self.choices)}, got {value!r}"
        if self.kind is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and self._within(value)
            return None if ok else f"must be a whole number in {self._range('..')}, got {value!r}"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok and self._within(value) else f"must be a number in [{self._range(', ')}], got {value!r}"

    def check(self, name: str, value: object) -> None:
        """Raise ``TCDInputError`` naming ``name`` (its ``field``) unless ``value`` is accepted."""
        reason = self.refusal(value)
        if reason is not None:
            raise TCDInputError.of(name, reason)

    def _within(self, value: float) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def _range(self, separator: str) -> str:
        low = "-inf" if self.low is None else self._show(self.low)
        high = "inf" if self.high is None else self._show(self.high)
        return f"{low}{separator}{high}"

    def _show(self, bound: float) -> str:
        return str(int(bound)) if self.kind is int else repr(float(bound))


def setting(default: Any, tooltip: str, **bounds: Any) -> Any:
    """A dataclass field with its ``Setting`` metadata (the keyword arguments of ``Setting``)."""
    kind = bounds.pop("kind", type(default))
    return dataclasses.field(default=default, metadata={"setting": Setting(tooltip, kind=kind, **bounds)})


def settings_of(cls_or_obj: Any) -> dict[str, tuple[Setting, Any]]:
    """{field name: (Setting, default)} of a settings dataclass, in declaration order."""
    return {
        f.name: (f.metadata["setting"], f.default) for f in dataclasses.fields(cls_or_obj) if "setting" in f.metadata
    }


def setting_of(cls_or_obj: Any, name: str) -> Setting:
    return settings_of(cls_or_obj)[name][0]


def check_fields(obj: Any) -> None:
    """Refuse the first field of ``obj`` outside its ``Setting``, naming it (``TCDInputError.field``)."""
    for name, (spec, _) in settings_of(obj).items():
        spec.check(name, getattr(obj, name))
