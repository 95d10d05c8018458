"""The one exception tcd_core raises for bad input."""

from __future__ import annotations


class TCDInputError(ValueError):
    """An input is outside what TCD accepts; the message names it and the allowed values.

    ``field``: the setting or argument refused (e.g. ``"guidance_min"``), when the error is about one;
    ``detail``: the message without the field's name, so that a node or a command line can name the input
    its own way (``TCD Distill LoRA guidance_min: ...``, ``--w_min: ...``) without parsing text.
    """

    def __init__(self, message: str, *, field: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.detail = detail if detail is not None else message

    @classmethod
    def of(cls, field: str, detail: str) -> TCDInputError:
        """An error about one field: the message is ``"<field> <detail>"``."""
        return cls(f"{field} {detail}", field=field, detail=detail)
