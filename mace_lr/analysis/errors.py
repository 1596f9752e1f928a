"""The one exception of the diagnostics: bad input, with what is wrong and what to do."""

from __future__ import annotations


class DiagnosticsInputError(ValueError):
    """A trajectory or option the long-range diagnostics cannot use.

    The message says what is wrong and how to fix it; ``mace_lr_diagnose`` prints it and
    exits with status 2.
    """


__all__ = ["DiagnosticsInputError"]
