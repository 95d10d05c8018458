"""The one exception tcd_core raises for bad input."""


class TCDInputError(ValueError):
    """An input is outside what TCD sampling accepts; the message names it and the allowed values."""
