"""TorchScript compilation at the end of training must succeed, or training fails.

MACE wraps ``jit.compile`` + ``torch.jit.save`` of the final model in
``try: ... except Exception: pass``, so a model that cannot be compiled leaves no
``<name>_compiled.model`` and no error. :class:`StrictJit` stands in for MACE's ``jit``
module: its ``compile`` raises :class:`ModelCompileError`, which derives from
``BaseException`` precisely so that this ``except Exception`` cannot swallow it.
:func:`check_compiled_models` catches the remaining case (saving failed after compiling).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import torch
from e3nn.util import jit as e3nn_jit


class ModelCompileError(BaseException):
    """The trained model could not be compiled with TorchScript (the cause is chained)."""


class StrictJit:
    """``e3nn.util.jit`` with a ``compile`` whose failure stops the program."""

    def __getattr__(self, name: str) -> Any:
        return getattr(e3nn_jit, name)

    @staticmethod
    def compile(module: torch.nn.Module, *args, **kwargs) -> torch.jit.ScriptModule:
        try:
            return e3nn_jit.compile(module, *args, **kwargs)
        except Exception as exc:  # re-raised as BaseException: MACE catches Exception
            raise ModelCompileError(
                f"TorchScript compilation of the trained {type(module).__name__} failed: {exc}"
            ) from exc


def check_compiled_models(model_dir: str, name: str) -> List[Path]:
    """Every ``<name>[_stagetwo].model`` in ``model_dir`` has its ``_compiled.model``; RuntimeError if not."""
    found: List[Path] = []
    for stem in (name, f"{name}_stagetwo"):
        eager = Path(model_dir) / f"{stem}.model"
        compiled = Path(model_dir) / f"{stem}_compiled.model"
        if eager.exists():
            if not compiled.exists() or compiled.stat().st_mtime < eager.stat().st_mtime:
                raise RuntimeError(f"{eager} was saved but {compiled} was not: TorchScript saving failed")
            found.append(compiled)
    return found
