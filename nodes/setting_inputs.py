"""Node inputs generated from a settings dataclass's field metadata (``tcd_core.settings``): the default, the
bounds, the choices and the tooltip are stated once, beside the field, and read here."""

from __future__ import annotations

from comfy_api.latest import io

from ..tcd_core.settings import Setting, settings_of


def setting_input(name: str, spec: Setting, default: object, optional: bool = False) -> io.Input:
    """The ComfyUI widget of one setting: a combo, a toggle, or an int / float field with its bounds.
    ``optional``: a prompt saved before the input existed runs with its default."""
    common = {"default": default, "tooltip": spec.tooltip, "optional": optional}
    if spec.choices is not None:
        return io.Combo.Input(name, options=list(spec.choices), **common)
    if spec.kind is bool:
        return io.Boolean.Input(name, **common)
    bounds = {"min": spec.low, "max": spec.high}
    if spec.kind is int:
        extra = {"control_after_generate": False} if name == "seed" else {}
        return io.Int.Input(name, **common, **bounds, **extra)
    return io.Float.Input(name, step=spec.step, **common, **bounds)


def setting_inputs(settings_class: type, optional: bool = False) -> list[io.Input]:
    """The widgets of every node-facing field of ``settings_class``, in declaration order."""
    return [setting_input(name, spec, default, optional) for name, (spec, default) in
            settings_of(settings_class).items() if spec.node]  # fmt: skip
