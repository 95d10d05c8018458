"""Node inputs generated from a settings dataclass's field metadata (``tcd_core.settings``): the default, the
bounds, the choices and the tooltip are stated once, beside the field, and read here."""

from __future__ import annotations

from comfy_api.latest import io

from ..tcd_core.settings import Setting, settings_of


def setting_input(name: str, spec: Setting, default: object) -> io.Input:
    """The ComfyUI widget of one setting: a combo, a toggle, or an int / float field with its bounds."""
    if spec.choices is not None:
        return io.Combo.Input(name, options=list(spec.choices), default=default, tooltip=spec.tooltip)
    if spec.kind is bool:
        return io.Boolean.Input(name, default=default, tooltip=spec.tooltip)
    bounds = {"min": spec.low, "max": spec.high}
    if spec.kind is int:
        extra = {"control_after_generate": False} if name == "seed" else {}
        return io.Int.Input(name, default=default, tooltip=spec.tooltip, **bounds, **extra)
    return io.Float.Input(name, default=default, step=spec.step, tooltip=spec.tooltip, **bounds)


def setting_inputs(settings_class: type) -> list[io.Input]:
    """The widgets of every node-facing field of ``settings_class``, in declaration order."""
    return [setting_input(name, spec, default) for name, (spec, default) in settings_of(settings_class).items()
            if spec.node]  # fmt: skip
