"""Long-range heads: one module each, one contract (see :mod:`mace_lr.heads.contract`).

``parse_long_range("charges+latent")`` turns the ``--long_range`` flag into head names;
:func:`build_heads` turns names into modules for a given backbone.
"""

from .config import HEAD_NAMES, LongRangeConfig, parse_long_range
from .registry import build_heads

__all__ = ["HEAD_NAMES", "LongRangeConfig", "build_heads", "parse_long_range"]
